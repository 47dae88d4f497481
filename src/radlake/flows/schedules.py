"""Deployments from settings, served by Prefect's `serve`.

Every flow is served as deployment `<flow>/radlake`, so the Prefect UI can start
any of them with parameters; a flow with RADLAKE_SCHEDULE_<NAME> set also carries
that cron (in RADLAKE_SCHEDULE_TIMEZONE) and the parameters the scheduled run uses
(RADLAKE_SCHEDULE_<NAME>_<PARAMETER>). Scheduled and UI-started runs execute in
processes started by the serving process, which inherit its RADLAKE_* settings.
"""

from __future__ import annotations

from typing import Any

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron
from prefect.types.entrypoint import EntrypointType

from radlake.config import Settings
from radlake.flows.flows import FLOWS

DEPLOYMENT = "radlake"
# RADLAKE_SCHEDULE_<NAME> -> the flow it schedules.
SCHEDULED_FLOWS = {
    "ingest": "ingest-folder",
    "predict": "batch-predict",
    "retrain_set": "retrain-set",
    "backup": "backup",
    "warehouse": "warehouse-build",
    "mart": "mart-push",
}


def scheduled_parameters(settings: Settings) -> dict[str, dict[str, Any]]:
    """Flow name -> the parameters of its scheduled run, for the schedules set."""
    found: dict[str, dict[str, Any]] = {}
    if settings.schedule_ingest:
        found["ingest-folder"] = {
            "folder": str(settings.schedule_ingest_folder),
            "source": settings.schedule_ingest_source,
        }
    if settings.schedule_predict:
        found["batch-predict"] = {
            "model": settings.schedule_predict_model,
            "dataset": settings.schedule_predict_dataset,
            "split": settings.schedule_predict_split,
        }
    if settings.schedule_retrain_set:
        found["retrain-set"] = {"model": settings.schedule_retrain_set_model}
    if settings.schedule_backup:
        found["backup"] = {"to": settings.schedule_backup_to, "keep": settings.schedule_backup_keep}
    if settings.schedule_warehouse:
        found["warehouse-build"] = {"format": settings.schedule_warehouse_format}
    if settings.schedule_mart:
        found["mart-push"] = {
            "dataset": settings.schedule_mart_dataset,
            "to": settings.schedule_mart_to,
            "format": settings.schedule_mart_format,
        }
    return found


def crons(settings: Settings) -> dict[str, str]:
    """Flow name -> cron string, for the schedules set."""
    return {
        flow_name: cron
        for name, flow_name in SCHEDULED_FLOWS.items()
        if (cron := getattr(settings, f"schedule_{name}"))
    }


def deployments(settings: Settings) -> list[RunnerDeployment]:
    """One deployment per flow; scheduled ones with their cron and parameters."""
    parameters, schedule_of = scheduled_parameters(settings), crons(settings)
    built = []
    for flow_name, flow in FLOWS.items():
        cron = schedule_of.get(flow_name)
        deployment = flow.to_deployment(
            name=DEPLOYMENT,
            schedules=[Cron(cron, timezone=settings.schedule_timezone)] if cron else None,
            # Defaults of every run of the deployment (the UI shows and may change them).
            parameters=parameters.get(flow_name, {}),
            description=(flow.description or "").split("\n\n")[0],
            tags=["radlake"],
            # The flow is found by module path: radlake is installed, not a checkout.
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        # to_deployment answers a coroutine only when called from async code; not here.
        assert isinstance(deployment, RunnerDeployment)
        built.append(deployment)
    return built


def serve_flows(settings: Settings) -> None:
    """Register the deployments with the Prefect server and run scheduled and
    UI-started flow runs until interrupted (Prefect's `serve`)."""
    serve(*deployments(settings), print_starting_message=True)
