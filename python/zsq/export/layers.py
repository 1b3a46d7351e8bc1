"""ONNX nodes for one layer: FP32 Conv / BatchNormalization / Gemm, and the
integer layers of extracted models (python/zsq/integer.py `IntLayer`).

An integer layer computes y = sum(a * L) * scale + bias with the input codes
a = round(clamp(x / act_step, act_range)), the integer weight levels
L = 2^(delta+1) * q + o (q: the codes at the layer's weight bits, delta =
top bits - weight bits, o the offset) and per output channel scale and bias
(the BatchNorm folded in). With u = scale / act_step, the value of one
level, that is conv(a * act_step, L * u) + bias.

WEIGHT_MODES. When o = 0 (weights at the top precision, or round nesting)
the levels are the int8 codes q times 2^(delta+1). Shift nesting's bin
centre (o = 2^delta - 1) has no integer zero point; it is written as
* "offset" (default): the codes q (int8, with a Clip to the weight bits'
  range) times 2^(delta+1), plus o times the sum of the input over each
  kernel window (a Conv with a ones kernel, or a ReduceSum): exact; or
* "int16": the levels L as int16 (DequantizeLinear from int16: opset 21).
(The nearest int8 form, odd codes 2q + 1 at 2^delta * u, moves every weight
by half a top-precision step; that error adds up over a kernel window: it
agreed with zsq eval on 65 % of the top-1 predictions at W4A4. Not offered.)

FORMS:
* "qdq" (default), standard QDQ: the input dequantized at act_step, the
  weights at their multiplier times u per channel, the bias int32 at
  act_step times the weight scale where the layer is plain QDQ (int8
  weights, no offset term: ONNX Runtime fuses those into QLinearConv or
  QGemm; the bias is rounded to that unit), else a float Add. Float sums
  and the rounded biases move an activation code across a rounding
  boundary now and then.
* "exact", zsq's integer path: the input codes and the weight levels as
  integer-valued float32 (DequantizeLinear with scale 1 and 2^(delta+1)),
  whose sums are exact in any order below 2^24 (a layer whose sums could
  pass that is split into bit slices of its codes, summed in float64),
  then acc * scale + bias in float64 (Cast) and back to float32, as zsq
  computes it. Not fused.
"""
import numpy as np
from onnx import TensorProto

from . import WEIGHT_MODES
from .graph import ExportError, weight_container


def _conv_attrs(kernel, stride, padding, groups):
    return dict(kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[padding] * 4, group=groups)


def _array(tensor, dtype=np.float32):
    return tensor.detach().cpu().numpy().astype(dtype)


def fp32_conv(g, conv, x, name):
    """nn.Conv2d -> Conv (weights and bias as float initializers)."""
    inputs = [x, g.const(name + ".weight", _array(conv.weight))]
    if conv.bias is not None:
        inputs.append(g.const(name + ".bias", _array(conv.bias)))
    attrs = _conv_attrs(int(conv.kernel_size[0]), int(conv.stride[0]), int(conv.padding[0]), int(conv.groups))
    return g.node("Conv", inputs, name, **attrs)


def fp32_batch_norm(g, bn, x, name):
    """nn.BatchNorm2d (eval) -> BatchNormalization with the running statistics."""
    tensors = [bn.weight, bn.bias, bn.running_mean, bn.running_var]
    inputs = [x] + [g.const(f"{name}.{key}", _array(t)) for key, t in zip(("weight", "bias", "mean", "var"), tensors)]
    return g.node("BatchNormalization", inputs, name, epsilon=float(bn.eps))


def fp32_linear(g, fc, x, name):
    """nn.Linear -> Gemm(x, W^T) + b."""
    inputs = [x, g.const(name + ".weight", _array(fc.weight))]
    if fc.bias is not None:
        inputs.append(g.const(name + ".bias", _array(fc.bias)))
    return g.node("Gemm", inputs, name, transB=1)


def _int_conv_attrs(layer):
    return _conv_attrs(int(layer.weight_codes.shape[-1]), int(layer.stride), int(layer.padding), int(layer.groups))


def _weights(layer, mode, opset, name):
    """(codes, level multiplier m, clip range or None, offset o or 0): the
    layer's levels are L = m * codes + o (see the module doc)."""
    q = layer.weight_codes.to("cpu").numpy().astype(np.int64)
    shift, offset = int(layer.weight_shift), int(layer.weight_offset)
    bits = int(layer.weight_bits)
    if offset == 0 or mode == "offset":
        codes, multiplier = q, 1 << (shift + 1)
        clip = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if bits < 8 else None
    elif mode == "int16":
        codes, multiplier, clip, offset = q * (1 << (shift + 1)) + offset, 1, None, 0
    else:
        raise ExportError(f"unknown weight mode '{mode}'; known: {', '.join(WEIGHT_MODES)}")
    lo, hi = (int(codes.min()), int(codes.max())) if codes.size else (0, 0)
    if mode == "int16" and int(layer.weight_offset):
        lo = min(lo, -129)  # int16 even where the levels would fit int8: that is the point of this mode
    return codes.astype(weight_container(lo, hi, opset, f"layer '{name}'")), multiplier, clip, offset


def _ones_window(g, layer, x_dq, name, conv):
    """The sum of the dequantized input over each output's receptive field:
    [N, 1 (or out for a grouped conv), ...]."""
    if not conv:
        axes = g.const(name + ".sum_axes", np.array([1], dtype=np.int64))
        return g.node("ReduceSum", [x_dq, axes], name + ".window_sum", keepdims=1)
    out, cin_g, kh, kw = layer.weight_codes.shape
    channels = 1 if int(layer.groups) == 1 else int(out)
    ones = g.const(name + ".ones", np.ones((channels, cin_g, kh, kw), dtype=np.float32))
    return g.node("Conv", [x_dq, ones], name + ".window_sum", **_int_conv_attrs(layer))


