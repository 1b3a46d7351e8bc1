"""The once-for-all student's layers, evaluated with the C++ numerics
(framework/quant/fake_quant_cpu.cpp, layers.cpp, models/quant_factory.cpp):

* a step is used as max(|s|, 1e-8);
* LSQ: x_hat = round(clamp(x / s, -Qn, Qp)) * s, float32, round half to even;
* vertical-layered weights, per output channel: q_top = round(clamp(w / s))
  in the signed top range, then the cascade down to the weight bits, shift
  (q >> delta, dequantized at the bin centre (2^delta * q + (2^delta - 1) / 2)
  * s) or round (q_(j-1) = min((q_j + 1) >> 1, 2^(j-2) - 1), dequantized as
  2^delta * q * s);
* activation quantizers per tensor: unsigned [0, 2^b - 1] or signed
  [-2^(b-1), 2^(b-1) - 1] (buffer `input_signed`), or for the first layer
  with a known input range the codes [-z, 2^b - 1 - z];
* switchable BatchNorm: one BatchNorm2d per model bit-width, `<bn>.b<k>`.

Only the forward pass (evaluation) is provided.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import FIRST, LAST, MIDDLE

MIN_STEP = 1e-8


def positive_step(step):
    """The step a quantizer uses: |s| floored at 1e-8."""
    return step.abs().clamp_min(MIN_STEP)


def signed_range(bits):
    """(Qn, Qp) of a signed two's complement b-bit code."""
    return 1 << (bits - 1), (1 << (bits - 1)) - 1


def unsigned_range(bits):
    """(Qn, Qp) of an unsigned b-bit code."""
    return 0, (1 << bits) - 1


def lsq_fake_quant(x, step, qn, qp):
    """round(clamp(x / s, -qn, qp)) * s with one float32 step (0-dim tensor)."""
    return torch.round(torch.clamp(x / step, -qn, qp)) * step


def vl_codes(w, step, top_bits, bits, nesting):
    """Integer weight codes at `bits` (int32), per output channel step [C]."""
    s = step.reshape((-1,) + (1,) * (w.dim() - 1))
    qn, qp = signed_range(top_bits)
    q = torch.round(torch.clamp(w / s, -qn, qp)).to(torch.int32)
    if nesting == "shift":
        return q >> (top_bits - bits)
    for j in range(top_bits, bits, -1):
        q = torch.clamp_max((q + 1) >> 1, (1 << (j - 2)) - 1)
    return q


def vl_fake_quant(w, step, top_bits, bits, nesting):
    """The vertical-layered weight at `bits`, dequantized with the top step [C]."""
    shift = top_bits - bits
    level = (vl_codes(w, step, top_bits, bits, nesting) * (1 << shift)).to(torch.float32)
    if nesting == "shift":
        level = level + ((1 << shift) - 1) / 2.0
    return level * step.reshape((-1,) + (1,) * (w.dim() - 1))


def fixed_input_zero(lo, hi, abits):
    """For a known input range [lo, hi]: the number of codes below zero, z, so
    that the codes [-z, 2^b - 1 - z] cover the range with the smallest step
    (C++ QuantizedLayer::register_quant_state)."""
    levels = (1 << abits) - 1
    if lo >= 0:
        return 0
    best_step, zero = math.inf, 0
    split = -lo / ((hi - lo) / levels)
    for candidate in (math.floor(split), math.ceil(split)):
        z = min(max(int(candidate), 1), levels - 1)
        s = max(-lo / z, hi / (levels - z))
        if s < best_step:
            best_step, zero = s, z
    return zero


class QuantOptions:
    """A quantized layer's bit-widths at each model bit-width."""

    def __init__(self, bits, wbits, abits, top_bits, nesting, input_bounds=()):
        self.bits, self.wbits, self.abits = list(bits), list(wbits), list(abits)
        self.top_bits, self.nesting = top_bits, nesting
        self.input_bounds = list(input_bounds)


