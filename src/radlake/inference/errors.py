"""Errors of the detection half (leaves of radlake.errors' tree).

RadlakeError
├── InferenceError(RadlakeError, ValueError)      a request that cannot be met
│   ├── ModelNotFound(InferenceError, LookupError)  no such model, version or alias
│   └── ModelFileError(InferenceError)              the ONNX file does not fit
└── InferenceUnavailable(RadlakeError, ImportError) onnxruntime is not installed
"""

from __future__ import annotations

from radlake.errors import RadlakeError

INSTALL_HINT = "pip install 'radlake[inference]'"


class InferenceError(RadlakeError, ValueError):
    """A prediction, registration or evaluation request cannot be met as asked
    (a threshold outside [0, 1], a bad contract, an empty selection)."""


class ModelNotFound(InferenceError, LookupError):
    """No model, version or alias of that name."""


class ModelFileError(InferenceError):
    """The ONNX file does not load, or its inputs and outputs do not fit its decoder."""


class InferenceUnavailable(RadlakeError, ImportError):
    """ONNX Runtime is not installed."""
