"""What `radlake flows run|serve` need besides the flows: the server check, KEY=VALUE
parameters made a flow's arguments, and console logs without tracebacks.

radlake starts no Prefect server of its own (an ephemeral one would keep no history
and show no UI): PREFECT_API_URL must name a running `prefect server start`.
"""

from __future__ import annotations

import inspect
import logging
import typing
from collections.abc import Sequence
from typing import Any

from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.exceptions import ParameterTypeError
from prefect.logging.configuration import ensure_logging_setup
from prefect.logging.handlers import PrefectConsoleHandler
from prefect.settings import PREFECT_API_URL

from radlake.errors import RadlakeError
from radlake.flows.flows import FLOWS

START_HINT = (
    "start one with `prefect server start --host 127.0.0.1` and "
    "export PREFECT_API_URL=http://127.0.0.1:4200/api"
)


class FlowServerError(RadlakeError, ConnectionError):
    """No Prefect server is configured or none answers."""


class FlowInputError(RadlakeError, ValueError):
    """An unknown flow, or parameters the flow does not take."""


def require_server() -> str:
    """The Prefect API URL, once its server answered a health check.

    Raises:
        FlowServerError: PREFECT_API_URL is unset or no server answers there.
    """
    url = PREFECT_API_URL.value()
    if not url:
        raise FlowServerError(f"PREFECT_API_URL is not set: {START_HINT}")
    with get_client(sync_client=True) as client:
        failure = client.api_healthcheck()
    if failure is not None:
        raise FlowServerError(
            f"no Prefect server answers at {url} ({type(failure).__name__}): {START_HINT}"
        )
    return str(url)


def get_flow(name: str) -> Flow[..., dict[str, Any]]:
    """The flow of that name.

    Raises:
        FlowInputError: no such flow (the message lists them).
    """
    try:
        return FLOWS[name]
    except KeyError:
        raise FlowInputError(f"no flow {name!r:.40}; expected one of {', '.join(FLOWS)}") from None


def _is_list(annotation: Any) -> bool:
    return any(
        part is list or typing.get_origin(part) is list
        for part in (annotation, *typing.get_args(annotation))
    )


def flow_parameters(flow: Flow[..., Any], pairs: Sequence[str]) -> dict[str, Any]:
    """KEY=VALUE texts as the flow's arguments (a list parameter takes its key
    repeated), validated and converted by the flow's own annotations.

    Raises:
        FlowInputError: not KEY=VALUE, an unknown or repeated key, a wrong value.
    """
    signature = inspect.signature(flow.fn, eval_str=True)
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise FlowInputError(f"expected a parameter as KEY=VALUE, got {pair[:60]!r}")
        if key not in signature.parameters:
            raise FlowInputError(
                f"{flow.name} takes no parameter {key!r:.40}; "
                f"it takes {', '.join(signature.parameters)}"
            )
        if _is_list(signature.parameters[key].annotation):
            values.setdefault(key, []).append(value)
        elif key in values:
            raise FlowInputError(f"{key} given twice")
        else:
            values[key] = value
    missing = [
        name
        for name, parameter in signature.parameters.items()
        if parameter.default is inspect.Parameter.empty and name not in values
    ]
    if missing:
        raise FlowInputError(f"{flow.name} needs {', '.join(f'{m}=...' for m in missing)}")
    # Prefect also logs a failed validation, as a multi-line dict: the error says it once.
    flows_logger = logging.getLogger("prefect.flows")
    was_disabled, flows_logger.disabled = flows_logger.disabled, True
    try:
        return flow.validate_parameters(values)
    except ParameterTypeError as exc:
        # Prefect's message lists one bad parameter a line; the CLI prints one line.
        reasons = str(exc).splitlines()[1:] or [str(exc)]
        raise FlowInputError(
            f"{flow.name}: bad parameters: {'; '.join(r.strip(' -') for r in reasons)}"
        ) from None
    finally:
        flows_logger.disabled = was_disabled


class _NoTraceback(logging.Formatter):
    """Formats like the wrapped formatter, leaving out tracebacks."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        plain = logging.makeLogRecord(record.__dict__)
        plain.exc_info, plain.exc_text = None, None
        return self.inner.format(plain)


def quiet_console_tracebacks() -> None:
    """Prefect's console log lines without tracebacks: the CLI's error is one line, and
    the traceback stays in the flow run's log on the server (the UI shows it)."""
    ensure_logging_setup()  # Prefect configures logging on first use; the console is root's
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not isinstance(
            handler.formatter, _NoTraceback
        ):
            handler.setFormatter(_NoTraceback(handler.formatter or logging.Formatter()))
