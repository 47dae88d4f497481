"""Export datasets as YOLO, COCO, classification CSV and ImageFolder, and read the
detection formats back: pure code, no database.

    images (ExportImage) ──► place_images ──► yolo.export_yolo / coco.export_coco
                             (sort, clip,        │ labels, data.yaml, COCO JSON,
                              ResizeTransform)   │ rendered images
                                                 ▼
                                  ManifestSink ──► FolderSink | StoreSink
                                  (sha256, size)   (atomic writes)

The same input always gives the same bytes: images are sorted by split and stem,
boxes by class and position, floats have fixed precision, JSON has sorted keys and
fixed separators, and nothing records a time. Errors are `FormatError` (bad input
or file, also a ValueError) and `StorageError` (the sink failed or a path would
escape the export).
"""

from __future__ import annotations

from radlake.formats.classification import export_classification, export_imagefolder
from radlake.formats.coco import CocoContents, export_coco, read_coco
from radlake.formats.coords import (
    ResizeMode,
    ResizeTransform,
    box_to_coco,
    box_to_yolo,
    clip_box,
    coco_to_box,
    yolo_to_box,
)
from radlake.formats.manifest import MANIFEST_NAME, read_manifest, verify_manifest
from radlake.formats.model import ExportImage, ExportSummary, FormatError, ImageFormatName
from radlake.formats.sink import FolderSink, Sink, StoreSink, export_prefix
from radlake.formats.yolo import data_yaml, export_yolo, read_yolo_labels

__all__ = [
    "MANIFEST_NAME",
    "CocoContents",
    "ExportImage",
    "ExportSummary",
    "FolderSink",
    "FormatError",
    "ImageFormatName",
    "ResizeMode",
    "ResizeTransform",
    "Sink",
    "StoreSink",
    "box_to_coco",
    "box_to_yolo",
    "clip_box",
    "coco_to_box",
    "data_yaml",
    "export_classification",
    "export_coco",
    "export_imagefolder",
    "export_prefix",
    "export_yolo",
    "read_coco",
    "read_manifest",
    "read_yolo_labels",
    "verify_manifest",
    "yolo_to_box",
]
