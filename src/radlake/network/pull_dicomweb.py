"""`radlake pull --dicomweb URL`: QIDO-RS what a query matches, then WADO-RS only
what the catalog lacks, into one ingest job (issue 13, point 2; dicomweb-client).

Searches walk studies, series, then instances (PS3.18 10.6), so every instance is
known by its SOP Instance UID before anything is retrieved; `resume.plan_pull` drops
those already catalogued. Each missing instance is retrieved on its own (PS3.18
10.4, Retrieve Instance) by a few threads, asking for `transfer-syntax=*`: the
server's stored bytes, untranscoded, are the original the lake keeps and hashes.
One instance that fails to arrive or is quarantined never stops the pull.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
from dicomweb_client.api import DICOMwebClient

from radlake.domain import CataloguedInput, RejectedInput
from radlake.lake import Lake
from radlake.network.pull import Phase
from radlake.network.pull_summary import PullError, PullSummary
from radlake.network.query import PacsQuery, qido_filters
from radlake.network.resume import Instance, plan_pull
from radlake.pipelines.ingest import recorded_job
from radlake.pipelines.worker import WorkerContext, process_bytes

LOG = logging.getLogger(__name__)
UID_TAGS = {"study": "0020000D", "series": "0020000E", "instance": "00080018", "class": "00080016"}
DEFAULT_WORKERS = 4
HTTP_TIMEOUT_S = 60.0


def _value(result: dict[str, Any], tag: str) -> str:
    values = result.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _where(url: str) -> str:
    # The host only: a URL may carry credentials, and a path says nothing useful.
    return urlsplit(url).hostname or "server"


class _QidoClient(DICOMwebClient):
    """dicomweb-client with QIDO-RS wildcards sent as they are: it percent-encodes `*`
    and `?` in query strings, which RFC 3986 allows unencoded and Orthanc 1.10 then
    takes literally (PatientID=ZQ%2A matched nothing where ZQ* matched)."""

    def _http_get(
        self,
        url: str,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
    ) -> requests.Response:
        if params:
            url = f"{url}?{urlencode(params, doseq=True, safe='*?,')}"
        return super()._http_get(url, params=None, headers=headers, stream=stream)


class DicomwebSource:
    """A DICOMweb server: searches, and instance retrieval as the stored bytes."""

    def __init__(
        self, url: str, *, timeout: float = HTTP_TIMEOUT_S, token: str | None = None
    ) -> None:
        """token: sent as `Authorization: Bearer` (a secured server: radlake's own)."""
        self.url, self.timeout = url.rstrip("/"), timeout
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._local = threading.local()

    def _client(self) -> DICOMwebClient:
        # One client (one requests.Session) per thread: sessions are not thread-safe.
        client: DICOMwebClient | None = getattr(self._local, "client", None)
        if client is None:
            client = _QidoClient(self.url, timeout=self.timeout, headers=self.headers)
            self._local.client = client
        return client

    def _call(self, what: str, method: str, *args: Any, then: bool = False, **kwargs: Any) -> Any:
        """The client's `method`(*args, **kwargs), its HTTP errors as PullError; `then`
        decodes the multipart answer into its parts (bytes)."""
        try:
            client = self._client()
            answer = getattr(client, method)(*args, **kwargs)
            if then:  # a generator: read it here, where errors are caught
                return list(client._decode_multipart_message(answer, stream=False))
            return answer
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else "?"
            hint = (
                " (a secured server: set RADLAKE_PULL_DICOMWEB_TOKEN)" if code in (401, 403) else ""
            )
            raise PullError(
                f"the DICOMweb server at {_where(self.url)} answered {code} to {what}{hint}"
            ) from None
        except requests.RequestException as exc:
            reason = type(exc).__name__
            if isinstance(exc, requests.ConnectionError):
                reason = "connection refused or host unreachable"
            raise PullError(
                f"cannot reach the DICOMweb server at {_where(self.url)}: {reason}"
            ) from None

    def _search(
        self, what: str, method: str, key: str, *args: str, filters: dict[str, str]
    ) -> list[dict[str, Any]]:
        """Every match of one search, page by page (PS3.18 8.3.4.4: a server may cap
        an answer), keyed by the UID at `key`. Not dicomweb-client's get_remaining:
        Orthanc 1.10 ignores `offset` when ModalitiesInStudy is given, and that loop
        then never ends; here a page that brings nothing new ends the search."""
        matches: dict[str, dict[str, Any]] = {}
        while True:
            page: list[dict[str, Any]] = self._call(
                what, method, *args, search_filters=qido_filters(filters), offset=len(matches)
            )
            fresh = {_value(m, key): m for m in page if _value(m, key) not in matches}
            fresh.pop("", None)
            if not fresh:
                return list(matches.values())
            matches |= fresh

    def instances(
        self, query: PacsQuery, progress: Phase
    ) -> tuple[int, list[tuple[str, str, list[Instance]]]]:
        """Search studies, their series, their instances; (studies, per-series instances).

        Raises:
            PullError: the server cannot be reached or answers an error.
        """
        study_key, series_key, sop_key = UID_TAGS["study"], UID_TAGS["series"], UID_TAGS["instance"]
        studies = self._search(
            "a study search", "search_for_studies", study_key, filters=query.study
        )
        study_uids = [_value(s, study_key) for s in studies]
        found: list[tuple[str, str, list[Instance]]] = []
        for done, study in enumerate(study_uids):
            progress("querying", done, len(study_uids))
            series_list = self._search(
                "a series search", "search_for_series", series_key, study, filters=query.series
            )
            for series in (_value(s, series_key) for s in series_list):
                listed = self._search(
                    "an instance search",
                    "search_for_instances",
                    sop_key,
                    study,
                    series,
                    filters=query.image,
                )
                items = [
                    Instance(study, series, _value(i, sop_key), _value(i, UID_TAGS["class"]))
                    for i in listed
                ]
                if items:
                    found.append((study, series, items))
        progress("querying", len(study_uids), len(study_uids))
        return len(study_uids), found

    def retrieve(self, item: Instance) -> bytes:
        """The instance's stored bytes (a DICOM file).

        Raises:
            PullError: the server cannot be reached or answers an error.
        """
        url = (
            f"{self.url}/studies/{item.study_uid}/series/{item.series_uid}/instances/{item.sop_uid}"
        )
        # dicomweb-client's public retrieve_instance returns a re-parsed pydicom
        # Dataset, not the bytes the server keeps (the original the lake hashes), and
        # its multipart helper refuses application/dicom: its own two steps underneath
        # are used instead (pinned 0.61.2).
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        parts: list[bytes] = self._call(
            "an instance retrieval", "_http_get", url, headers={"Accept": accept}, then=True
        )
        for part in parts:
            return bytes(part)  # a bytearray as decoded
        raise PullError(f"the DICOMweb server at {_where(self.url)} sent an empty instance")


def pull_dicomweb(
    lake: Lake,
    url: str,
    query: PacsQuery,
    *,
    source: str = "dicomweb",
    workers: int = DEFAULT_WORKERS,
    progress: Phase | None = None,
    token: str | None = None,
) -> PullSummary:
    """Pull what `query` matches on the DICOMweb server at `url` and the catalog lacks.

    token: a bearer token for the server (RADLAKE_PULL_DICOMWEB_TOKEN).

    Raises:
        PullError: the server cannot be reached or fails a search.
        IngestFault: the catalog or the store kept failing.
    """
    started = time.perf_counter()
    report: Phase = progress or (lambda phase, done, total: None)
    server = DicomwebSource(url, token=token)
    studies, series = server.instances(query, report)
    plan = plan_pull(lake.engine, studies, series)
    wanted = [i for item in plan.work for i in item.instances]
    if not wanted:
        return PullSummary.of(plan, seconds=time.perf_counter() - started)
    context = WorkerContext(
        lake.store,
        lake.pseudonymizer,
        max_decoded_bytes=lake.limits.max_decoded_bytes,
        max_input_bytes=lake.limits.max_input_bytes,
    )
    where = _where(url)

    def fetch(item: Instance) -> CataloguedInput | RejectedInput | None:
        try:
            data = server.retrieve(item)
        except PullError as exc:
            LOG.error("not retrieved: %s", exc)  # no UID: the message is PHI-free
            return None
        return process_bytes(context, data, f"dicomweb/{where}/{item.sop_uid}")

    failed = quarantined = 0
    report("retrieving", 0, len(wanted))
    with (
        recorded_job(
            lake.engine,
            lake.store,
            source=source,
            source_kind="dicomweb",
            parameters={"source": source, "server": where, "instances": len(wanted)},
            inputs=lambda: len(wanted) - failed,
            retry_seconds=lake.limits.retry_seconds,
        ) as session,
        ThreadPoolExecutor(workers, thread_name_prefix="wado") as pool,
    ):
        for done, outcome in enumerate(pool.map(fetch, wanted), start=1):
            if outcome is None:
                failed += 1
            else:
                if isinstance(outcome, RejectedInput):
                    quarantined += 1
                    LOG.warning("quarantined an instance from %s: %s", where, outcome.reason)
                session.add(outcome)
            report("retrieving", done, len(wanted))
    ingested = session.summary
    return PullSummary.of(
        plan,
        job_id=ingested.job_id,
        catalogued=ingested.catalogued,
        already_present=ingested.already_present,
        quarantined=quarantined,
        not_retrieved=failed,
        bytes_received=ingested.bytes_read,
        seconds=time.perf_counter() - started,
    )
