"""python3 -m zsq.run_onnx --model MODEL.onnx [--data-dir DIR] [--limit N] [--json]

Runs an ONNX file written by `python3 -m zsq.export` in ONNX Runtime on the Fashion-MNIST test set
and prints its top-1: the last step of the walkthrough, the model outside ZSQ. The images are
normalized with the input_mean / input_std the export put in the file's metadata. Exit status: 0
done, 1 a bad file or data, 2 a wrong command line. Errors are one line on stderr.
"""
import argparse
import json
import os
import sys

import numpy as np


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        print(f"zsq.run_onnx: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def _fail(message):
    print(f"zsq.run_onnx: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 1


def run(path, data_dir, limit=0, batch=500):
    """(top-1, images) of the ONNX file on Fashion-MNIST's test split; raises ValueError on a bad file."""
    import onnxruntime as ort
    from .data import load_fashion_mnist
    try:
        session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types
        raise ValueError(f"'{path}' is not an ONNX model ONNX Runtime can load: {err}") from err
    meta = session.get_modelmeta().custom_metadata_map
    if "input_mean" not in meta or "input_std" not in meta:
        raise ValueError(f"'{path}' has no input_mean / input_std metadata (not written by zsq.export)")
    mean = np.asarray(json.loads(meta["input_mean"]), np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(json.loads(meta["input_std"]), np.float32).reshape(1, -1, 1, 1)
    images, labels = (t.numpy() for t in load_fashion_mnist("test", data_dir, limit))
    shape = session.get_inputs()[0].shape
    if list(shape[1:]) != list(images.shape[1:]):
        raise ValueError(f"'{path}' takes inputs of shape {shape[1:]}, the Fashion-MNIST images are "
                         f"{list(images.shape[1:])}")
    name = session.get_inputs()[0].name
    correct = 0
    for start in range(0, images.shape[0], batch):
        x = (images[start:start + batch].astype(np.float32) / 255 - mean) / std
        logits = session.run(None, {name: x})[0]
        correct += int((logits.argmax(1) == labels[start:start + batch]).sum())
    return correct / images.shape[0], images.shape[0]


def main(argv=None):
    p = _Parser(prog="python3 -m zsq.run_onnx",
                description="Top-1 of an exported ONNX model in ONNX Runtime on the Fashion-MNIST test set.")
    p.add_argument("--model", required=True, help="ONNX file from python3 -m zsq.export")
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist",
                   help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--limit", type=int, default=0, help="only the first N test images (0: all)")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    args = p.parse_args(argv)
    if args.limit < 0:
        p.error(f"--limit must be >= 0, got {args.limit}")
    if not os.path.isfile(args.model):
        return _fail(f"'{args.model}' does not exist")
    try:
        top1, count = run(args.model, args.data_dir, args.limit)
    except ImportError as err:
        return _fail(f"{err} (./launch/setup installs onnxruntime)")
    except (ValueError, OSError) as err:
        return _fail(err)
    if args.json:
        print(json.dumps({"model": args.model, "images": count, "top1": top1}))
    else:
        print(f"{args.model}: top-1 {100 * top1:.2f} % on {count} Fashion-MNIST test images (ONNX Runtime)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
