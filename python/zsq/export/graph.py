"""A small ONNX graph builder on `onnx.helper` / `onnx.numpy_helper`: unique
names, initializers from numpy arrays, nodes, and the quantize-clip-
dequantize chains of the quantized export.

QDQ conventions (ONNX QuantizeLinear / DequantizeLinear, opset >= 13):
* activations per tensor: q = saturate(round_half_even(x / s) + zp) in an
  8-bit container (uint8 or int8; 16-bit ones need opset 21), then, when
  the code range is narrower than the container, a Clip to it (QCDQ, as
  Brevitas exports below 8 bits), then x_hat = (q - zp) * s;
* weights per output channel (axis 0), symmetric (zero point 0), stored as
  integer initializers; a Clip to the weight bit-width's code range below
  8 bits;
* biases as int32 with scale s_input * s_weight (ORT fuses that form).
layers.py says what the integer layers make of it.
"""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MIN_OPSET = 13  # per-channel DequantizeLinear (axis)
INT16_OPSET = 21  # 16-bit QuantizeLinear / DequantizeLinear

_CONTAINERS = (  # (numpy dtype, lowest, highest, minimum opset)
    (np.uint8, 0, 255, MIN_OPSET),
    (np.int8, -128, 127, MIN_OPSET),
    (np.uint16, 0, 65535, INT16_OPSET),
    (np.int16, -32768, 32767, INT16_OPSET),
)


class ExportError(ValueError):
    """A model that cannot be written at the requested opset or options."""


def activation_container(lo, hi, opset):
    """(dtype, zero point) holding the codes [lo, hi]: the container's codes
    are code + zero point. An unsigned range [0, hi] goes to uint8 with zero
    point 0, a signed one [-2^(b-1), 2^(b-1)-1] to int8 with zero point 0, any
    other (the first layer's [-z, 2^b-1-z]) to uint8 with zero point -lo
    (16-bit containers when 8 bits are too few)."""
    signed = lo < 0 and lo == -(hi + 1)
    for dtype, low, high, min_opset in _CONTAINERS:
        if opset < min_opset or (low < 0) != signed:
            continue
        if signed and low <= lo and hi <= high:
            return dtype, 0
        if not signed and hi - min(lo, 0) <= high:
            return dtype, -min(lo, 0)
    raise ExportError(f"activation codes [{lo}, {hi}] need a 16-bit container: use --opset {INT16_OPSET} or higher"
                      if opset < INT16_OPSET else f"activation codes [{lo}, {hi}] do not fit 16 bits")


def weight_container(lo, hi, opset, what):
    """The signed integer dtype holding weight values in [lo, hi]."""
    if -128 <= lo and hi <= 127:
        return np.int8
    if -32768 <= lo and hi <= 32767 and opset >= INT16_OPSET:
        return np.int16
    need = f"use --opset {INT16_OPSET} or higher" if opset < INT16_OPSET else "they do not fit 16 bits"
    raise ExportError(f"{what}: weight values in [{lo}, {hi}] need int16; {need}")


