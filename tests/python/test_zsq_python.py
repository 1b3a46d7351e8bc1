"""The Python package `zsq` against the zsq binary: the same files give the
same logits (within 1e-4) as `zsq eval --save-logits`, and a module written
by save_teacher evaluates in `zsq eval` as it does in PyTorch.

Run from the repository root:
    PYTHONPATH=python ZSQ_BIN=build/zsq /usr/bin/python3 -m unittest discover -s tests/python

Every file is made by the binary in a temporary folder (tiny models, a few
seconds each); the evaluation data is the first 256 Fashion-MNIST test images
(random images when the data set is not installed).
"""
import os
import shutil
import subprocess
import tempfile
import unittest

import h5py
import numpy as np
import torch

import zsq

ZSQ_BIN = os.environ.get("ZSQ_BIN", "build/zsq")
TOLERANCE = 1e-4


def binary_libtorch():
    """major.minor of the LibTorch the binary runs on (`zsq --version`)."""
    out = subprocess.run([ZSQ_BIN, "--version"], capture_output=True, text=True, check=True).stdout
    return out.split("LibTorch ")[1].split(".")[:2] if "LibTorch " in out else None


# The same LibTorch as this Python's torch: the same kernels, logits within TOLERANCE. Another one (the CUDA
# flavour's 2.x against Debian's 1.13) sums convolutions in another order, and a fake-quantized layer's code can
# flip where x/s sits on a rounding boundary; then the logits agree within CROSS_VERSION of their range and
# the predictions within CROSS_AGREEMENT.
SAME_LIBTORCH = binary_libtorch() == torch.__version__.split(".")[:2]
CROSS_VERSION, CROSS_AGREEMENT = 0.05, 0.98
IMAGES = 256


