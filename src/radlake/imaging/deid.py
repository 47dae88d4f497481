"""De-identification: keyed pseudonyms for patient identity.

PS3.15 Annex E (basic profile) removes direct identifiers. radlake keeps every
original byte-for-byte in the private store, and keeps none of those identifiers
in the catalog: PatientID becomes an HMAC-SHA256 pseudonym under the lake's secret
key (stable within a lake, meaningless without the key); PatientName, birth date,
addresses and other direct identifiers are never read into the catalog.
"""

from __future__ import annotations

import hashlib
import hmac

PSEUDONYM_HEX_CHARS = 32


class Pseudonymizer:
    """Turns a PatientID into a keyed pseudonym (HMAC-SHA256, 128 bits in hex)."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("the pseudonym key must not be empty")
        self._key = key

    def __call__(self, patient_id: str) -> str:
        digest = hmac.new(self._key, patient_id.strip().encode(), hashlib.sha256).hexdigest()
        return digest[:PSEUDONYM_HEX_CHARS]

    def derived_key(self, purpose: str) -> bytes:
        """A key for another use of the lake's secret (HMAC of the purpose): UID remapping
        and date shifts must not be computable from a patient pseudonym's key alone."""
        return hmac.new(self._key, b"radlake/" + purpose.encode(), hashlib.sha256).digest()

    def __repr__(self) -> str:  # never show the key
        return "Pseudonymizer(<key>)"
