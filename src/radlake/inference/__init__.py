"""Detection: the model registry, ONNX Runtime sessions, decoders, NMS, evaluation.

onnxruntime is imported by `sessions` only (an optional extra:
`pip install 'radlake[inference]'`); everything else here is numpy.
"""
