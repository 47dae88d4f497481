"""What one `radlake pull` did, over DIMSE or DICOMweb (issue 13, point 2)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from radlake.errors import RadlakeError
from radlake.network.resume import PullPlan


class PullError(RadlakeError, ConnectionError):
    """The PACS or DICOMweb server cannot be reached, refuses us, or fails a query."""


@dataclass(frozen=True, slots=True)
class PullSummary:
    """Counts of one pull. found == skipped + requested; of the requested,
    retrieved + quarantined + not_retrieved; retrieved == catalogued + already_present
    (bytes catalogued before under another SOP Instance UID's name cannot happen, but
    a resent identical object can)."""

    job_id: int | None
    studies: int
    series: int
    found: int
    skipped: int
    requested: int
    catalogued: int
    already_present: int
    quarantined: int
    not_retrieved: int
    bytes_received: int
    seconds: float

    @classmethod
    def of(
        cls,
        plan: PullPlan,
        *,
        job_id: int | None = None,
        catalogued: int = 0,
        already_present: int = 0,
        quarantined: int = 0,
        not_retrieved: int = 0,
        bytes_received: int = 0,
        seconds: float,
    ) -> PullSummary:
        """The summary of a pull that carried out `plan`."""
        return cls(
            job_id=job_id,
            studies=plan.studies,
            series=plan.series,
            found=plan.found,
            skipped=plan.skipped,
            requested=plan.missing,
            catalogued=catalogued,
            already_present=already_present,
            quarantined=quarantined,
            not_retrieved=not_retrieved,
            bytes_received=bytes_received,
            seconds=seconds,
        )

    @property
    def retrieved(self) -> int:
        return self.catalogued + self.already_present

    @property
    def instances_per_second(self) -> float:
        done = self.retrieved + self.quarantined
        return done / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        """The one-line summary the CLI prints."""
        return (
            f"{self.found} instances in {self.studies} studies ({self.series} series) "
            f"match: {self.skipped} already catalogued, {self.requested} requested; "
            f"{self.catalogued} catalogued, {self.already_present} already present, "
            f"{self.quarantined} quarantined, {self.not_retrieved} not retrieved "
            f"in {self.seconds:.1f} s ({self.instances_per_second:.1f} instances/s)"
        )

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self) | {
            "retrieved": self.retrieved,
            "instances_per_second": round(self.instances_per_second, 2),
        }