class QuantizedLayer(nn.Module):
    """Shared machinery of QConv2d and QLinear: the weight quantizer and the
    per-bit input quantizers, with the C++ parameter and buffer names."""

    def _register_quant_state(self, out_channels, options):
        self.options = options
        self.index = 0
        self.weight_step = nn.Parameter(torch.full((out_channels,), 1e-2))
        for b in options.bits:
            self.register_parameter(f"act_step_b{b}", nn.Parameter(torch.tensor(0.1)))
            self.register_buffer(f"act_ready_b{b}", torch.tensor(False))
        self.register_buffer("input_signed", torch.tensor(False))
        self.input_zero = []
        if options.input_bounds:
            lo, hi = options.input_bounds
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi and hi > 0):
                raise ValueError(f"the input range must be [lo, hi] with lo < hi and hi > 0, got {[lo, hi]}")
            self.input_zero = [fixed_input_zero(lo, hi, a) for a in options.abits]

    def set_bits(self, b):
        """Selects model bit-width b."""
        if b not in self.options.bits:
            raise ValueError(f"bit-width {b} is not one of this model's ({','.join(map(str, self.options.bits))})")
        self.index = self.options.bits.index(b)

    @property
    def bits(self):
        return self.options.bits[self.index]

    @property
    def weight_bits(self):
        return self.options.wbits[self.index]

    @property
    def activation_bits(self):
        return self.options.abits[self.index]

    def input_range(self):
        """(Qn, Qp) of the input codes at the current bit-width."""
        a = self.activation_bits
        if self.input_zero:
            zero = self.input_zero[self.index]
            return zero, (1 << a) - 1 - zero
        return signed_range(a) if bool(self.input_signed) else unsigned_range(a)

    def input_step(self):
        """The input step in use at the current bit-width."""
        return positive_step(getattr(self, f"act_step_b{self.bits}"))

    def quantize_input(self, x):
        if not bool(getattr(self, f"act_ready_b{self.bits}")):
            raise ValueError(f"the input quantizer of a layer at {self.bits} bits was never calibrated "
                             "(act_ready is false in the file)")
        qn, qp = self.input_range()
        return lsq_fake_quant(x, self.input_step(), qn, qp)

    def quantized_weight(self):
        o = self.options
        return vl_fake_quant(self.weight, positive_step(self.weight_step), o.top_bits, self.weight_bits, o.nesting)

    def weight_codes(self):
        """Integer weight codes at the current weight bits (int32)."""
        o = self.options
        return vl_codes(self.weight, positive_step(self.weight_step), o.top_bits, self.weight_bits, o.nesting)


class QConv2d(QuantizedLayer):
    """conv2d of the quantized input with the quantized weight."""

    def __init__(self, cin, cout, kernel, stride, padding, groups, bias, options):
        super().__init__()
        self.stride, self.padding, self.groups = stride, padding, groups
        self.weight = nn.Parameter(torch.zeros(cout, cin // groups, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self._register_quant_state(cout, options)

    def forward(self, x):
        return F.conv2d(self.quantize_input(x), self.quantized_weight(), self.bias, self.stride, self.padding, 1,
                        self.groups)


class QLinear(QuantizedLayer):
    """linear of the quantized input with the quantized weight."""

    def __init__(self, cin, cout, bias, options):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(cout, cin))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self._register_quant_state(cout, options)

    def forward(self, x):
        return F.linear(self.quantize_input(x), self.quantized_weight(), self.bias)


class SwitchableBatchNorm2d(nn.Module):
    """One BatchNorm2d per model bit-width, children named b<k>."""

    def __init__(self, channels, bits):
        super().__init__()
        self.bit_list = list(bits)
        self.index = 0
        for b in self.bit_list:
            self.add_module(f"b{b}", nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1))

    def set_bits(self, b):
        if b not in self.bit_list:
            raise ValueError(f"bit-width {b} is not one of this model's ({','.join(map(str, self.bit_list))})")
        self.index = self.bit_list.index(b)

    def current(self):
        """The BatchNorm2d of the current bit-width."""
        return self._modules[f"b{self.bit_list[self.index]}"]

    def forward(self, x):
        return self.current()(x)


class StudentFactory:
    """Quantized layers configured by a config.StudentConfig (C++ QuantFactory)."""

    def __init__(self, config):
        self.config = config

    def options_for(self, role):
        c = self.config
        bounds = c.input_range if role == FIRST else ()
        return QuantOptions(c.bits, c.layer_wbits(role), c.layer_abits(role), c.layer_top_bits(role), c.nesting,
                            bounds)

    def conv2d(self, cin, cout, kernel, stride=1, padding=0, groups=1, bias=False, role=MIDDLE):
        return QConv2d(cin, cout, kernel, stride, padding, groups, bias, self.options_for(role))

    def linear(self, cin, cout, bias=True, role=LAST):
        return QLinear(cin, cout, bias, self.options_for(role))

    def batch_norm(self, channels):
        return SwitchableBatchNorm2d(channels, self.config.bits)


def set_bits(model, bits):
    """Switches every quantized layer and switchable BatchNorm of `model` to
    model bit-width `bits`; ValueError when it is not one of the model's."""
    switchable = [m for m in model.modules() if isinstance(m, (QuantizedLayer, SwitchableBatchNorm2d))]
    if not switchable:
        raise ValueError("set_bits: the model has no quantized layers (is it an FP32 model?)")
    for m in switchable:
        m.set_bits(bits)
    model.bits = bits
    return model
