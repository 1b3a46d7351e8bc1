"""The integer reference path of extracted models (C++ framework/quant/
integer.cpp, bitplanes.cpp and models/extract.cpp `load_integer_model`).

Each convolution or linear layer quantizes its input to integer codes,
multiplies them by the odd integer weight levels 2^(delta+1) * q + o with an
exact sum (float32 when every partial sum fits 2^24, else float64; checked
to fit 32 bits), then requantizes: y = acc * scale + bias in float64, cast to
float32. The BatchNorm is folded into scale and bias, so BatchNorm layers
are identities; ReLU, residual adds and pooling stay in float32.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import files
from .config import LAST, MIDDLE

INT32_MAX = 2 ** 31 - 1


class IntLayer(nn.Module):
    """An integer convolution (conv=True) or linear layer, with the buffers of
    a zsq-fixed file: weight_codes, weight_step, weight_shift, weight_offset,
    act_step, act_range, scale, bias."""

    def __init__(self, cin, cout, kernel=1, stride=1, padding=0, groups=1, conv=True, weight_bits=8,
                 input_border=False):
        super().__init__()
        if not 2 <= weight_bits <= 16:
            raise ValueError(f"integer layer: weight bits must be in [2, 16], got {weight_bits}")
        self.conv, self.stride, self.padding, self.groups = conv, stride, padding, groups
        self.weight_bits = weight_bits
        shape = (cout, cin // groups, kernel, kernel) if conv else (cout, cin)
        self.register_buffer("weight_codes", torch.zeros(shape, dtype=torch.int8 if weight_bits <= 8 else torch.int16))
        self.register_buffer("weight_step", torch.ones(cout))
        self.register_buffer("weight_shift", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("weight_offset", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("act_step", torch.tensor(1.0))
        self.register_buffer("act_range", torch.tensor([0, 255], dtype=torch.int64))
        self.register_buffer("scale", torch.ones(cout))
        self.register_buffer("bias", torch.zeros(cout))
        # AQuant's rounding border (delta, gamma per input channel): zsq-fixed files of zsq ptq --border.
        self.register_buffer("act_border", torch.zeros(2, cin) if input_border else None)

    def accumulate(self, x):
        """The exact integer accumulator of `x` (int64 holding int32 values)."""
        lo, hi = int(self.act_range[0]), int(self.act_range[1])
        if self.act_border is not None:  # C++ quant::apply_border: x * (1 + gamma / qp) + delta * step
            shape = (1, -1, 1, 1) if self.conv else (1, -1)
            delta, gamma = self.act_border[0].reshape(shape), self.act_border[1].reshape(shape)
            x = x * (1 + gamma / float(hi)) + delta * self.act_step
        codes = torch.round(torch.clamp(x / self.act_step, lo, hi))
        shift = int(self.weight_shift)
        levels = self.weight_codes.to(torch.int64) * (1 << (shift + 1)) + int(self.weight_offset)
        max_code = float(max(abs(lo), abs(hi)))
        max_row = float(levels.abs().reshape(levels.shape[0], -1).sum(1).max())
        dtype = torch.float32 if max_code * max_row < 16777216.0 else torch.float64
        a, w = codes.to(dtype), levels.to(dtype)
        acc = F.conv2d(a, w, None, self.stride, self.padding, 1, self.groups) if self.conv else F.linear(a, w)
        if acc.numel() > 0:
            peak = float(acc.abs().max())
            if peak > INT32_MAX:
                raise ValueError(f"integer layer: accumulator {peak} overflows 32 bits")
        return acc.to(torch.int64)

    def forward(self, x):
        acc = self.accumulate(x).to(torch.float64)
        shape = (1, -1, 1, 1) if self.conv else (1, -1)
        scale = self.scale.to(torch.float64).reshape(shape)
        bias = self.bias.to(torch.float64).reshape(shape)
        return (acc * scale + bias).to(torch.float32)


class IntegerFactory:
    """Integer layers whose weight bits follow a StudentConfig at model bit-width `bits`."""

    def __init__(self, config, bits, path):
        self.config = config
        self.index = config.index_of(bits, path)

    def weight_bits(self, role):
        return self.config.layer_wbits(role)[self.index]

    def conv2d(self, cin, cout, kernel, stride=1, padding=0, groups=1, bias=False, role=MIDDLE):
        return IntLayer(cin, cout, kernel, stride, padding, groups, conv=True, weight_bits=self.weight_bits(role),
                        input_border=self.config.input_border)

    def linear(self, cin, cout, bias=True, role=LAST):
        return IntLayer(cin, cout, conv=False, weight_bits=self.weight_bits(role),
                        input_border=self.config.input_border)

    def batch_norm(self, channels):
        return nn.Identity()


def unpack_bits(packed, count):
    """The first `count` bits of a packed uint8 plane (first value in the lowest bit)."""
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    if (count + 7) // 8 != packed.size:
        raise ValueError(f"{packed.size} bytes cannot hold exactly {count} bits")
    return np.unpackbits(packed, bitorder="little")[:count].astype(np.int32)


def rebuild_codes(basic, planes, min_bits, bits):
    """Codes at `bits` from the basic layer (codes at min_bits) and the planes
    min_bits+1 .. bits: q_k = 2 * q_(k-1) + e_k (int16, the basic's shape)."""
    q = np.asarray(basic, dtype=np.int32).reshape(-1)
    for k in range(min_bits + 1, bits + 1):
        q = q * 2 + unpack_bits(planes[k - min_bits - 1], q.size)
    return torch.from_numpy(q.reshape(np.shape(basic)).astype(np.int16))


def _need(file, name):
    return files.read_tensor(file, name)


def fill_from_vertical(file, name, layer, bits):
    """Fills integer layer `name` from a zsq-vertical file at model bit-width `bits`."""
    key, path = name + ".", file.filename
    bits_range = _need(file, key + "weight_bits_range").to(torch.int64).reshape(-1)
    if bits_range.numel() != 2:
        raise ValueError(f"'{path}': {key}weight_bits_range must hold 2 values")
    lo, hi = int(bits_range[0]), int(bits_range[1])
    wb = layer.weight_bits
    if not lo <= wb <= hi:
        raise ValueError(f"'{path}': layer '{name}' stores {lo}..{hi} weight bits, {wb} requested")
    basic = _need(file, key + "weight_basic").to(torch.int16)
    if tuple(basic.shape) != tuple(layer.weight_codes.shape):
        raise ValueError(f"'{path}': '{key}weight_basic' has shape {list(basic.shape)}, "
                         f"the model expects {list(layer.weight_codes.shape)}")
    planes = [_need(file, f"{key}weight_plane_b{k}").numpy() for k in range(lo + 1, hi + 1)]
    codes = rebuild_codes(basic.numpy(), planes, lo, wb)
    top = int(_need(file, key + "weight_top_bits").to(torch.int64).reshape(-1)[0])
    suffix = f"_b{bits}"
    weight_step = _need(file, key + "weight_step").to(torch.float32)
    act_range = _need(file, key + "act_range" + suffix).to(torch.int64).reshape(-1)
    scale = _need(file, key + "scale" + suffix).to(torch.float32)
    bias = _need(file, key + "bias" + suffix).to(torch.float32)
    if scale.shape != layer.scale.shape or weight_step.shape != layer.weight_step.shape or act_range.numel() != 2:
        raise ValueError(f"'{path}': the tensors of layer '{name}' do not fit the model")
    with torch.no_grad():
        layer.weight_codes.copy_(codes.to(layer.weight_codes.dtype))
        layer.weight_step.copy_(weight_step)
        layer.weight_shift.fill_(top - wb)
        layer.weight_offset.fill_((1 << (top - wb)) - 1)
        layer.act_step.copy_(_need(file, key + "act_step" + suffix).to(torch.float32).reshape(()))
        layer.act_range.copy_(act_range)
        layer.scale.copy_(scale)
        layer.bias.copy_(bias)
