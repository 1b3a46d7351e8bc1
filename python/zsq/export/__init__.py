"""ONNX export of ZSQ model files (needs the `onnx` package; `onnxruntime`
runs the result):

    /usr/bin/python3 -m zsq.export --model MODEL.h5 --out MODEL.onnx [--bits K] [--opset N]

    from zsq.export import export_onnx
    export_onnx("model-w4.h5", "model-w4.onnx")

* an FP32 teacher (zsq-model) becomes a float Conv / BatchNormalization /
  Relu / Add / MaxPool / GlobalAveragePool / Gemm graph;
* a fixed-precision file (zsq-fixed), or a vertical-layered file
  (zsq-vertical) at `bits`, becomes a QDQ graph of the integer reference
  path: standard QDQ (form "qdq", ONNX Runtime runs 8-bit layers on
  integer kernels) or its exact integer arithmetic (form "exact"); the
  weights nested below the top precision as int8 codes plus an offset
  term or as int16 levels (layers.py explains both, graph.py the QDQ).

The graph input `input` is the normalized image N x C x H x W (float32,
(pixels in [0, 1] - mean) / std, as ZSQ's own forward takes it; the
model's metadata `input_mean` / `input_std` give mean and std), the output
`logits` N x classes; the batch dimension N is dynamic. The file is written
atomically (a temporary file in the same folder, synced, renamed).

Importing this package does not import onnx; its functions do (ImportError
when the package is missing: ./launch/setup installs it).
"""
WEIGHT_MODES = ("offset", "int16")  # layers.py: how shift-nested weights are written
FORMS = ("qdq", "exact")  # layers.py: standard QDQ, or zsq's integer path exactly
DEFAULT_OPSET = 21
_API = ("ExportError", "build_onnx", "export_onnx", "load_for_export", "write_atomic")
__all__ = ["DEFAULT_OPSET", "FORMS", "WEIGHT_MODES", *_API]


def __getattr__(name):
    if name in _API:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'zsq.export' has no attribute '{name}'")
