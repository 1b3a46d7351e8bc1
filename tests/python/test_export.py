"""ONNX export (python -m zsq.export) against the zsq binary: ONNX Runtime on
the exported teacher, fixed-precision and vertical-layered files gives the
logits of `zsq eval --save-logits` on the same images, the optimized graph
of an 8-bit export runs integer operators, and bad input is one line on
stderr with exit status 1 or 2.

Run from the repository root:
    PYTHONPATH=python ZSQ_BIN=build/zsq /usr/bin/python3 -m unittest discover -s tests/python

Needs onnx and onnxruntime (./launch/setup installs them).
"""
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the helpers of test_zsq_python
import test_zsq_python as base  # noqa: E402
import zsq  # noqa: E402

try:
    import onnx
    import onnxruntime as ort
except ImportError as err:  # setup installs them: a missing one is a failure, not a skip
    raise ImportError(f"{err}: the ONNX export tests need onnx and onnxruntime (./launch/setup)") from None

from zsq.export.__main__ import main as export_main  # noqa: E402
from zsq.export.layers import exact_slices  # noqa: E402

FP32 = 1e-4  # the FP32 teacher: float sums in another order
EXACT = 0.05  # --form exact: zsq's integer arithmetic bit for bit, but for the global average pool's float
# sum (another order than ATen's), which may move one input code of the last layer (README: 0.006 measured)
QDQ_TOLERANCE = 0.5  # --form qdq (the default): rounded biases, float sums (README: up to 0.19 measured)
QDQ_AGREEMENT = 0.97  # top-1 agreement --form qdq must keep (README: 99.6 % and more measured)
INTEGER_OPS = {"QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger"}
MOBILENET_IMAGES = 64
RESNET18_IMAGES = 16


