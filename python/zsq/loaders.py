"""Loading ZSQ files as torch modules, and writing a PyTorch classifier as a
ZSQ model file. The modules take normalized images (see data.normalize or
the module's `preprocess`), as ZSQ's own forward does; they are returned in
eval mode with the parameter names of the file.
"""
import os

import numpy as np
import torch

from . import archs, files
from .config import (FIXED_FORMAT, MODEL_FORMAT, MODEL_FORMAT_VERSION, STUDENT_FORMAT,
                     VERTICAL_FORMAT, bits_text, read_meta, read_quantized_meta)
from .integer import IntegerFactory, IntLayer, fill_from_vertical
from .quant import QuantizedLayer, StudentFactory, set_bits

_CLASS_TENSORS = ("fc.bias", "classifier.1.bias")
_STEM_TENSORS = ("conv1.weight", "features.0.0.weight")


def _attach_meta(model, meta, channels):
    model.arch = meta.arch
    model.num_classes = meta.num_classes
    model.input_shape = list(meta.input_shape) or None
    model.input_mean = list(meta.input_mean) or [0.0] * channels
    model.input_std = list(meta.input_std) or [1.0] * channels
    model.width = meta.width if meta.width > 0 else 16
    model.precision = meta.precision or "fp32"
    model.source = meta
    if len(model.input_mean) not in (1, channels) or len(model.input_std) not in (1, channels):
        raise ValueError(f"input mean/std have {len(model.input_mean)}/{len(model.input_std)} values, "
                         f"the input has {channels} channels")
    if any(s <= 0 for s in model.input_std):
        raise ValueError(f"input std must be > 0, got {model.input_std}")
    return model


def _refuse_other_formats(path, fmt):
    if fmt == STUDENT_FORMAT:
        raise ValueError(f"'{path}' is a once-for-all student; load it with load_student(path, bits)")
    if fmt in (FIXED_FORMAT, VERTICAL_FORMAT):
        raise ValueError(f"'{path}' is an extracted integer model ('{fmt}'); load it with load_extracted")
    if fmt and fmt != MODEL_FORMAT:
        raise ValueError(f"'{path}' is a '{fmt}' file, not a model file (format '{MODEL_FORMAT}')")


def _teacher_meta(file, path, arch, num_classes, input_shape, input_mean, input_std, width):
    """The file's attributes with the arguments applied (C++ trainers::load_model)."""
    meta = read_meta(file)
    _refuse_other_formats(path, meta.format)
    if meta.format and not 1 <= meta.version <= MODEL_FORMAT_VERSION:
        raise ValueError(f"'{path}' has model format version {meta.version}; "
                         f"this package reads versions 1..{MODEL_FORMAT_VERSION}")
    if meta.precision not in ("", "fp32"):
        raise ValueError(f"'{path}' holds a '{meta.precision}' model; load_teacher expects an FP32 model")
    if arch:
        if meta.arch and meta.arch != arch:
            raise ValueError(f"'{path}' holds a '{meta.arch}' model, but arch says '{arch}'")
        meta.arch = arch
    if not meta.arch:
        raise ValueError(f"'{path}' does not say its architecture; pass arch=")
    meta.num_classes = num_classes or meta.num_classes
    meta.input_shape = list(input_shape) if input_shape else meta.input_shape
    meta.input_mean = [float(v) for v in np.atleast_1d(input_mean)] if input_mean is not None else meta.input_mean
    meta.input_std = [float(v) for v in np.atleast_1d(input_std)] if input_std is not None else meta.input_std
    meta.width = width or meta.width
    if meta.num_classes <= 0:
        for name in _CLASS_TENSORS:
            if name in file:
                meta.num_classes = int(file[name].shape[0])
    if meta.num_classes <= 1:
        raise ValueError(f"'{path}' does not say its number of classes; pass num_classes=")
    if meta.input_shape and (len(meta.input_shape) != 3 or min(meta.input_shape) <= 0):
        raise ValueError(f"input shape must be three positive numbers (C, H, W), got {meta.input_shape}")
    return meta


def _build(path, meta, channels, factory=None):
    """The zoo's model for a file's attributes; ValueError naming the file."""
    try:
        return archs.build(meta.arch, channels, meta.num_classes, meta.width or 16, factory)
    except ValueError as err:
        raise ValueError(f"'{path}': {err}") from None


def _input_channels(file, meta, path):
    if meta.input_shape:
        return int(meta.input_shape[0])
    for name in _STEM_TENSORS:
        if name in file and len(file[name].shape) == 4:
            return int(file[name].shape[1])
    raise ValueError(f"'{path}' does not say its input shape; pass input_shape=(C, H, W)")


def load_teacher(path, arch=None, num_classes=None, input_shape=None, input_mean=None, input_std=None, width=None):
    """An FP32 model file (format zsq-model, or a plain state_dict HDF5 whose
    attributes the arguments supply) as a torch module in eval mode.

    Arguments override the file's attributes (an `arch` that contradicts the
    file is an error); classes are inferred from the last layer, channels
    from the stem when not stated. The module's forward takes normalized
    images: use `model.preprocess(pixels)` (uint8, or float in [0, 1]).
    """
    path = os.fspath(path)
    with files.open_h5(path) as file:
        meta = _teacher_meta(file, path, arch, num_classes, input_shape, input_mean, input_std, width)
        channels = _input_channels(file, meta, path)
        model = _build(path, meta, channels)
        files.load_state(model, file)
    return _attach_meta(model, meta, channels).eval()


