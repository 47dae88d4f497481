"""ONNX Runtime sessions of registered models, cached per process (onnxruntime is
imported only here and by imaging/burned_in_detector.py, the text detector).

A session is built once per model file (keyed by its sha256) and shared by every
thread of the process: InferenceSession.run is thread-safe, and building one costs
far more than a request. Two threads asking for a model not yet loaded build it
once (a lock per model); the cache keeps the few most recently used models.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from radlake.inference.errors import INSTALL_HINT, InferenceUnavailable, ModelFileError

MAX_CACHED_MODELS = 8


def _onnxruntime() -> ModuleType:
    try:
        import onnxruntime  # type: ignore[import-untyped]
    except ImportError:
        raise InferenceUnavailable(f"ONNX Runtime is not installed: {INSTALL_HINT}") from None
    module: ModuleType = onnxruntime
    return module


def _dims(shape: Sequence[Any]) -> tuple[int | None, ...]:
    # Symbolic dimensions ('batch', 'N') and unknown ones are None.
    return tuple(dim if isinstance(dim, int) and dim > 0 else None for dim in shape)


@dataclass(frozen=True, slots=True)
class ModelIO:
    """A model's signature and metadata, as ONNX Runtime reads them."""

    input_name: str
    input_shape: tuple[int | None, ...]
    output_names: tuple[str, ...]
    output_shapes: tuple[tuple[int | None, ...], ...]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the graph requires, when it fixes one."""
        return self.input_shape[0] if self.input_shape else None


class LoadedModel:
    """One ONNX Runtime session and its signature."""

    def __init__(self, session: Any) -> None:
        inputs = session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            shapes = [list(item.shape) for item in inputs]
            raise ModelFileError(f"expected one NCHW image input; the model takes {shapes}")
        outputs = session.get_outputs()
        self.session = session
        self.io = ModelIO(
            input_name=inputs[0].name,
            input_shape=_dims(inputs[0].shape),
            output_names=tuple(output.name for output in outputs),
            output_shapes=tuple(_dims(output.shape) for output in outputs),
            metadata=dict(session.get_modelmeta().custom_metadata_map),
        )

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """The model's outputs for an NCHW float32 batch.

        Raises:
            ModelFileError: ONNX Runtime refused the input or failed in the graph.
        """
        try:
            return [
                np.asarray(value) for value in self.session.run(None, {self.io.input_name: batch})
            ]
        except Exception as exc:  # onnxruntime raises its own untyped errors
            first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise ModelFileError(
                f"the model failed on an input of {list(batch.shape)}: {first}"
            ) from None


def load_model(data: bytes, *, threads: int | None = None) -> LoadedModel:
    """An ONNX Runtime session over the model bytes (CPU).

    Raises:
        InferenceUnavailable: onnxruntime is not installed.
        ModelFileError: the bytes are not a model ONNX Runtime can load.
    """
    ort = _onnxruntime()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: its warnings would reach the CLI
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # InvalidProtobuf, InvalidGraph, Fail, ...
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ModelFileError(f"ONNX Runtime cannot load this model: {first}") from None
    return LoadedModel(session)


class SessionCache:
    """Loaded models by sha256, shared by the threads of a process."""

    def __init__(self, max_models: int = MAX_CACHED_MODELS) -> None:
        self.max_models = max_models
        self.loads = 0  # sessions built: tests and benchmarks read it
        self._lock = threading.Lock()
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}

    def _cached(self, sha256: str) -> LoadedModel | None:
        with self._lock:
            model = self._models.get(sha256)
            if model is not None:
                self._models.move_to_end(sha256)
            return model

    def get(
        self, sha256: str, read: Callable[[], bytes], *, threads: int | None = None
    ) -> LoadedModel:
        """The model with this sha256, built from read() on first use.

        Raises:
            ModelFileError: the bytes read do not have that sha256, or do not load.
            InferenceUnavailable: onnxruntime is not installed.
            StorageError: from read().
        """
        model = self._cached(sha256)
        if model is not None:
            return model
        with self._lock:
            loading = self._loading.setdefault(sha256, threading.Lock())
        with loading:
            model = self._cached(sha256)
            if model is not None:
                return model
            data = read()
            if hashlib.sha256(data).hexdigest() != sha256:
                raise ModelFileError("the stored model file does not match its registered sha256")
            model = load_model(data, threads=threads)
            with self._lock:
                self._models[sha256] = model
                self.loads += 1
                while len(self._models) > self.max_models:
                    self._models.popitem(last=False)
                self._loading.pop(sha256, None)
            return model

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


SESSIONS = SessionCache()
"""This process's cache: the API, the CLI and each batch worker have one."""
