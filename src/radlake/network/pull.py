"""`radlake pull --from AE@host:port`: C-FIND what a query matches, then C-MOVE (into
a receiver this pull runs) or C-GET only what the catalog lacks (issue 13, point 2).

The query walks the Study Root hierarchy (STUDY, then SERIES, then IMAGE, PS3.4
C.4.1.2.1), so every instance is known by its SOP Instance UID before anything moves;
`resume.plan_pull` drops those already catalogued. Each series is fetched on its own,
whole at SERIES level when none of it is catalogued, else as a list of UIDs at IMAGE
level (PS3.4 C.4.2.2.1 allows a list for the unique key).

A PACS may stop a move at the first sub-operation the receiver refuses (Orthanc 1.10
does: a quarantined instance ends it with 0xC000). So a series is asked for again,
less what was answered, for as long as each round settles at least one instance; what
never arrives is counted `not_retrieved`. The received instances go through one
ingest session (the receiver's), as `radlake receive` does.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Literal, cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from radlake.lake import Lake
from radlake.network.dimse import FIND, PacsClient, Peer
from radlake.network.pull_summary import PullSummary
from radlake.network.query import IMAGE, SERIES, STUDY, PacsQuery, identifier
from radlake.network.receiver import CANNOT_UNDERSTAND, SUCCESS, Receiver
from radlake.network.resume import Instance, PullPlan, SeriesWork, plan_pull

Phase = Callable[[str, int, int | None], None]
"""Called with (phase, done, total) as the pull goes: querying, then retrieving."""
UID_LIST_CHUNK = 500  # UIDs per C-MOVE/C-GET: a UI element stays far below 64 KiB
SETTLED = (SUCCESS, CANNOT_UNDERSTAND)


class PullReceiver(Receiver):
    """The receiver, also keeping each instance's answer by SOP Instance UID (the pull
    asks again for what did not arrive)."""

    def __init__(
        self,
        lake: Lake,
        *,
        on_answer: Callable[[int], None],
        ae_title: str,
        host: str,
        port: int,
        allow: Sequence[str],
        source: str,
    ) -> None:
        super().__init__(lake, ae_title=ae_title, host=host, port=port, allow=allow, source=source)
        self.answers: dict[str, int] = {}
        self._answers_lock = threading.Lock()
        self._on_answer = on_answer

    def _on_store(self, event: Event) -> Dataset:
        status = super()._on_store(event)
        uid = str(cast(C_STORE, event.request).AffectedSOPInstanceUID)
        with self._answers_lock:
            self.answers[uid] = int(status.Status)
            answered = len(self.answers)
        self._on_answer(answered)
        return status

    def settled(self, uids: set[str]) -> set[str]:
        """Those of `uids` answered for good: stored, or refused as bad input."""
        with self._answers_lock:
            return {uid for uid in uids if self.answers.get(uid) in SETTLED}


def _uids(matches: Sequence[Dataset], keyword: str) -> list[str]:
    return list(dict.fromkeys(str(m.get(keyword, "")) for m in matches if m.get(keyword)))


def find_instances(
    client: PacsClient, query: PacsQuery, progress: Phase
) -> tuple[int, list[tuple[str, str, list[Instance]]]]:
    """Walk STUDY -> SERIES -> IMAGE; (studies matched, per-series instances).

    Raises:
        PullError: the PACS cannot be reached, refuses us or fails a query.
    """
    found: list[tuple[str, str, list[Instance]]] = []
    with client.associate([(FIND, None)]) as assoc:
        studies = _uids(client.find(assoc, identifier(STUDY, query.study, {})), "StudyInstanceUID")
        for done, study in enumerate(studies):
            progress("querying", done, len(studies))
            parent = {"StudyInstanceUID": study}
            series_query = identifier(SERIES, query.series, parent)
            for series in _uids(client.find(assoc, series_query), "SeriesInstanceUID"):
                image_query = identifier(IMAGE, query.image, parent | {"SeriesInstanceUID": series})
                instances = [
                    Instance(study, series, str(m.SOPInstanceUID), str(m.get("SOPClassUID", "")))
                    for m in client.find(assoc, image_query)
                    if m.get("SOPInstanceUID")
                ]
                if instances:
                    found.append((study, series, instances))
        progress("querying", len(studies), len(studies))
    return len(studies), found


def _retrieve_query(item: SeriesWork, uids: Sequence[str] | None) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = SERIES if uids is None else IMAGE
    ds.StudyInstanceUID, ds.SeriesInstanceUID = item.study_uid, item.series_uid
    if uids is not None:
        ds.SOPInstanceUID = list(uids)
    return ds


def fetch_series(item: SeriesWork, fetch: Callable[[Dataset], int], receiver: PullReceiver) -> None:
    """Ask for the series' missing instances until all are settled or a round settles
    none (what is left then is not retrieved)."""
    remaining = {i.sop_uid for i in item.instances}
    whole = item.whole
    while remaining:
        if whole:
            fetch(_retrieve_query(item, None))
        else:
            ordered = sorted(remaining)
            for start in range(0, len(ordered), UID_LIST_CHUNK):
                fetch(_retrieve_query(item, ordered[start : start + UID_LIST_CHUNK]))
        settled = receiver.settled(remaining)
        if not settled:
            return
        remaining -= settled
        whole = False


def pull_dimse(
    lake: Lake,
    peer: Peer,
    query: PacsQuery,
    *,
    ae_title: str,
    host: str = "127.0.0.1",
    port: int = 11112,
    via: Literal["move", "get"] = "move",
    source: str = "pacs",
    progress: Phase | None = None,
) -> PullSummary:
    """Pull what `query` matches on `peer` and the catalog lacks.

    Over C-MOVE, a receiver listens as `ae_title` on host:port while the pull runs
    (the PACS must know it under that title) and accepts only the PACS's AE title;
    over C-GET the instances come back on our own association.

    Raises:
        PullError: the PACS cannot be reached, refuses us, fails a query or does not
            know the move destination.
        ReceiverError: the receiver cannot listen on host:port.
        IngestFault, CatalogError: the catalog or the store kept failing.
    """
    started = time.perf_counter()
    report: Phase = progress or (lambda phase, done, total: None)
    client = PacsClient(peer, calling_ae=ae_title)
    studies, series = find_instances(client, query, report)
    plan = plan_pull(lake.engine, studies, series)
    if not plan.work:
        return _summary(plan, None, started)
    report("retrieving", 0, plan.missing)
    receiver = PullReceiver(
        lake,
        on_answer=lambda answered: report("retrieving", answered, plan.missing),
        ae_title=ae_title,
        host=host if via == "move" else "127.0.0.1",
        port=port if via == "move" else 0,
        allow=[peer.ae_title] if via == "move" else [],
        source=source,
    )
    receiver.start()
    try:
        if via == "move":
            move = functools.partial(client.move, destination=ae_title)
            for item in plan.work:
                fetch_series(item, move, receiver)
        else:
            # C-GET needs no listener (the receiver's is on an ephemeral loopback port
            # nobody is told of): its session and handler serve our own association.
            handlers = [(evt.EVT_C_STORE, receiver._on_store)]
            for item in plan.work:
                classes = sorted({i.sop_class_uid for i in item.instances if i.sop_class_uid})
                get = functools.partial(client.get, sop_classes=classes, handlers=handlers)
                fetch_series(item, get, receiver)
    finally:
        receiver.stop()
    return _summary(plan, receiver, started)


def _summary(plan: PullPlan, receiver: PullReceiver | None, started: float) -> PullSummary:
    seconds = time.perf_counter() - started
    if receiver is None or receiver.summary is None:
        return PullSummary.of(plan, seconds=seconds)
    requested = {i.sop_uid for item in plan.work for i in item.instances}
    codes = [receiver.answers.get(uid) for uid in requested]
    done = receiver.summary
    return PullSummary.of(
        plan,
        job_id=done.job_id,
        catalogued=done.catalogued,
        already_present=done.already_present,
        quarantined=codes.count(CANNOT_UNDERSTAND),
        not_retrieved=len(codes) - codes.count(SUCCESS) - codes.count(CANNOT_UNDERSTAND),
        bytes_received=done.bytes_received,
        seconds=seconds,
    )
