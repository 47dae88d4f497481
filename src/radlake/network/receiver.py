"""A DICOM C-STORE SCP (with C-ECHO) that feeds ingest: `radlake receive` (issue 13).

Every received instance goes through the same per-input step as a file
(`process_bytes`): the bytes as sent, prefixed with their file meta, are hashed,
read, rendered and stored; no temporary file is written. One IngestSession holds the
whole run: one job row, catalog rows written in batches (every `batch_size`
instances or `batch_seconds`, and at stop).

Answers (PS3.4 B.2.3): 0x0000 once the original is in the store (catalogued now or
already present); 0xC000 "cannot understand" when ingest quarantines it (its reason
is logged and kept in the quarantine row, and the first 64 characters ride back in
Error Comment); 0xA700 "out of resources" when the store or the catalog fails, which
is logged as a fault and never blamed on the input (the sender retries; re-sending
is a no-op for bytes already catalogued).

Trade-off of batching: an instance is answered once its original is written, before
its row is committed; a crash in that window (at most one batch) leaves the original
in the store without its row. The same instance sent again is catalogued then.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import cast

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.transport import ThreadedAssociationServer

from radlake.domain import CataloguedInput, RejectedInput
from radlake.errors import CatalogError, RadlakeError, StorageError
from radlake.lake import Lake
from radlake.pipelines.deidentify import deidentify_digests
from radlake.pipelines.ingest import IngestFault, IngestSession, IngestSummary
from radlake.pipelines.worker import WorkerContext, process_bytes

LOG = logging.getLogger(__name__)

SUCCESS = 0x0000
CANNOT_UNDERSTAND = 0xC000  # PS3.4 B.2.3: Failure, Cannot understand (Cxxx)
OUT_OF_RESOURCES = 0xA700  # PS3.4 B.2.3: Refused, Out of resources (A7xx)
VERIFICATION = UID("1.2.840.10008.1.1")  # PS3.4 A.4: C-ECHO (pynetdicom's name is dynamic)
ERROR_COMMENT_LENGTH = 64  # VR LO
DEFAULT_BATCH_SIZE = 256
DEFAULT_BATCH_SECONDS = 2.0
DEFAULT_GRACE_SECONDS = 5.0

TRANSFER_SYNTAXES = [
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]


class ReceiverError(RadlakeError, OSError):
    """The receiver cannot start (the port is taken, the address is not local)."""


@dataclass(frozen=True, slots=True)
class ReceiveSummary:
    """What one run of the receiver did; received == catalogued + already_present +
    refused + faults once it has stopped."""

    job_id: int
    received: int
    catalogued: int
    already_present: int
    refused: int
    faults: int
    bytes_received: int
    seconds: float

    @property
    def instances_per_second(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        """The one-line summary the CLI prints."""
        return (
            f"{self.received} instances received: {self.catalogued} catalogued, "
            f"{self.already_present} already present, {self.refused} refused, "
            f"{self.faults} faults in {self.seconds:.1f} s "
            f"({self.instances_per_second:.1f} instances/s)"
        )

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self) | {"instances_per_second": round(self.instances_per_second, 2)}


def _set_nodelay(event: Event) -> None:
    # Without TCP_NODELAY, Nagle's algorithm holds the small C-STORE-RSP PDU back
    # until the peer's delayed ACK: about 75 ms per instance (issue 13).
    wrapper = event.assoc.dul.socket
    if wrapper is not None and wrapper.socket is not None:
        wrapper.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _log_rejected(event: Event) -> None:
    # A caller not in --allow (or over the association limit) is refused by pynetdicom
    # before any handler runs: say so, or an operator sees nothing of it.
    LOG.warning("refused an association from %s", event.assoc.requestor.ae_title)


def _status(code: int, comment: str | None = None) -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        # LO in the default repertoire (PS3.5 6.2): ASCII, no backslash.
        text = comment.encode("ascii", "replace").decode().replace("\\", "/")
        status.ErrorComment = text[:ERROR_COMMENT_LENGTH]
    return status


class Receiver:
    """A C-STORE/C-ECHO SCP writing into `lake` through one ingest session.

    `start()` returns at once (the server runs in threads); `stop()` stops accepting,
    lets running associations finish for `grace_seconds` (then aborts them), writes
    what is pending, closes the job and returns the summary.
    """

    def __init__(
        self,
        lake: Lake,
        *,
        ae_title: str = "RADLAKE",
        host: str = "127.0.0.1",
        port: int = 11112,
        allow: Sequence[str] = (),
        max_associations: int = 10,
        source: str = "dicom-receiver",
        batch_size: int = DEFAULT_BATCH_SIZE,
        batch_seconds: float = DEFAULT_BATCH_SECONDS,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
    ) -> None:
        self.lake, self.ae_title, self.host, self.port = lake, ae_title, host, port
        self.allow, self.max_associations, self.source = list(allow), max_associations, source
        self.batch_size, self.batch_seconds = batch_size, batch_seconds
        self.grace_seconds = grace_seconds
        self.context = WorkerContext(
            lake.store,
            lake.pseudonymizer,
            max_decoded_bytes=lake.limits.max_decoded_bytes,
            max_input_bytes=lake.limits.max_input_bytes,
        )
        self._lock = threading.Lock()  # guards the session and the counters
        self._stopping = threading.Event()
        self._closed = False  # set once the job is closed: later instances are refused
        self._session: IngestSession | None = None
        self._server: ThreadedAssociationServer | None = None
        self._flusher: threading.Thread | None = None
        self.received = self.refused = self.faults = self.bytes_received = 0
        self._new: list[str] = []  # digests written, waiting for de-identification on ingest
        self.summary: ReceiveSummary | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the server listens on (the real port when 0 was asked)."""
        if self._server is None:
            return self.host, self.port
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Open the job and start listening; returns at once.

        Raises:
            ReceiverError: the address cannot be listened on.
            IngestFault: the catalog or the store cannot be reached.
        """
        ae = AE(ae_title=self.ae_title)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
        ae.add_supported_context(VERIFICATION)
        ae.maximum_associations = self.max_associations
        ae.require_calling_aet = self.allow
        try:
            self._session = IngestSession(
                self.lake.engine,
                self.lake.store,
                source=self.source,
                source_kind="dicom-receiver",
                parameters={
                    "source": self.source,
                    "ae_title": self.ae_title,
                    "port": self.port,
                    "allow": self.allow,
                },
                retry_seconds=self.lake.limits.retry_seconds,
            )
        except (StorageError, CatalogError) as exc:
            raise IngestFault(f"{exc}: the receiver did not start") from exc
        handlers: list[EventHandlerType] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_CONN_OPEN, _set_nodelay),
            (evt.EVT_REJECTED, _log_rejected),
        ]
        try:
            self._server = ae.start_server(
                (self.host, self.port), block=False, evt_handlers=handlers
            )
        except OSError as exc:
            self._session.finish("failed", f"cannot listen: {exc.strerror}", 0)
            raise ReceiverError(
                f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        self._flusher = threading.Thread(target=self._flush_loop, name="receiver-flush")
        self._flusher.daemon = True
        self._flusher.start()
        LOG.info("receiving as %s on %s:%d", self.ae_title, *self.address)

    def _flush_loop(self) -> None:
        while not self._stopping.wait(self.batch_seconds):
            with self._lock:
                self._flush_logged()
            self._deidentify_new()

    def _deidentify_new(self) -> None:
        """De-identification on receipt (setting deid_on_ingest), outside the lock and
        the associations' threads: a C-STORE answer never waits for it."""
        if not self.lake.deid.on_ingest:
            return
        with self._lock:
            digests, self._new = self._new, []
        if not digests:
            return
        if self._stopping.is_set():
            LOG.info("de-identifying the last %d instances received", len(digests))
        try:
            summary = deidentify_digests(self.lake, digests)
        except (StorageError, CatalogError) as exc:
            LOG.error("de-identification deferred (run `radlake deid run`): %s", exc)
            return
        for image_id, reason in summary.failed.items():
            LOG.warning("image %d: %s", image_id, reason)

    def _flush_logged(self) -> bool:
        """Write what is pending; a fault is logged and kept pending. Call with the lock."""
        assert self._session is not None
        had_pending = bool(self._session.pending)
        try:
            self._session.flush()
        except (StorageError, CatalogError) as exc:
            LOG.error("catalog write failed (kept pending, retried): %s", exc)
            return False
        if had_pending:
            self._new.extend(self._session.last_inserted)
        return True

    def _on_store(self, event: Event) -> Dataset:
        """Handle one C-STORE request: ingest it, answer with its status."""
        calling = event.assoc.requestor.ae_title
        sop_instance = str(cast(C_STORE, event.request).AffectedSOPInstanceUID)
        data = event.encoded_dataset()
        key = f"dicom/{calling}/{sop_instance}"
        try:
            outcome = self._ingest(data, key)
        except StorageError as exc:
            with self._lock:
                self.received += 1
                self.faults += 1
            LOG.error("store fault, instance from %s not kept: %s", calling, exc)
            return _status(OUT_OF_RESOURCES, "store fault: retry later")
        with self._lock:
            self.received += 1
            self.bytes_received += len(data)
            if self._session is None or self._closed:  # an association outlived stop()
                self.faults += 1
                return _status(OUT_OF_RESOURCES, "receiver stopping: retry later")
            self._session.pending.append(outcome)
            due = len(self._session.pending) >= self.batch_size or (
                time.monotonic() - self._session.last_flush > self.batch_seconds
            )
            written = self._flush_logged() if due else True
            if isinstance(outcome, RejectedInput):
                self.refused += 1  # refused either way; its row stays pending on a fault
            elif not written:
                # Answered as a fault: not counted as pending, the sender sends it again.
                self._session.pending.pop()
                self.faults += 1
        if isinstance(outcome, RejectedInput):
            # The reason is PHI-free by construction (errors module); the UID is not logged.
            LOG.warning("refused an instance from %s: %s", calling, outcome.reason)
            return _status(CANNOT_UNDERSTAND, outcome.reason)
        if not written:
            return _status(OUT_OF_RESOURCES, "catalog fault: retry later")
        assert isinstance(outcome, CataloguedInput)
        return _status(SUCCESS)

    def _ingest(self, data: bytes, key: str) -> CataloguedInput | RejectedInput:
        limit = self.context.max_input_bytes
        if len(data) > limit:
            # Already in memory (the association delivered it); not copied to quarantine.
            reason = (
                f"too large to ingest: {len(data):,} bytes > the {limit:,}-byte input "
                "limit (RADLAKE_MAX_INPUT_MB)"
            )
            return RejectedInput(key, reason, size_bytes=len(data))
        return process_bytes(self.context, data, key)

    def stop(self) -> ReceiveSummary:
        """Stop accepting, wait for (then abort) running associations, write what is
        pending and close the job; returns the summary (also kept as `self.summary`).

        Raises:
            IngestFault: the last catalog write failed (the job is marked failed; the
                originals are in the store and re-sending catalogues them).
        """
        if self.summary is not None:
            return self.summary
        server, session = self._server, self._session
        if server is None or session is None:
            raise ReceiverError("the receiver was not started")
        self._stopping.set()
        server.shutdown()  # no new associations
        deadline = time.monotonic() + self.grace_seconds
        for association in server.active_associations:
            association.join(max(0.0, deadline - time.monotonic()))
            if association.is_alive():
                association.abort()
                association.join(self.grace_seconds)
        if self._flusher is not None:
            self._flusher.join()
        with self._lock:
            self._closed, error = True, None
            had_pending = bool(session.pending)
            try:
                session.flush()
                if had_pending:
                    self._new.extend(session.last_inserted)
            except (StorageError, CatalogError) as exc:
                error = f"{type(exc).__name__}: {str(exc)[:300]}"
            ingest = session.finish("failed" if error else "succeeded", error, self.received)
            self.summary = self._summary(ingest)
        self._deidentify_new()
        LOG.info("receiver stopped: %s", self.summary.line())
        if error:
            raise IngestFault(f"{error}: originals kept; re-send to catalogue them")
        return self.summary

    def _summary(self, ingest: IngestSummary) -> ReceiveSummary:
        return ReceiveSummary(
            job_id=ingest.job_id,
            received=self.received,
            catalogued=ingest.catalogued,
            already_present=ingest.already_present,
            refused=self.refused,
            faults=self.faults,
            bytes_received=self.bytes_received,
            seconds=ingest.seconds,
        )
