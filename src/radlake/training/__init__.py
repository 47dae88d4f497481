"""Training radlake's own small detector on a dataset version (issue 10).

    data.py     the version's images (through the stored-image service) and boxes,
                letterboxed, and the augmentations that keep boxes exact
    model.py    a small anchor-free single-stage detector in plain PyTorch
    loop.py     training with early stopping on the validation split
    metrics.py  predictions in stored pixels, scored with inference's NMS and COCO mAP
    export.py   ONNX in the YOLOv8 layout radlake's decoders read, verified

torch is an optional extra: only this package imports it (`require_torch`).
"""

from __future__ import annotations

from radlake.errors import RadlakeError

INSTALL_HINT = "training needs PyTorch: pip install 'radlake[train]'"


class TrainingError(RadlakeError, ValueError):
    """A training request cannot be met (no training images, no boxes, bad settings)."""


def require_torch() -> None:
    """Raises TrainingError with the install hint when torch is missing."""
    try:
        import torch  # noqa: F401
    except ImportError as exc:  # pragma: no cover - the [train] extra is installed in CI
        raise TrainingError(INSTALL_HINT) from exc