class Graph:
    """Nodes and initializers of one ONNX graph, with unique tensor names."""

    def __init__(self, opset):
        self.opset = opset
        self.nodes, self.initializers = [], []
        self._used = set()

    def name(self, hint):
        """A tensor or node name not used before, from `hint`."""
        base = hint.replace("/", ".") or "t"
        name, i = base, 1
        while name in self._used:
            name, i = f"{base}_{i}", i + 1
        self._used.add(name)
        return name

    def const(self, hint, array):
        """An initializer holding `array` (numpy; its dtype is kept)."""
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op, inputs, hint, **attrs):
        """Adds node `op` with one output named from `hint`; returns the output's name."""
        out = self.name(hint)
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def rename_output(self, old, new):
        """Renames the output `old` of the node that makes it (nothing may consume it yet)."""
        for node in self.nodes:
            for i, out in enumerate(node.output):
                if out == old:
                    node.output[i] = new
                    self._used.add(new)
                    return new
        raise ExportError(f"no node makes '{old}'")

    # -- quantization chains --------------------------------------------------

    def clip_codes(self, q, lo, hi, dtype, hint):
        """Clip of integer codes to [lo, hi] (both in the container's units)."""
        low = self.const(hint + ".clip_min", np.array(lo, dtype=dtype))
        high = self.const(hint + ".clip_max", np.array(hi, dtype=dtype))
        return self.node("Clip", [q, low, high], hint + ".clipped")

    def quantize_activation(self, x, step, lo, hi, hint, dequantize_scale=None):
        """x -> codes in [lo, hi] at step `step` -> dequantized float (Q[C]DQ),
        at `dequantize_scale` when given (1: the codes themselves), else at `step`."""
        dtype, zero = activation_container(lo, hi, self.opset)
        info = np.iinfo(dtype)
        scale = self.const(hint + ".act_scale", np.array(step, dtype=np.float32))
        zp = self.const(hint + ".act_zero_point", np.array(zero, dtype=dtype))
        narrow = (lo + zero, hi + zero) != (info.min, info.max)
        if narrow and dtype not in (np.uint8, np.int8):
            # ORT has no 16-bit Clip: clamp in float first (round(clamp(x/s)) = clamp(round(x/s)) for integer bounds).
            low = self.const(hint + ".act_min", np.array(lo * step, dtype=np.float32))
            high = self.const(hint + ".act_max", np.array(hi * step, dtype=np.float32))
            x = self.node("Clip", [x, low, high], hint + ".input_clipped")
            narrow = False
        q = self.node("QuantizeLinear", [x, scale, zp], hint + ".input_codes")
        if narrow:
            q = self.clip_codes(q, lo + zero, hi + zero, dtype, hint + ".input_codes")
        if dequantize_scale is not None:
            scale = self.const(hint + ".code_scale", np.array(dequantize_scale, dtype=np.float32))
        return self.node("DequantizeLinear", [q, scale, zp], hint + ".input_dq")

    def dequantize_weight(self, codes, scale, hint, clip=None):
        """Integer weight initializer (numpy, [out, ...]) times a per-channel
        float32 scale [out] (axis 0, zero point 0); `clip` = (lo, hi) adds a Clip."""
        codes = np.ascontiguousarray(codes)
        q = self.const(hint + ".weight_codes", codes)
        if clip is not None:
            q = self.clip_codes(q, clip[0], clip[1], codes.dtype, hint + ".weight_codes")
        s = self.const(hint + ".weight_scale", np.asarray(scale, dtype=np.float32))
        zp = self.const(hint + ".weight_zero_point", np.zeros(codes.shape[0], dtype=codes.dtype))
        return self.node("DequantizeLinear", [q, s, zp], hint + ".weight_dq", axis=0)

    def dequantize_bias(self, bias, scale, hint):
        """The float bias [out] as int32 codes at per-channel `scale` (the input
        step times the weight scale); None when some channel cannot be
        represented (a zero scale, or int32 overflow)."""
        scale = np.asarray(scale, dtype=np.float32)
        if not np.all(np.isfinite(scale)) or np.any(scale == 0):
            return None
        codes = np.round(np.asarray(bias, dtype=np.float64) / scale.astype(np.float64))
        if not np.all(np.abs(codes) < 2.0 ** 31 - 1):
            return None
        q = self.const(hint + ".bias_codes", codes.astype(np.int32))
        s = self.const(hint + ".bias_scale", scale)
        zp = self.const(hint + ".bias_zero_point", np.zeros(scale.shape[0], dtype=np.int32))
        return self.node("DequantizeLinear", [q, s, zp], hint + ".bias_dq", axis=0)

    # -- the model ------------------------------------------------------------

    def model(self, input_shape, num_classes, output, doc, metadata):
        """The ModelProto: input `input` [N, C, H, W] float, output `logits` [N, classes]."""
        if output != "logits":
            self.rename_output(output, "logits")
        channels, height, width = (int(v) for v in input_shape)
        inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", channels, height, width])]
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", int(num_classes)])]
        graph = helper.make_graph(self.nodes, "zsq", inputs, outputs, self.initializers, doc_string=doc)
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="zsq",
                                  ir_version=helper.find_min_ir_version_for(opsets))
        model.doc_string = doc
        helper.set_model_props(model, {k: str(v) for k, v in metadata.items()})
        return model


def check(model):
    """The ONNX checker with shape inference (raises onnx.checker.ValidationError)."""
    onnx.checker.check_model(model, full_check=True)
