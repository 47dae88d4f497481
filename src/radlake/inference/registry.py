"""Registering a model version: check the file runs, settle its contract, decoder and
classes, store it under models/<name>/<version>/model.onnx and catalogue it.

What the file says for itself (radlake's `radlake_contract`, Ultralytics' `names`
and `imgsz`, the graph's input shape) is the default; what the caller gives wins.
Registration runs the model once on a blank input and decodes the answer, so a
wrong decoder or class count is refused here, not at the first request.
Registering the same file with the same settings again returns its version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from radlake.catalog.model_registry import add_version, check_model_name, same_file_versions
from radlake.catalog.models import DatasetVersion
from radlake.inference.contract import InputContract, square_size
from radlake.inference.decoders import decode
from radlake.inference.errors import InferenceError, ModelFileError
from radlake.inference.metadata import DECODERS, class_names_from, guess_decoder, read_metadata
from radlake.inference.sessions import LoadedModel, load_model
from radlake.storage.store import ObjectStore


@dataclass(frozen=True, slots=True)
class Registered:
    """A registered version and whether this call created it."""

    name: str
    version: int
    created: bool
    sha256: str
    decoder: str
    class_names: tuple[str, ...]
    contract: dict[str, Any]


def _read(onnx: bytes | str | Path) -> bytes:
    if isinstance(onnx, bytes):
        return onnx
    path = Path(onnx)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InferenceError(f"no model file at {path.name[:80]!r}") from None
    except OSError as exc:
        raise InferenceError(f"cannot read the model file: {exc.strerror}") from None


def _contract(
    loaded: LoadedModel,
    file_contract: Mapping[str, Any] | None,
    imgsz: object,
    given: Mapping[str, Any],
) -> InputContract:
    merged: dict[str, Any] = {}
    _, channels, height, width = loaded.io.input_shape
    if channels in (1, 3):
        merged["channels"] = channels
    if height is not None and height == width:
        merged["size"] = height
    if imgsz is not None:
        merged["size"] = square_size(imgsz)
    merged.update(file_contract or {})
    merged.update(given)
    contract = InputContract.from_dict(merged)
    if channels is not None and channels != contract.channels:
        raise ModelFileError(
            f"the model takes {channels} channels, the contract says {contract.channels}"
        )
    if (
        height is not None
        and width is not None
        and (height, width) != (contract.size, contract.size)
    ):
        raise ModelFileError(
            f"the model takes {height}x{width} inputs, "
            f"the contract says {contract.size}x{contract.size}"
        )
    return contract


def _dry_run(loaded: LoadedModel, contract: InputContract, decoder: str, classes: int) -> None:
    blank = np.zeros((1, contract.channels, contract.size, contract.size), dtype=np.float32)
    outputs = loaded.run(blank)
    decode(
        decoder,
        outputs,
        batch=1,
        classes=classes,
        score_threshold=1.0,
        names=loaded.io.output_names,
    )


def register_model(
    session: Session,
    store: ObjectStore,
    *,
    name: str,
    onnx_bytes_or_path: bytes | str | Path,
    contract: Mapping[str, Any] | InputContract | None = None,
    decoder: str | None = None,
    class_names: Sequence[str] | None = None,
    metrics: Mapping[str, Any] | None = None,
    trained_on_version_id: int | None = None,
) -> Registered:
    """Register an ONNX file as the next version of model `name`.

    contract may be partial (only the keys the caller sets); it overrides what the
    file carries. The file is written only after its version number is claimed, so
    concurrent registrations never overwrite each other's files.

    Raises:
        InferenceError: a bad name, contract, decoder, class list or dataset version.
        ModelFileError: ONNX Runtime cannot load or run the file, or its outputs do
            not fit the decoder and classes.
        InferenceUnavailable: onnxruntime is not installed.
        StorageError: the store failed.
    """
    check_model_name(name)
    if decoder is not None and decoder not in DECODERS:
        raise InferenceError(f"expected a decoder among {', '.join(DECODERS)}, got {decoder!r:.40}")
    data = _read(onnx_bytes_or_path)
    loaded = load_model(data, threads=1)
    meta = read_metadata(loaded.io.metadata)
    if meta.task is not None and meta.task != "detect":
        raise ModelFileError(f"expected a detection model, the file says task {meta.task!r:.40}")
    names = class_names_from(list(class_names)) if class_names is not None else meta.class_names
    if names is None:
        raise InferenceError("the file names no classes: give them (--classes a,b,...)")
    chosen_decoder = decoder or meta.decoder or guess_decoder(loaded.io.output_shapes, len(names))
    given = contract.as_dict() if isinstance(contract, InputContract) else dict(contract or {})
    settled = _contract(loaded, meta.contract, meta.imgsz, given)
    _dry_run(loaded, settled, chosen_decoder, len(names))
    if (
        trained_on_version_id is not None
        and session.get(DatasetVersion, trained_on_version_id) is None
    ):
        raise InferenceError(f"no dataset version with id {trained_on_version_id}")
    sha256 = hashlib.sha256(data).hexdigest()
    contract_dict = settled.as_dict()
    for existing in same_file_versions(session, name=name, sha256=sha256):
        if (existing.contract, existing.decoder, existing.class_names) == (
            contract_dict,
            chosen_decoder,
            names,
        ):
            return Registered(
                name, existing.version, False, sha256, chosen_decoder, tuple(names), contract_dict
            )
    version = add_version(
        session,
        name=name,
        sha256=sha256,
        size_bytes=len(data),
        contract=contract_dict,
        decoder=chosen_decoder,
        class_names=names,
        metrics=dict(metrics or {}),
        trained_on_id=trained_on_version_id,
    )
    store.put_bytes(version.store_key, data)
    return Registered(
        name, version.version, True, sha256, chosen_decoder, tuple(names), contract_dict
    )


def register_version(
    session: Session,
    store: ObjectStore,
    *,
    name: str,
    onnx_bytes_or_path: bytes | str | Path,
    contract: Mapping[str, Any] | InputContract | None = None,
    decoder: str | None = None,
    class_names: Sequence[str] | None = None,
    metrics: Mapping[str, Any] | None = None,
    trained_on_version_id: int | None = None,
) -> tuple[str, int]:
    """register_model() answering (name, version): the trainer's entry point.

    Raises:
        as register_model().
    """
    registered = register_model(
        session,
        store,
        name=name,
        onnx_bytes_or_path=onnx_bytes_or_path,
        contract=contract,
        decoder=decoder,
        class_names=class_names,
        metrics=metrics,
        trained_on_version_id=trained_on_version_id,
    )
    return registered.name, registered.version
