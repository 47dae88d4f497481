"""`radlake`: the Typer app. Errors end as one line on stderr and a non-zero exit."""

from __future__ import annotations

import os
import sys
import traceback

import typer

from radlake.cli import (
    backup_cmd,
    browse,
    dataset_cmd,
    deid_cmd,
    feedback_cmd,
    flows_cmd,
    ingest_cmd,
    labels_cmd,
    mart_cmd,
    model_cmd,
    ohif_cmd,
    predict_cmd,
    pull_cmd,
    quickstart,
    receive_cmd,
    render_cmd,
    retrain_cmd,
    select_cmd,
    serve_cmd,
    simulate_cmd,
    sources_cmd,
    verify_cmd,
    warehouse_cmd,
)
from radlake.cli.output import err_console
from radlake.errors import RadlakeError

app = typer.Typer(
    name="radlake",
    help="A medical imaging data lake: ingest, catalogue, query and render images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("init")(ingest_cmd.init)
app.command("ingest")(ingest_cmd.ingest)
app.command("query")(browse.query)
app.command("select")(select_cmd.select)
app.command("show")(browse.show)
app.command("quarantine")(browse.quarantine)
app.command("jobs")(browse.jobs)
app.command("render")(render_cmd.render)
app.command("quickstart")(quickstart.quickstart)
app.command("verify")(verify_cmd.verify)
app.add_typer(sources_cmd.app, name="source")
app.add_typer(dataset_cmd.app, name="dataset")
app.add_typer(labels_cmd.app, name="labels")
app.add_typer(mart_cmd.app, name="mart")
app.add_typer(model_cmd.app, name="model")
app.command("predict")(predict_cmd.predict)
app.command("serve")(serve_cmd.serve)
app.add_typer(serve_cmd.token_app, name="token")
app.add_typer(feedback_cmd.app, name="feedback")
app.add_typer(retrain_cmd.app, name="retrain-set")
app.command("simulate")(simulate_cmd.simulate)
app.command("backup")(backup_cmd.backup)
app.command("restore")(backup_cmd.restore)
app.add_typer(flows_cmd.app, name="flows")
app.add_typer(warehouse_cmd.app, name="warehouse")
app.command("sql")(warehouse_cmd.sql)
app.add_typer(deid_cmd.app, name="deid")
app.command("receive")(receive_cmd.receive)
app.command("pull")(pull_cmd.pull)
app.command("ohif-config")(ohif_cmd.ohif_config)

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def run() -> None:
    """Console-script entry point."""
    try:
        app()
    except RadlakeError as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        err_console.print("interrupted: re-run the same command to finish the work")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:
        # Unexpected: still one line; the traceback only on request (it may be long,
        # and a bug report needs it, but a user never should).
        if os.environ.get("RADLAKE_DEBUG"):
            traceback.print_exc()
        err_console.print(
            f"error: internal error ({type(exc).__name__}); set RADLAKE_DEBUG=1 for details",
            markup=False,
        )
        sys.exit(EXIT_ERROR)


if __name__ == "__main__":
    run()
