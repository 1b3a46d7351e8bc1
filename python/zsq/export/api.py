"""The export itself (see the package doc): load, build the graph, check, write."""
import json
import os

import onnx

from .. import files
from ..config import FIXED_FORMAT, MODEL_FORMAT, STUDENT_FORMAT, VERTICAL_FORMAT, read_meta
from ..loaders import load_extracted, load_teacher
from . import DEFAULT_OPSET, FORMS, WEIGHT_MODES
from .graph import INT16_OPSET, MIN_OPSET, ExportError, Graph, check
from .nets import Emitter

__all__ = ["ExportError", "build_onnx", "export_onnx", "load_for_export", "newest_opset", "write_atomic"]


def newest_opset():
    """The newest ONNX opset the installed onnx package knows."""
    return onnx.defs.onnx_opset_version()


def load_for_export(path, bits=None):
    """The zsq module of a model file (teacher, fixed or vertical at `bits`);
    ValueError naming the file for anything else."""
    path = os.fspath(path)
    with files.open_h5(path) as file:
        fmt = read_meta(file).format
    if fmt == STUDENT_FORMAT:
        raise ValueError(f"'{path}' is a once-for-all student (format '{fmt}'), not a model: extract one first, "
                         f"e.g. zsq extract --checkpoint {path} --bits 4 --out model-w4.h5")
    if fmt in ("", MODEL_FORMAT):
        if bits:
            raise ValueError(f"'{path}' is an FP32 model; --bits applies to vertical-layered files only")
        return load_teacher(path)
    if fmt in (FIXED_FORMAT, VERTICAL_FORMAT):
        return load_extracted(path, bits)
    raise ValueError(f"'{path}' is a '{fmt}' file; expected a model file ('{MODEL_FORMAT}', "
                     f"'{FIXED_FORMAT}' or '{VERTICAL_FORMAT}')")


def _precision(model, path):
    """"fp32", or "w<k>a<k>" of the middle layers at the exported bit-width."""
    if model.source.format not in (FIXED_FORMAT, VERTICAL_FORMAT):
        return "fp32"
    i = model.config.index_of(model.bits, path)
    return f"w{model.config.wbits[i]}a{model.config.abits[i]}"


def _metadata(model, path, weight_mode, form):
    meta = model.source
    quantized = meta.format in (FIXED_FORMAT, VERTICAL_FORMAT)
    props = {
        "zsq.source": os.path.basename(path),
        "zsq.format": meta.format or MODEL_FORMAT,
        "zsq.arch": model.arch,
        "zsq.precision": _precision(model, path),
        "input_mean": json.dumps(list(model.input_mean)),
        "input_std": json.dumps(list(model.input_std)),
        "input": "normalized: (pixels in [0, 1] - input_mean) / input_std, N x C x H x W float32",
    }
    if quantized:
        props["zsq.bits"] = model.bits
        props["zsq.weights"] = weight_mode
        props["zsq.form"] = form
    return props


def build_onnx(model, path="", opset=DEFAULT_OPSET, weight_mode="offset", form="qdq"):
    """The onnx.ModelProto of a module returned by load_for_export."""
    if weight_mode not in WEIGHT_MODES:
        raise ExportError(f"unknown weight mode '{weight_mode}'; known: {', '.join(WEIGHT_MODES)}")
    if form not in FORMS:
        raise ExportError(f"unknown form '{form}'; known: {', '.join(FORMS)}")
    if weight_mode == "int16" and opset < INT16_OPSET:
        raise ExportError(f"--weights int16 needs --opset {INT16_OPSET} or higher")
    graph = Graph(opset)
    logits = Emitter(graph, weight_mode, form).classifier(model, "input")
    if not model.input_shape:
        raise ExportError(f"'{path}' does not say its input shape (C, H, W)")
    shape = model.input_shape
    doc = (f"ZSQ {model.arch} ({_precision(model, path)}) from {os.path.basename(path) or 'a module'}. Input: the normalized "
           f"image, (pixels in [0, 1] - mean) / std with mean {list(model.input_mean)}, std {list(model.input_std)}.")
    onnx_model = graph.model(shape, model.num_classes, logits, doc, _metadata(model, path, weight_mode, form))
    check(onnx_model)
    return onnx_model


def write_atomic(out, data):
    """Writes bytes to `out` through a temporary file in the same folder
    (synced, renamed); on failure the temporary file is removed and an
    existing `out` stays as it was."""
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    files.atomic_replace(out, write)


def export_onnx(model_path, out, bits=None, opset=DEFAULT_OPSET, weight_mode="offset", form="qdq"):
    """Exports a ZSQ model file to ONNX at `out` (atomically); returns the ModelProto.
    ValueError (ExportError among them) for bad files or options."""
    if not MIN_OPSET <= opset <= newest_opset():
        raise ExportError(f"opset must be in [{MIN_OPSET}, {newest_opset()}], got {opset}")
    files.check_output(out)  # before the work
    model = load_for_export(model_path, bits)
    onnx_model = build_onnx(model, os.fspath(model_path), opset, weight_mode, form)
    write_atomic(out, onnx_model.SerializeToString())
    return onnx_model