def run_zsq(*args):
    """Runs the binary (1 thread); fails the test with its stderr when it fails."""
    command = [ZSQ_BIN, *map(str, args), "--threads", "1"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited with {done.returncode}:\n{done.stderr[-2000:]}")
    return done.stdout


def read_logits(path, key="logits"):
    with h5py.File(path, "r") as f:
        return torch.from_numpy(f[key][()]), f["labels"][()]


def randomise_bn(model, seed):
    """Non-trivial BatchNorm statistics, so that eval-mode BatchNorm matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
    return model.eval()


def write_eval_set(path):
    """The first IMAGES Fashion-MNIST test images as an HDF5 data set (uint8)."""
    try:
        images, labels = zsq.load_fashion_mnist("test", limit=IMAGES)
    except ValueError:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (IMAGES, 1, 28, 28), generator=g, dtype=torch.uint8)
        labels = torch.arange(IMAGES) % 10
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images.numpy())
        f.create_dataset("labels", data=labels.numpy().astype(np.int64))
    return images, labels


class FolderTest(unittest.TestCase):
    """Test classes whose setUpClass makes `cls.dir`, a temporary folder removed at the end."""

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    @classmethod
    def path(cls, name):
        return os.path.join(cls.dir, name)


class PythonAccessTest(FolderTest):
    """Logits of every kind of file, Python against the binary."""

    @classmethod
    def setUpClass(cls):
        torch.set_num_threads(1)
        if not os.access(ZSQ_BIN, os.X_OK):
            raise RuntimeError(f"the zsq binary '{ZSQ_BIN}' is missing; build it or set ZSQ_BIN")
        cls.dir = tempfile.mkdtemp(prefix="zsq-python-test.")
        cls.data = cls.path("eval.h5")
        cls.images, cls.labels = write_eval_set(cls.data)
        cls.teacher = cls.path("teacher.h5")
        run_zsq("train-teacher", "--arch", "resnet8", "--width", 4, "--epochs", 10, "--batch-size", 64, "--data",
                cls.data, "--test-data", cls.data, "--out", cls.teacher)
        # Student A: the defaults (shift nesting, first/last layer 8 bits, pixel input range).
        cls.student_a = cls.path("student-a.h5")
        run_zsq("init-student", "--teacher", cls.teacher, "--bits", "2,4,8", "--calib-count", 64,
                "--out", cls.student_a)
        # Student B: round nesting, top 10 bits, first layer at the middle bits with 8-bit input,
        # calibrated (signed or unsigned) input steps, other activation bits, BatchNorm re-estimated.
        cls.student_b = cls.path("student-b.h5")
        run_zsq("init-student", "--teacher", cls.teacher, "--bits", "2,4,8", "--abits", "3,4,8",
                "--first-last-bits", "same,8", "--input-bits", 8, "--nesting", "round", "--top-bits", 10,
                "--input-range", "calibrated", "--weight-init", "mse", "--bn-reestimate", 2,
                "--calib-count", 64, "--out", cls.student_b)


    def binary_logits(self, flag, path, key="logits", limit=IMAGES, extra=()):
        """`zsq eval FLAG PATH --save-logits`: the logits under `key`, labels checked against the data."""
        out = self.path(f"logits-{os.path.basename(path)}-{len(extra)}.h5")
        run_zsq("eval", flag, path, "--data", self.data, "--limit", limit, "--save-logits", out, *extra)
        logits, labels = read_logits(out, key)
        np.testing.assert_array_equal(labels, self.labels.numpy()[:limit])
        return logits

    def python_logits(self, model, limit=IMAGES):
        with torch.no_grad():
            return model(model.preprocess(self.images[:limit]))

    def assert_close(self, ours, theirs, what):
        self.assertEqual(tuple(ours.shape), tuple(theirs.shape), what)
        diff = float((ours - theirs).abs().max())
        print(f"\n  {what}: max |logit difference| {diff:.3g} (logits up to {float(theirs.abs().max()):.3g})",
              end="")
        if SAME_LIBTORCH:
            self.assertLessEqual(diff, TOLERANCE, what)
        else:
            self.assertLessEqual(diff, max(TOLERANCE, CROSS_VERSION * float(theirs.abs().max())), what)
            agreement = float((ours.argmax(1) == theirs.argmax(1)).float().mean())
            self.assertGreaterEqual(agreement, CROSS_AGREEMENT, what)
        self.assertTrue(bool(torch.isfinite(ours).all()), what)

    def test_teacher(self):
        theirs = self.binary_logits("--model", self.teacher)
        model = zsq.load_teacher(self.teacher)
        self.assertFalse(model.training)
        self.assertEqual((model.arch, model.num_classes, model.width), ("resnet8", 10, 4))
        self.assert_close(self.python_logits(model), theirs, "teacher")
        # As a plain state_dict file, described by the arguments.
        plain = self.path("plain.h5")
        with h5py.File(self.teacher, "r") as src, h5py.File(plain, "w") as dst:
            for name in src:
                dst.create_dataset(name, data=src[name][()])
        bare = zsq.load_teacher(plain, arch="resnet8", width=4, input_shape=(1, 28, 28),
                                input_mean=model.input_mean, input_std=model.input_std)
        self.assertEqual(bare.num_classes, 10)
        self.assert_close(self.python_logits(bare), theirs, "teacher from a plain state_dict")

    def check_student(self, path, bits, name):
        out = self.path(f"logits-{name}.h5")
        run_zsq("eval", "--checkpoint", path, "--data", self.data, "--limit", IMAGES, "--save-logits", out)
        for b in bits:
            theirs, labels = read_logits(out, f"logits_b{b}")
            np.testing.assert_array_equal(labels, self.labels.numpy())
            model = zsq.load_student(path, b)
            self.assertEqual(model.bits, b)
            self.assert_close(self.python_logits(model), theirs, f"{name} at {b} bits")
        return model

    def test_student_shift_nesting(self):
        model = self.check_student(self.student_a, (2, 4, 8), "student A (shift)")
        self.assertEqual(model.model_bits, [2, 4, 8])

    def test_student_round_nesting(self):
        self.check_student(self.student_b, (2, 4, 8), "student B (round, calibrated input)")

    def test_switching_bits_is_loading_at_those_bits(self):
        model = zsq.load_student(self.student_a, 8)
        model.set_bits(2)
        expected = self.python_logits(zsq.load_student(self.student_a, 2))
        self.assertTrue(torch.equal(self.python_logits(model), expected))

    def test_fixed_and_vertical(self):
        fixed = self.path("w4.h5")
        run_zsq("extract", "--checkpoint", self.student_a, "--bits", 4, "--out", fixed)
        model = zsq.load_extracted(fixed)
        self.assertEqual(model.bits, 4)
        ours = self.python_logits(model)
        self.assert_close(ours, self.binary_logits("--model", fixed), "fixed w4a4 (integer path)")
        vertical = self.path("vl.h5")
        run_zsq("extract", "--checkpoint", self.student_a, "--out", vertical)
        self.assertTrue(torch.equal(self.python_logits(zsq.load_extracted(vertical, 4)), ours))
        theirs = self.binary_logits("--model", vertical, extra=("--bits", 2))
        self.assert_close(self.python_logits(zsq.load_extracted(vertical, 2)), theirs, "vertical at 2 bits")
        mixed = self.path("mixed.h5")  # per-layer bit-widths, bit-packed codes of several widths
        run_zsq("extract", "--checkpoint", self.student_a, "--budget", "wbits=3", "--pool", self.data, "--images", 32,
                "--out", mixed)
        model = zsq.load_extracted(mixed)
        with h5py.File(mixed, "r") as f:
            widths = {int(f[k][()]) for k in f if k.endswith(".weight_code_bits")}
            self.assertIn("mix", f.attrs)
        self.assertGreater(len(widths), 1, widths)
        self.assert_close(self.python_logits(model), self.binary_logits("--model", mixed), "mixed precision")
        fixed_round = self.path("b-w2.h5")
        run_zsq("extract", "--checkpoint", self.student_b, "--bits", 2, "--out", fixed_round)
        self.assert_close(self.python_logits(zsq.load_extracted(fixed_round)),
                          self.binary_logits("--model", fixed_round), "fixed w2a3, round nesting")

    def test_quantize_checkpoint(self):
        run = self.path("run")
        run_zsq("quantize", "--teacher", self.teacher, "--pool", self.data, "--bits", "2,4", "--steps", 3,
                "--batch-size", 32, "--calib-count", 16, "--eval-data", "none", "--out", run)
        checkpoint = os.path.join(run, "checkpoint.h5")
        with h5py.File(checkpoint, "r") as f:
            self.assertIn("train", f)  # the training state is skipped by the loader
        self.check_student(checkpoint, (2, 4), "quantize checkpoint")

    def test_save_teacher(self):
        module = randomise_bn(zsq.build("resnet8", 1, 10, width=4), seed=1)
        path = self.path("saved.h5")
        zsq.save_teacher(module, path, "resnet8", 10, (1, 28, 28), [0.3], [0.4], width=4)
        with h5py.File(path, "r") as f:
            self.assertEqual(f.attrs["format"], "zsq-model")
            self.assertEqual(int(f.attrs["width"]), 4)
            self.assertEqual(f.attrs["precision"], "fp32")
        theirs = self.binary_logits("--model", path)
        with torch.no_grad():
            ours = module(zsq.normalize(self.images, [0.3], [0.4]))
        self.assert_close(ours, theirs, "save_teacher resnet8")
        self.assertTrue(torch.equal(self.python_logits(zsq.load_teacher(path)), ours))

    def check_torchvision_model(self, arch, limit, seed):
        """A torchvision model (1-channel stem) through save_teacher, init-student and extract."""
        import torchvision  # ./launch/setup installs python3-torchvision: missing is a failure, not a skip
        torch.manual_seed(seed)  # the same random weights on every run
        module = getattr(torchvision.models, arch)(num_classes=10)
        if arch == "mobilenet_v2":
            module.features[0][0] = torch.nn.Conv2d(1, 32, 3, 2, 1, bias=False)
        else:
            module.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
        randomise_bn(module, seed)
        teacher = self.path(f"{arch}.h5")
        zsq.save_teacher(module, teacher, arch, 10, (1, 28, 28), [0.3], [0.4])
        with torch.no_grad():
            ours = module(zsq.normalize(self.images[:limit], [0.3], [0.4]))
        self.assert_close(ours, self.binary_logits("--model", teacher, limit=limit), f"save_teacher {arch}")
        student = self.path(f"{arch}-student.h5")
        run_zsq("init-student", "--teacher", teacher, "--bits", "3,8", "--calib-count", 16, "--out", student)
        out = self.path(f"logits-{arch}-student.h5")
        run_zsq("eval", "--checkpoint", student, "--data", self.data, "--limit", limit, "--save-logits", out)
        for b in (3, 8):
            model = zsq.load_student(student, b)
            if arch == "resnet50" and b == 3 and not SAME_LIBTORCH:
                # 49 fake-quantized 3-bit layers on random weights are chaotic: a 1e-6 relative change of the
                # latent weights moves these logits by up to 6 of 19 (measured), so another LibTorch's
                # summation order alone breaks any tolerance. The same-LibTorch run compares it within 1e-4.
                print(f"\n  {arch} student at {b} bits: compared only against the same LibTorch", end="")
                continue
            self.assert_close(self.python_logits(model, limit), read_logits(out, f"logits_b{b}")[0],
                              f"{arch} student at {b} bits")
        fixed = self.path(f"{arch}-w3.h5")
        run_zsq("extract", "--checkpoint", student, "--bits", 3, "--out", fixed)
        self.assert_close(self.python_logits(zsq.load_extracted(fixed), limit),
                          self.binary_logits("--model", fixed, limit=limit), f"{arch} fixed w3a3")

    def test_mobilenet_v2(self):
        self.check_torchvision_model("mobilenet_v2", 32, seed=2)

    def test_resnet18_and_resnet50(self):
        self.check_torchvision_model("resnet18", 16, seed=3)
        self.check_torchvision_model("resnet50", 8, seed=4)

    def test_clear_errors(self):
        def fails(part, function, *args, **kwargs):
            with self.assertRaises(ValueError) as caught:
                function(*args, **kwargs)
            self.assertIn(part, str(caught.exception))
            return str(caught.exception)

        self.assertIn(self.teacher, fails("expected format 'zsq-student'", zsq.load_student, self.teacher, 4))
        fails("load it with load_student", zsq.load_teacher, self.student_a)
        fails("bit-width 3 is not one of the model's (2,4,8)", zsq.load_student, self.student_a, 3)
        fails("file not found", zsq.load_teacher, self.path("none.h5"))
        with open(self.path("text.h5"), "w") as f:
            f.write("hello")
        fails("is not an HDF5 file", zsq.load_teacher, self.path("text.h5"))
        broken = self.path("broken.h5")
        shutil.copy(self.teacher, broken)
        with h5py.File(broken, "a") as f:
            del f["layer1.0.conv1.weight"]
        fails("missing tensor 'layer1.0.conv1.weight'", zsq.load_teacher, broken)
        fails("holds a 'resnet8' model, but arch says 'resnet20'", zsq.load_teacher, self.teacher, arch="resnet20")
        vertical = self.path("vl-errors.h5")
        run_zsq("extract", "--checkpoint", self.student_a, "--out", vertical)
        fails("choose a bit-width with bits=", zsq.load_extracted, vertical)
        fails("bit-width 5 is not one of the model's", zsq.load_extracted, vertical, 5)
        fails("expected format 'zsq-fixed' or 'zsq-vertical'", zsq.load_extracted, self.student_a)
        fails("does not fit ZSQ's 'resnet20'", zsq.save_teacher, zsq.build("resnet8", 1, 10, 4),
              self.path("x.h5"), "resnet20", 10, (1, 28, 28), [0.3], [0.4])
        fails("does not exist", zsq.save_teacher, zsq.build("resnet8", 1, 10, 4), self.path("no/x.h5"),
              "resnet8", 10, (1, 28, 28), [0.3], [0.4], width=4)
        self.assertFalse(os.path.exists(self.path("x.h5")))


if __name__ == "__main__":
    unittest.main()