def session(path, optimized=None):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    if optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = optimized
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def run_export(*args):
    """main() in this process: (exit status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = export_main([str(a) for a in args])
        except SystemExit as stop:  # argparse
            code = stop.code
    return code, err.getvalue()


class ExportTest(base.FolderTest):
    """ONNX Runtime against zsq eval, ResNet-8 and MobileNetV2."""

    @classmethod
    def setUpClass(cls):
        torch.set_num_threads(1)
        if not os.access(base.ZSQ_BIN, os.X_OK):
            raise RuntimeError(f"the zsq binary '{base.ZSQ_BIN}' is missing; build it or set ZSQ_BIN")
        cls.dir = tempfile.mkdtemp(prefix="zsq-export-test.")
        cls.data = cls.path("eval.h5")
        cls.images, cls.labels = base.write_eval_set(cls.data)
        cls.teacher = cls.path("teacher.h5")
        base.run_zsq("train-teacher", "--arch", "resnet8", "--width", 4, "--epochs", 10, "--batch-size", 64,
                     "--data", cls.data, "--test-data", cls.data, "--out", cls.teacher)
        cls.student = cls.path("student.h5")
        base.run_zsq("init-student", "--teacher", cls.teacher, "--bits", "2,4,8", "--calib-count", 64,
                     "--out", cls.student)
        for bits in (2, 4, 8):
            base.run_zsq("extract", "--checkpoint", cls.student, "--bits", bits, "--out", cls.path(f"w{bits}.h5"))
        cls.vertical = cls.path("vl.h5")
        base.run_zsq("extract", "--checkpoint", cls.student, "--out", cls.vertical)


    def binary_logits(self, model, limit=base.IMAGES, extra=()):
        out = self.path(f"logits-{os.path.basename(model)}-{'-'.join(map(str, extra))}.h5")
        base.run_zsq("eval", "--model", model, "--data", self.data, "--limit", limit, "--save-logits", out, *extra)
        logits, labels = base.read_logits(out)
        np.testing.assert_array_equal(labels, self.labels.numpy()[:limit])
        return logits.numpy()

    def onnx_logits(self, path, limit=base.IMAGES, optimized=None):
        model = onnx.load(path)
        onnx.checker.check_model(model, full_check=True)
        props = {p.key: p.value for p in model.metadata_props}
        x = zsq.normalize(self.images[:limit], json.loads(props["input_mean"]), json.loads(props["input_std"]))
        return session(path, optimized).run(["logits"], {"input": x.numpy()})[0]

    def compare(self, ours, theirs, what, tolerance, agreement=1.0):
        self.assertEqual(ours.shape, theirs.shape, what)
        diff = float(np.abs(ours - theirs).max())
        agree = float(np.mean(ours.argmax(1) == theirs.argmax(1)))
        print(f"\n  {what}: max |logit difference| {diff:.3g}, top-1 agreement {agree * 100:.2f} %", end="")
        self.assertTrue(np.all(np.isfinite(ours)), what)
        self.assertLessEqual(diff, tolerance, what)
        self.assertGreaterEqual(agree, agreement, what)

    def export(self, model, name, *args):
        out = self.path(name)
        code, err = run_export("--model", model, "--out", out, *args)
        self.assertEqual((code, err), (0, ""), name)
        return out

    def test_teacher_through_the_command_line(self):
        out = self.path("teacher.onnx")
        command = [sys.executable, "-m", "zsq.export", "--model", self.teacher, "--out", out]
        done = subprocess.run(command, capture_output=True, text=True)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stderr, "")
        self.assertEqual([f for f in os.listdir(self.dir) if ".tmp." in f], [])  # atomic: no temporary left
        ops = {n.op_type for n in onnx.load(out).graph.node}
        self.assertNotIn("QuantizeLinear", ops)
        self.assertIn("BatchNormalization", ops)
        self.compare(self.onnx_logits(out), self.binary_logits(self.teacher), "teacher", FP32)
        one = self.onnx_logits(out, limit=1)  # the batch dimension is dynamic
        self.assertEqual(one.shape, (1, 10))

    def test_8_bit_runs_on_integer_operators(self):
        out = self.export(self.path("w8.h5"), "w8.onnx")
        optimized = self.path("w8-optimized.onnx")
        ours = self.onnx_logits(out, optimized=optimized)
        self.compare(ours, self.binary_logits(self.path("w8.h5")), "fixed w8a8, qdq", QDQ_TOLERANCE)
        graph_ops = {n.op_type for n in onnx.load(out).graph.node}
        self.assertTrue({"QuantizeLinear", "DequantizeLinear"} <= graph_ops)
        self.assertNotIn("Clip", graph_ops)  # 8 bits: plain QDQ
        fused = {n.op_type for n in onnx.load(optimized).graph.node} & INTEGER_OPS
        print(f"\n  optimized w8a8 graph: {sorted(fused)}", end="")
        self.assertTrue(fused, "ONNX Runtime did not fuse the 8-bit export into integer operators")

    def test_fixed_every_bit_width(self):
        for bits in (8, 4, 2):
            model = self.path(f"w{bits}.h5")
            theirs = self.binary_logits(model)
            for weights in ("offset", "int16"):
                out = self.export(model, f"w{bits}-{weights}.onnx", "--weights", weights, "--form", "exact")
                clipped = "Clip" in {n.op_type for n in onnx.load(out).graph.node}
                self.assertEqual(clipped, bits < 8)  # QCDQ below 8 bits
                self.compare(self.onnx_logits(out), theirs, f"fixed w{bits}a{bits}, {weights}, exact", EXACT)
                out = self.export(model, f"w{bits}-{weights}-qdq.onnx", "--weights", weights)
                self.compare(self.onnx_logits(out), theirs, f"fixed w{bits}a{bits}, {weights}, qdq", QDQ_TOLERANCE,
                             QDQ_AGREEMENT)

    def test_opset_13(self):
        out = self.export(self.path("w4.h5"), "w4-opset13.onnx", "--opset", 13, "--form", "exact")
        self.assertEqual(onnx.load(out).opset_import[0].version, 13)
        self.compare(self.onnx_logits(out), self.binary_logits(self.path("w4.h5")), "fixed w4a4, opset 13", EXACT)

    def test_vertical(self):
        from_vertical = onnx.load(self.export(self.vertical, "vl-4.onnx", "--bits", 4))
        from_fixed = onnx.load(self.export(self.path("w4.h5"), "w4-again.onnx"))
        for part in ("node", "initializer"):  # the same graph (the doc strings name the files)
            self.assertEqual([x.SerializeToString() for x in getattr(from_vertical.graph, part)],
                             [x.SerializeToString() for x in getattr(from_fixed.graph, part)], part)
        out = self.export(self.vertical, "vl-2.onnx", "--bits", 2, "--form", "exact")
        theirs = self.binary_logits(self.vertical, extra=("--bits", 2))
        self.compare(self.onnx_logits(out), theirs, "vertical at 2 bits, exact", EXACT)

    def test_mobilenet_v2(self):
        torch.manual_seed(2)
        module = base.randomise_bn(zsq.build("mobilenet_v2", 1, 10), seed=2)
        teacher = self.path("mobilenet_v2.h5")
        zsq.save_teacher(module, teacher, "mobilenet_v2", 10, (1, 28, 28), [0.3], [0.4])
        limit = MOBILENET_IMAGES
        out = self.export(teacher, "mobilenet_v2.onnx")
        self.compare(self.onnx_logits(out, limit), self.binary_logits(teacher, limit), "mobilenet_v2 teacher", FP32)
        student = self.path("mobilenet_v2-student.h5")
        base.run_zsq("init-student", "--teacher", teacher, "--bits", "4,8", "--calib-count", 16, "--out", student)
        fixed = self.path("mobilenet_v2-w4.h5")
        base.run_zsq("extract", "--checkpoint", student, "--bits", 4, "--out", fixed)
        theirs = self.binary_logits(fixed, limit)
        out = self.export(fixed, "mobilenet_v2-w4.onnx", "--form", "exact")  # grouped convs: the offset term
        self.compare(self.onnx_logits(out, limit), theirs, "mobilenet_v2 w4a4, exact", EXACT)
        out = self.export(fixed, "mobilenet_v2-w4-qdq.onnx")
        self.compare(self.onnx_logits(out, limit), theirs, "mobilenet_v2 w4a4, qdq", QDQ_TOLERANCE, QDQ_AGREEMENT)

    def test_resnet18_exact_sums_in_slices(self):
        """ResNet-18 at 8 bits with 2-bit steps (large codes): sums can pass 2^24, the exact form slices."""
        torch.manual_seed(3)
        module = base.randomise_bn(zsq.build("resnet18", 1, 10), seed=3)
        teacher, student, fixed = (self.path(f"resnet18{s}.h5") for s in ("", "-student", "-w8"))
        zsq.save_teacher(module, teacher, "resnet18", 10, (1, 28, 28), [0.3], [0.4])
        base.run_zsq("init-student", "--teacher", teacher, "--bits", "2,8", "--calib-count", 8, "--out", student)
        base.run_zsq("extract", "--checkpoint", student, "--bits", 8, "--out", fixed)
        out = self.export(fixed, "resnet18-w8.onnx", "--form", "exact")
        self.assertTrue(any(".slice" in n.name for n in onnx.load(out).graph.node))
        limit = RESNET18_IMAGES
        self.compare(self.onnx_logits(out, limit), self.binary_logits(fixed, limit), "resnet18 w8a8, exact", EXACT)

    def test_exact_slices(self):
        rng = np.random.default_rng(0)
        for top in (127, 300, 32767):
            codes = rng.integers(-top - 1, top + 1, size=(4, 512, 3, 3))
            slices = exact_slices(codes, 255)
            self.assertGreater(len(slices), 1)
            np.testing.assert_array_equal(sum(part << shift for part, shift in slices), codes)
            for part, _ in slices:
                self.assertLess(255 * int(np.abs(part).reshape(4, -1).sum(1).max()), 2 ** 24)
        self.assertEqual(len(exact_slices(np.ones((2, 8), dtype=np.int64), 255)), 1)

    def test_run_onnx_top1_and_errors(self):
        """python -m zsq.run_onnx: the top-1 of the ONNX file on an IDX folder, normalized by its metadata;
        bad input is one line and exit 1 or 2."""
        from zsq.run_onnx import main as run_main
        folder = self.path("idx")
        os.makedirs(folder, exist_ok=True)
        images, labels = self.images.numpy(), self.labels.numpy().astype(np.uint8)
        for name, array in (("t10k-images-idx3-ubyte", images[:, 0]), ("t10k-labels-idx1-ubyte", labels)):
            with open(os.path.join(folder, name), "wb") as f:
                f.write(bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape))
                f.write(array.astype(np.uint8).tobytes())
        out = self.export(self.path("w4.h5"), "w4-run.onnx", "--form", "exact")
        want = float(np.mean(self.onnx_logits(out).argmax(1) == labels))

        def run(*args):
            stdout, stderr = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                try:
                    code = run_main([str(a) for a in args])
                except SystemExit as stop:
                    code = stop.code
            return code, stdout.getvalue(), stderr.getvalue()

        code, stdout, stderr = run("--model", out, "--data-dir", folder, "--json")
        self.assertEqual((code, stderr), (0, ""))
        got = json.loads(stdout.strip().splitlines()[-1])
        self.assertEqual(got["images"], len(labels))
        self.assertAlmostEqual(got["top1"], want, places=9)
        code, stdout, _ = run("--model", out, "--data-dir", folder, "--limit", 8, "--json")
        self.assertEqual(json.loads(stdout)["images"], 8)
        no_meta = self.path("no-meta.onnx")
        model = onnx.load(out)
        del model.metadata_props[:]
        onnx.save(model, no_meta)
        for want_code, text, args in [
            (1, "does not exist", ["--model", self.path("none.onnx"), "--data-dir", folder]),
            (1, "not an ONNX model", ["--model", self.path("w4.h5"), "--data-dir", folder]),
            (1, "no input_mean", ["--model", no_meta, "--data-dir", folder]),
            (1, "not found", ["--model", out, "--data-dir", self.path("nowhere")]),
            (2, "--limit must be >= 0", ["--model", out, "--limit", -1]),
        ]:
            code, _, stderr = run(*args)
            self.assertEqual(code, want_code, (args, stderr))
            self.assertIn(text, stderr, args)
            self.assertEqual(len(stderr.strip().splitlines()), 1, stderr)

    def test_clear_errors(self):
        existing = self.path("existing.onnx")
        with open(existing, "wb") as f:
            f.write(b"keep")
        cases = [
            (1, "file not found", ["--model", self.path("none.h5"), "--out", existing]),
            (1, "once-for-all student", ["--model", self.student, "--out", existing]),
            (1, "choose a bit-width", ["--model", self.vertical, "--out", existing]),
            (1, "bit-width 3 is not one of the model's", ["--model", self.vertical, "--bits", 3, "--out", existing]),
            (1, "FP32 model", ["--model", self.teacher, "--bits", 4, "--out", existing]),
            (1, "does not exist", ["--model", self.teacher, "--out", self.path("no/model.onnx")]),
            (1, "is a folder", ["--model", self.teacher, "--out", self.dir]),
            (1, "--opset 21", ["--model", self.path("w4.h5"), "--weights", "int16", "--opset", 13, "--out", existing]),
            (2, "--opset must be at least 13", ["--model", self.teacher, "--opset", 7, "--out", existing]),
            (2, "--opset must be at most", ["--model", self.teacher, "--opset", 99, "--out", existing]),
            (2, "invalid choice", ["--model", self.teacher, "--weights", "round", "--out", existing]),
            (2, "invalid choice", ["--model", self.teacher, "--form", "fp16", "--out", existing]),
            (2, "required", ["--model", self.teacher]),
        ]
        for code, part, args in cases:
            got, err = run_export(*args)
            self.assertEqual(got, code, f"{args}: {err}")
            self.assertEqual(len(err.strip().splitlines()), 1, err)
            self.assertIn(part, err)
            self.assertTrue(err.startswith("zsq.export: error: "), err)
        with open(existing, "rb") as f:
            self.assertEqual(f.read(), b"keep")  # a failed export leaves the output as it was
        done = subprocess.run([sys.executable, "-m", "zsq.export", "--model", self.student, "--out", existing],
                              capture_output=True, text=True)
        self.assertEqual(done.returncode, 1)
        self.assertEqual(len(done.stderr.strip().splitlines()), 1, done.stderr)


if __name__ == "__main__":
    unittest.main()
