"""The load pattern: worker counts per stage, as `--pattern 1,2,3,5,3,2,1` gives them."""

from __future__ import annotations

from radlake.errors import RadlakeError

DEFAULT_PATTERN = "1,2,3,5,3,2,1"  # the original pipeline's stages (issue 11)
MAX_STAGES = 20
MAX_WORKERS = 64  # per stage: each worker is a thread with its own connection


class SimulationError(RadlakeError, ValueError):
    """A simulation that cannot run as asked (a bad pattern, no images, no token)."""


def parse_pattern(text: str) -> tuple[int, ...]:
    """'1,2,3' -> (1, 2, 3): positive worker counts, one per stage.

    Raises:
        SimulationError: not comma-separated integers in 1..MAX_WORKERS, none, or more
            than MAX_STAGES of them.
    """
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part for part in parts):
        raise SimulationError(
            f"expected worker counts separated by commas (like {DEFAULT_PATTERN}), "
            f"got {text[:60]!r}"
        )
    counts: list[int] = []
    for part in parts:
        if not part.isdecimal() or not 1 <= int(part) <= MAX_WORKERS:
            raise SimulationError(
                f"expected each stage's workers as an integer in 1..{MAX_WORKERS}, "
                f"got {part[:20]!r}"
            )
        counts.append(int(part))
    if len(counts) > MAX_STAGES:
        raise SimulationError(f"expected at most {MAX_STAGES} stages, got {len(counts)}")
    return tuple(counts)
