"""python3 -m zsq.export --model MODEL.h5 --out MODEL.onnx [--bits K] [--opset N] [--weights MODE]

Exit status: 0 written, 1 a bad file or a model that cannot be exported,
2 a wrong command line. Errors are one line on stderr.
"""
import argparse
import sys

from . import DEFAULT_OPSET, FORMS, WEIGHT_MODES

MIN_OPSET = 13  # graph.MIN_OPSET, without importing onnx


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints the usage too)
        sys.exit(_fail(f"{message} (see --help)", 2))


def _parser():
    p = _Parser(
        prog="python3 -m zsq.export",
        description="Export a ZSQ model file (FP32 teacher, fixed-precision or vertical-layered integer model) to "
                    "ONNX. The graph input 'input' is the normalized image N x C x H x W, (pixels in [0, 1] - "
                    "mean) / std (mean and std are in the model's metadata); the output is 'logits'.")
    p.add_argument("--model", required=True, help="zsq-model, zsq-fixed or zsq-vertical HDF5 file")
    p.add_argument("--out", required=True, help="ONNX file to write (atomically)")
    p.add_argument("--bits", type=int, default=0, help="bit-width of a vertical-layered file")
    p.add_argument("--opset", type=int, default=None,
                   help=f"ONNX opset (default {DEFAULT_OPSET}; at least {MIN_OPSET})")
    p.add_argument("--weights", default="offset", choices=WEIGHT_MODES,
                   help="how shift-nested weights below the top precision are written: offset (int8 codes plus an "
                        "exact float correction, default) or int16 (the exact levels, opset >= 21)")
    p.add_argument("--form", default="qdq", choices=FORMS,
                   help="qdq: standard QDQ, 8-bit layers fuse into integer operators in ONNX Runtime, biases "
                        "rounded (default); exact: zsq's integer arithmetic, the logits of zsq eval")
    return p


def _fail(message, code):
    print(f"zsq.export: error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def main(argv=None):
    args = _parser().parse_args(argv)
    opset = DEFAULT_OPSET if args.opset is None else args.opset
    if opset < MIN_OPSET:
        return _fail(f"--opset must be at least {MIN_OPSET}, got {opset}", 2)
    if args.bits < 0:
        return _fail(f"--bits must be positive, got {args.bits}", 2)
    try:
        from .api import export_onnx, newest_opset
    except ImportError as err:
        return _fail(f"{err} (./launch/setup installs onnx)", 1)
    if opset > newest_opset():
        return _fail(f"--opset must be at most {newest_opset()} (the newest this onnx knows), got {opset}", 2)
    try:
        model = export_onnx(args.model, args.out, args.bits or None, opset, args.weights, args.form)
    except (ValueError, OSError) as err:
        return _fail(err, 1)
    nodes = len(model.graph.node)
    print(f"exported {args.model} to {args.out} (opset {opset}, {nodes} nodes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
