"""A Query/Retrieve SCU for `radlake pull --from AE@host:port` (pynetdicom).

C-FIND, C-MOVE and C-GET in the Study Root model (PS3.4 C.6.2). Statuses are read per
PS3.4 C.4: Pending (0xFF00/0xFF01) carries a match or progress; Success (0x0000) and
Warning (0xB000, some sub-operations failed) end an operation; any other code is a
failure. A PACS that cannot be reached, refuses the association or fails a query is
a `PullError` in one line; a failed move or get is not, since the caller retries
what did not arrive.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.events import EventHandlerType

from radlake.errors import RadlakeError
from radlake.network.pull_summary import PullError
from radlake.network.receiver import TRANSFER_SYNTAXES, _set_nodelay

# PS3.4 Annex B.5: Study Root Query/Retrieve Information Model - FIND, MOVE, GET
# (pynetdicom's names for them are made at run time, invisible to a type checker).
FIND = UID("1.2.840.10008.5.1.4.1.2.2.1")
MOVE = UID("1.2.840.10008.5.1.4.1.2.2.2")
GET = UID("1.2.840.10008.5.1.4.1.2.2.3")
PENDING = (0xFF00, 0xFF01)
SUCCESS, WARNING = 0x0000, 0xB000
MOVE_DESTINATION_UNKNOWN = 0xA801  # PS3.4 C.4.2.1.5
NO_STATUS = -1  # the association ended without a final response
MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context IDs are odd numbers 1-255
ACSE_TIMEOUT_S = 30.0
DIMSE_TIMEOUT_S = 300.0  # between two responses of one C-MOVE: one sub-operation
_PEER = re.compile(r"(?P<ae>[^@\\]{1,16})@(?P<host>[^:@]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})")


class PeerAddressError(RadlakeError, ValueError):
    """`--from` is not AE@host:port."""


@dataclass(frozen=True, slots=True)
class Peer:
    """A remote application entity: AE title, host and port."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_peer(text: str) -> Peer:
    """`AE@host:port` as a Peer.

    Raises:
        PeerAddressError: the text is not of that form or the port is out of range.
    """
    found = _PEER.fullmatch(text.strip())
    port = int(found["port"]) if found else 0
    if found is None or not 0 < port < 65536 or not found["ae"].strip():
        raise PeerAddressError(
            f"--from: expected AE@host:port (an AE title of 1 to 16 characters, a port "
            f"1-65535), got {text[:60]!r}"
        )
    return Peer(found["ae"].strip(), found["host"].strip("[]"), port)


def _check_reachable(peer: Peer) -> None:
    # pynetdicom reports a refused connection only in its log; this names the cause.
    try:
        with socket.create_connection((peer.host, peer.port), timeout=ACSE_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise PullError(f"cannot reach the PACS {peer}: {reason}") from None


def _code(status: Dataset) -> int:
    return int(status.Status) if "Status" in status else NO_STATUS


class PacsClient:
    """Associations with one PACS as `calling_ae`."""

    def __init__(self, peer: Peer, *, calling_ae: str) -> None:
        self.peer, self.calling_ae = peer, calling_ae

    @contextmanager
    def associate(
        self,
        contexts: Sequence[tuple[str, Sequence[str] | None]],
        *,
        roles: Sequence[str] = (),
        handlers: Sequence[EventHandlerType] = (),
    ) -> Iterator[Association]:
        """An association proposing `contexts` ((abstract syntax, transfer syntaxes or
        None for pynetdicom's defaults)); `roles` are SOP classes we take the SCP role
        for (C-GET, PS3.7 D.3.3.4), `handlers` serve the events on it.

        Raises:
            PullError: the PACS cannot be reached or refuses the association.
        """
        _check_reachable(self.peer)
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout, ae.dimse_timeout = ACSE_TIMEOUT_S, DIMSE_TIMEOUT_S
        for abstract, syntaxes in contexts[:MAX_CONTEXTS]:
            if syntaxes is None:
                ae.add_requested_context(abstract)
            else:
                ae.add_requested_context(abstract, list(syntaxes))
        assoc = ae.associate(
            self.peer.host,
            self.peer.port,
            ae_title=self.peer.ae_title,
            ext_neg=[build_role(uid, scp_role=True) for uid in roles] or None,
            # TCP_NODELAY on our side too: C-FIND requests and C-GET's C-STORE-RSPs are
            # small PDUs that Nagle's algorithm would hold back (issue 13).
            evt_handlers=[(evt.EVT_CONN_OPEN, _set_nodelay), *handlers],
        )
        if not assoc.is_established:
            how = "rejected" if assoc.is_rejected else "aborted"
            raise PullError(
                f"the PACS {self.peer} {how} the association from {self.calling_ae}: "
                "check that it knows this AE title and offers Study Root query/retrieve"
            )
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def find(self, assoc: Association, query: Dataset) -> list[Dataset]:
        """The matches of one C-FIND.

        Raises:
            PullError: the PACS answers a failure status or drops the association.
        """
        matches: list[Dataset] = []
        for status, match in assoc.send_c_find(query, FIND):
            code = _code(status)
            if code in PENDING and match is not None:
                matches.append(match)
            elif code == SUCCESS:
                return matches
            elif code == NO_STATUS:
                # Orthanc accepts an unknown calling AE, then aborts its first C-FIND.
                raise PullError(
                    f"the PACS {self.peer} aborted a {query.QueryRetrieveLevel} query from "
                    f"{self.calling_ae}: check that it knows this AE title"
                )
            else:
                raise PullError(
                    f"the PACS {self.peer} failed a {query.QueryRetrieveLevel} query: "
                    f"status 0x{code:04X}"
                )
        raise PullError(f"the PACS {self.peer} ended a query without a final status")

    def move(self, query: Dataset, destination: str) -> int:
        """Ask the PACS to send what `query` names to `destination`, on an association
        of its own (a failed move may leave one unusable); the final status.

        Raises:
            PullError: the PACS cannot be reached, refuses us or does not know the
                destination AE title.
        """
        code = NO_STATUS
        with self.associate([(MOVE, None)]) as assoc:
            for status, _ in assoc.send_c_move(query, destination, MOVE):
                code = _code(status)
                if code == MOVE_DESTINATION_UNKNOWN:
                    raise PullError(
                        f"the PACS {self.peer} does not know the move destination "
                        f"{destination}: register it there (AE title, this host, --port) "
                        "or use --via get"
                    )
                if code not in PENDING:
                    break
        return code

    def get(
        self, query: Dataset, sop_classes: Sequence[str], handlers: Sequence[EventHandlerType]
    ) -> int:
        """C-GET what `query` names on a new association that takes the storage SCP role
        for `sop_classes` (each offered in every transfer syntax the receiver takes, so
        the PACS sends what it holds untranscoded); `handlers` receive the C-STOREs.

        Raises:
            PullError: the PACS cannot be reached or refuses the association.
        """
        per_class = (MAX_CONTEXTS - 1) // max(1, len(sop_classes))
        contexts: list[tuple[str, Sequence[str] | None]] = [(GET, None)]
        for sop_class in sop_classes:
            contexts += [(sop_class, [syntax]) for syntax in TRANSFER_SYNTAXES[:per_class]]
        code = NO_STATUS
        with self.associate(contexts, roles=sop_classes, handlers=handlers) as assoc:
            for status, _ in assoc.send_c_get(query, GET):
                code = _code(status)
                if code not in PENDING:
                    break
        return code
