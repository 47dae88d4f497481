"""A bound on decodes running at once in one API process.

Every decode may take about twice the decode budget in memory (a 333-byte JPEG can
claim a budget's worth of pixels), and request threads are many: without a bound,
a few concurrent renders or uploads of such files take the server out of memory.
Requests beyond the bound wait for a slot; decodes in ingest workers are bounded by
the worker count instead.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

DECODE_SLOTS = 2
_slots = threading.BoundedSemaphore(DECODE_SLOTS)


@contextmanager
def decode_slot() -> Iterator[None]:
    """Hold one of the process's decode slots for the duration of the block."""
    with _slots:
        yield
