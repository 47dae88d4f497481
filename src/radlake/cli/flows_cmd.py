"""`radlake flows list|run|serve`: the Prefect flows (issue 12, orchestration).

Prefect is imported inside the commands only: `radlake` starts without it, and
without the [flows] extra only these commands say what to install.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from radlake.cli.output import console, print_json
from radlake.errors import ConfigError
from radlake.lake import load_settings

if TYPE_CHECKING:
    from types import ModuleType

app = typer.Typer(
    help="Prefect flows: run one once, or serve them with their schedules.",
    no_args_is_help=True,
)


def _prefect() -> ModuleType:
    """radlake.flows.launch, or one line saying what to install."""
    try:
        from radlake.flows import launch
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("prefect"):
            raise
        raise ConfigError(
            "flows need Prefect: pip install 'radlake[flows]' (prefect==3.9.1)"
        ) from None
    return launch


@app.command("list")
def list_flows() -> None:
    """The flows, their schedules from RADLAKE_SCHEDULE_* and the parameters they use."""
    settings = load_settings()
    _prefect()
    from radlake.flows.flows import FLOWS
    from radlake.flows.schedules import crons, scheduled_parameters

    schedule_of, parameters = crons(settings), scheduled_parameters(settings)
    for name, flow in FLOWS.items():
        cron = schedule_of.get(name)
        when = f"{cron} ({settings.schedule_timezone})" if cron else "not scheduled"
        console.print(f"{name}: {when}", highlight=False, markup=False)
        if name in parameters:
            shown = ", ".join(f"{k}={v}" for k, v in parameters[name].items() if v is not None)
            console.print(f"  with {shown}", highlight=False, markup=False)
        summary = " ".join((flow.description or "").split("\n\n")[0].split())
        console.print(f"  {summary}", highlight=False, markup=False)


@app.command("run")
def run(
    name: Annotated[str, typer.Argument(help="The flow: see `radlake flows list`.")],
    parameters: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[KEY=VALUE]...",
            help="The flow's parameters, e.g. folder=/data/incoming (a list one repeated).",
        ),
    ] = None,
) -> None:
    """Run one flow once, here, recorded on the Prefect server (PREFECT_API_URL);
    prints its summary as JSON. A fault of the store or the catalog is retried
    (RADLAKE_FLOW_RETRIES), bad input fails at once."""
    load_settings()  # a bad setting is one line before Prefect starts
    launch = _prefect()
    flow = launch.get_flow(name)
    values = launch.flow_parameters(flow, parameters or [])
    launch.require_server()
    launch.quiet_console_tracebacks()
    print_json(flow(**values))


@app.command("serve")
def serve() -> None:
    """Serve every flow as a deployment on the Prefect server (PREFECT_API_URL), the
    scheduled ones with their RADLAKE_SCHEDULE_* cron, until Ctrl-C. Starts no server."""
    settings = load_settings()
    launch = _prefect()
    url = launch.require_server()
    from radlake.flows.schedules import crons, serve_flows

    scheduled = crons(settings)
    console.print(
        f"serving {len(launch.FLOWS)} flows on {url}; scheduled: "
        + (", ".join(f"{n} ({c})" for n, c in scheduled.items()) or "none (RADLAKE_SCHEDULE_*)"),
        highlight=False,
        markup=False,
    )
    serve_flows(settings)
