"""Curation: named splits without patient leakage, reader agreement, consensus labels.

Everything here is pure (no catalog, no store), so the CLI, the API and the
pipelines call the same functions on plain values. `versions` (dataset versions in
the catalog) is imported from its own module, as it needs the database.
"""

from radlake.curation.agreement import (
    AgreementError,
    AgreementReport,
    ClassAgreement,
    ImageAgreement,
    fleiss_kappa,
    iou,
    iou_matrix,
    match_boxes,
    reader_agreement,
)
from radlake.curation.consensus import FusionMethod, cluster_boxes, consensus_findings
from radlake.curation.splits import (
    LeakageReport,
    SplitInputError,
    SplitItem,
    SplitSpec,
    SplitSpecError,
    SplitStatistics,
    assign_splits,
    check_leakage,
    split_statistics,
)

__all__ = [
    "AgreementError",
    "AgreementReport",
    "ClassAgreement",
    "FusionMethod",
    "ImageAgreement",
    "LeakageReport",
    "SplitInputError",
    "SplitItem",
    "SplitSpec",
    "SplitSpecError",
    "SplitStatistics",
    "assign_splits",
    "check_leakage",
    "cluster_boxes",
    "consensus_findings",
    "fleiss_kappa",
    "iou",
    "iou_matrix",
    "match_boxes",
    "reader_agreement",
    "split_statistics",
]