def load_student(path, bits):
    """A once-for-all student file or quantize checkpoint (format zsq-student)
    as a torch module fake-quantized at model bit-width `bits`, with the C++
    numerics; `model.set_bits(k)` (zsq.set_bits) switches to another of
    `model.model_bits`. Forward takes normalized images."""
    path = os.fspath(path)
    with files.open_h5(path) as file:
        meta, config = read_quantized_meta(file, (STUDENT_FORMAT,))
        config.index_of(bits, path)
        channels = int(meta.input_shape[0])
        model = _build(path, meta, channels, StudentFactory(config))
        files.load_state(model, file, ignore_groups=("train/",))  # a checkpoint's training state
    model.requires_grad_(False)
    model.config, model.model_bits = config, list(config.bits)
    set_bits(model, bits)
    for name, layer in model.named_modules():
        if isinstance(layer, QuantizedLayer) and not bool(getattr(layer, f"act_ready_b{bits}")):
            raise ValueError(f"'{path}': the input quantizer of '{name}' at {bits} bits was never calibrated "
                             "(initialise the student with zsq init-student)")
    return _attach_meta(model, meta, channels).eval()


def load_extracted(path, bits=None):
    """A fixed-precision (zsq-fixed) or vertical-layered (zsq-vertical, needs
    `bits`) file as a torch module on the integer reference path: input codes
    times integer weight levels summed exactly, then scale and bias per
    channel (C++ models::load_integer_model). Forward takes normalized images."""
    path = os.fspath(path)
    with files.open_h5(path) as file:
        meta, config = read_quantized_meta(file, (FIXED_FORMAT, VERTICAL_FORMAT))
        channels = int(meta.input_shape[0])
        if meta.format == FIXED_FORMAT:
            fixed_bits = files.attr_int(file, "bits")
            if fixed_bits is None:
                raise ValueError(f"'{path}' lacks the attribute 'bits'")
            if bits not in (None, 0, fixed_bits):
                raise ValueError(f"'{path}' is a fixed {fixed_bits}-bit model; bits={bits} needs the "
                                 "vertical-layered file")
            mix = files.attr_str(file, "mix")
            if mix and bits not in (None, 0):
                raise ValueError(f"'{path}' is a mixed-precision model ({mix}); it has no bits to choose")
            factory = IntegerFactory(config, fixed_bits, path)
            model = _build(path, meta, channels, factory)
            (files.load_packed_state if meta.version >= 2 else files.load_state)(model, file)
            bits = fixed_bits
        else:
            if not bits:
                raise ValueError(f"'{path}' is vertical-layered; choose a bit-width with bits= "
                                 f"(one of {bits_text(config.bits)})")
            factory = IntegerFactory(config, bits, path)
            model = _build(path, meta, channels, factory)
            for name, layer in model.named_modules():
                if isinstance(layer, IntLayer):
                    fill_from_vertical(file, name, layer, bits)
    model.config, model.bits = config, bits
    return _attach_meta(model, meta, channels).eval()


def _check_fits(module, arch, channels, num_classes, width):
    """ValueError listing every tensor of `module` that the zoo's `arch` would not load."""
    reference = archs.build(arch, channels, num_classes, width).state_dict()
    state = module.state_dict()
    problems = [f"missing tensor '{n}'" for n in reference if n not in state]
    problems += [f"unexpected tensor '{n}'" for n in state if n not in reference]
    problems += [f"'{n}' has shape {list(state[n].shape)}, {arch} expects {list(t.shape)}"
                 for n, t in reference.items() if n in state and tuple(state[n].shape) != tuple(t.shape)]
    if problems:
        shown = "\n  ".join(problems[:12])
        raise ValueError(f"the module does not fit ZSQ's '{arch}' ({len(problems)} problems):\n  {shown}")
    return state


def save_teacher(module, path, arch, num_classes, input_shape, input_mean, input_std, width=None):
    """Writes a PyTorch classifier's state_dict as a ZSQ model file (format
    zsq-model, version 1, precision fp32, with arch, num_classes,
    input_shape (C, H, W), input_mean, input_std and, for the CIFAR-style
    ResNets, width), atomically, so that `zsq eval --model path` loads it.
    The module must have the zoo's names and shapes for `arch` (checked)."""
    path = os.fspath(path)
    input_shape = [int(v) for v in input_shape]
    if len(input_shape) != 3 or min(input_shape) <= 0:
        raise ValueError(f"input_shape must be three positive numbers (C, H, W), got {input_shape}")
    channels = input_shape[0]
    mean = [float(v) for v in np.atleast_1d(input_mean)]
    std = [float(v) for v in np.atleast_1d(input_std)]
    if len(mean) not in (1, channels) or len(std) not in (1, channels) or min(std) <= 0:
        raise ValueError(f"input_mean and input_std need 1 or {channels} values (std > 0), got {mean}, {std}")
    cifar = arch in archs.CIFAR_ARCHS
    state = _check_fits(module, arch, channels, int(num_classes), int(width or 16) if cifar else 16)

    def fill(file):
        for name, tensor in state.items():
            t = tensor.detach().cpu()
            t = t.to(torch.float32) if t.is_floating_point() else t
            if not t.is_floating_point() and t.dtype not in (torch.int64, torch.uint8):
                t = t.to(torch.int64)
            file.create_dataset(name, data=t.numpy())
        file.attrs["format"] = MODEL_FORMAT
        file.attrs["version"] = np.int64(MODEL_FORMAT_VERSION)
        file.attrs["arch"] = arch
        file.attrs["num_classes"] = np.int64(num_classes)
        file.attrs["input_shape"] = np.asarray(input_shape, dtype=np.int64)
        file.attrs["input_mean"] = np.asarray(mean, dtype=np.float64)
        file.attrs["input_std"] = np.asarray(std, dtype=np.float64)
        if cifar:
            file.attrs["width"] = np.int64(width or 16)
        file.attrs["precision"] = "fp32"
        file.attrs["recipe"] = ""

    files.atomic_write(path, fill)
    return path