def _layer_op(g, layer, inputs, name):
    if layer.conv:
        return g.node("Conv", inputs, name, **_int_conv_attrs(layer))
    return g.node("Gemm", inputs, name, transB=1)


EXACT_FLOAT32 = 2 ** 24  # float32 holds every integer below this


def exact_slices(codes, max_code):
    """[(slice, shift)] with codes = sum(slice << shift), each slice small
    enough that max_code * (its largest per-channel sum of |values|) stays
    below 2^24, so that its float32 products and sums are exact in any order
    (zsq's integer path: float32 under the same bound, else float64)."""
    rows = np.abs(codes).reshape(codes.shape[0], -1).sum(1)
    if codes.size == 0 or max_code * int(rows.max()) < EXACT_FLOAT32:
        return [(codes, 0)]
    bits = int(np.abs(codes).max()).bit_length() + 1
    if bits <= 1:
        raise ExportError(f"a kernel of {codes[0].size} inputs overflows float32 sums")
    low_bits = bits // 2
    low, high = codes & ((1 << low_bits) - 1), codes >> low_bits
    return exact_slices(low, max_code) + [(part, shift + low_bits) for part, shift in exact_slices(high, max_code)]


def _exact_layer(g, layer, x, name, weights, lo, hi, act_step):
    """zsq's integer arithmetic: integer-valued float32 input codes and weight
    levels (sliced where sums could pass 2^24), the accumulator in float64
    (Cast), times scale plus bias, then float32."""
    codes, multiplier, clip, offset = weights
    shape = (1, -1, 1, 1) if layer.conv else (1, -1)
    x_codes = g.quantize_activation(x, np.float32(act_step), lo, hi, name, dequantize_scale=1.0)
    slices = exact_slices(codes.astype(np.int64), max(abs(lo), abs(hi)))
    terms = []
    for i, (part, shift) in enumerate(slices):
        hint = name if len(slices) == 1 else f"{name}.slice{i}"
        scale = np.full(codes.shape[0], multiplier * 2.0 ** shift, dtype=np.float32)
        w_dq = g.dequantize_weight(part.astype(codes.dtype), scale, hint, clip if len(slices) == 1 else None)
        terms.append(_layer_op(g, layer, [x_codes, w_dq], hint))
    if offset:
        terms.append(_ones_window(g, layer, x_codes, name, layer.conv))
    acc = None
    for i, term in enumerate(terms):
        term = g.node("Cast", [term], term + ".f64", to=TensorProto.DOUBLE)
        if offset and i == len(terms) - 1:
            offset_value = g.const(name + ".offset", np.array(offset, dtype=np.float64))
            term = g.node("Mul", [term, offset_value], name + ".offset")
        acc = term if acc is None else g.node("Add", [acc, term], name + ".accumulator")
    y = g.node("Mul", [acc, g.const(name + ".scale", layer.scale.double().numpy().reshape(shape))], name + ".scaled")
    y = g.node("Add", [y, g.const(name + ".bias", layer.bias.double().numpy().reshape(shape))], name + ".biased")
    return g.node("Cast", [y], name + ".output", to=TensorProto.FLOAT)


def _qdq_layer(g, layer, x, name, weights, lo, hi, act_step):
    """Standard QDQ: the input at act_step, the weights at their multiplier
    times the value of one level, an int32 bias where ORT can fuse the layer."""
    codes, multiplier, clip, offset = weights
    shape = (1, -1, 1, 1) if layer.conv else (1, -1)
    unit = layer.scale.double().numpy() / act_step  # the value of one level, per channel
    x_dq = g.quantize_activation(x, np.float32(act_step), lo, hi, name)
    w_scale = (unit * multiplier).astype(np.float32)
    inputs = [x_dq, g.dequantize_weight(codes, w_scale, name, clip)]
    bias = layer.bias.double().numpy()
    if not offset and codes.dtype == np.int8:  # a plain QDQ layer, which ORT fuses: int32 bias
        bias_dq = g.dequantize_bias(bias, np.float32(act_step) * w_scale, name)
        inputs += [bias_dq] if bias_dq is not None else []
    y = _layer_op(g, layer, inputs, name)
    if offset:
        coefficient = g.const(name + ".offset_scale", (unit * offset).astype(np.float32).reshape(shape))
        fix = g.node("Mul", [_ones_window(g, layer, x_dq, name, layer.conv), coefficient], name + ".offset")
        y = g.node("Add", [y, fix], name + ".corrected")
    if len(inputs) == 2:  # float bias: an Add, so that ORT does not fuse the layer with a rounded bias
        y = g.node("Add", [y, g.const(name + ".bias", bias.astype(np.float32).reshape(shape))], name + ".biased")
    return y


def integer_layer(g, layer, x, name, mode, form="qdq"):
    """An IntLayer (conv or linear) in weight mode `mode` and form `form` (module doc)."""
    lo, hi = (int(v) for v in layer.act_range.reshape(-1))
    act_step = float(layer.act_step)
    if getattr(layer, "act_border", None) is not None:
        raise ExportError(f"layer '{name}': AQuant rounding borders (zsq ptq --border) are not exported to ONNX yet")
    if not act_step > 0 or not np.isfinite(act_step):
        raise ExportError(f"layer '{name}': activation step {act_step} is not positive")
    weights = _weights(layer, mode, g.opset, name)
    emit = _exact_layer if form == "exact" else _qdq_layer
    return emit(g, layer, x, name, weights, lo, hi, act_step)
