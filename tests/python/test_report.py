"""zsq.report on a real run folder of `zsq quantize` (tiny run, the binary's own metrics and result)."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

import test_zsq_python as base

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def report(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.path.abspath("python"),
                                                                     os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-m", "zsq.report", *map(str, args)], capture_output=True, text=True,
                          env=env)
    return done.returncode, done.stdout, done.stderr


class ReportTest(base.FolderTest):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="zsq-report-")
        data = os.path.join(cls.dir, "images.h5")  # 256 Fashion-MNIST test images: teacher, pool and test set
        base.write_eval_set(data)
        teacher = os.path.join(cls.dir, "teacher.h5")
        base.run_zsq("train-teacher", "--arch", "resnet8", "--width", 4, "--epochs", 1, "--batch-size", 64,
                     "--data", data, "--test-data", data, "--out", teacher)
        cls.run_dir = os.path.join(cls.dir, "run")
        base.run_zsq("quantize", "--teacher", teacher, "--pool", data, "--eval-data", data, "--bits", "2,8",
                     "--steps", 4, "--batch-size", 32, "--calib-count", 16, "--out", cls.run_dir)


    def test_the_run_writes_result_json_and_the_report_draws_it(self):
        with open(os.path.join(self.run_dir, "result.json")) as f:
            result = json.load(f)
        self.assertEqual(result["bits"], [2, 8])
        self.assertIn("top1_b2", result)
        self.assertIn("teacher_top1", result)
        code, out, err = report(self.run_dir)
        self.assertEqual((code, err), (0, ""))
        self.assertIn("accuracies and per-bit losses of 4 steps, bits [2, 8]", out)
        with open(os.path.join(self.run_dir, "report.png"), "rb") as f:
            png = f.read()
        self.assertEqual(png[:8], PNG_MAGIC)
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        self.assertEqual((width, height), (1100, 420))
        # --eval: the accuracies from another JSON with the same keys (zsq eval --checkpoint ... --json).
        other = os.path.join(self.dir, "other.png")
        code, out, err = report(self.run_dir, "--eval", os.path.join(self.run_dir, "result.json"), "--out", other)
        self.assertEqual((code, err), (0, ""))
        self.assertIn("accuracies and", out)
        without = os.path.join(self.dir, "without.json")
        with open(without, "w") as f:
            json.dump({"top1_b2": 0.5}, f)
        code, _, err = report(self.run_dir, "--eval", without, "--out", other + "2")
        self.assertEqual(code, 1)
        self.assertIn("has no teacher_top1", err)
        self.assertFalse(os.path.exists(other + "2"))

    def test_bad_runs_fail_with_one_line(self):
        code, _, err = report(os.path.join(self.dir, "none"))
        self.assertEqual(code, 1)
        self.assertIn("is not a folder", err)
        empty = os.path.join(self.dir, "empty")
        os.makedirs(empty, exist_ok=True)
        code, _, err = report(empty)
        self.assertEqual(code, 1)
        self.assertIn("metrics.jsonl' does not exist", err)
        broken = os.path.join(self.dir, "broken")
        os.makedirs(broken, exist_ok=True)
        with open(os.path.join(broken, "metrics.jsonl"), "w") as f:
            f.write('{"step": 1}\n')
        code, _, err = report(broken, "--out", os.path.join(broken, "r.png"))
        self.assertEqual(code, 1)
        self.assertIn("line 1: not a metrics line", err)
        self.assertFalse(os.path.exists(os.path.join(broken, "r.png")))
        self.assertEqual(len(err.strip().splitlines()), 1)


if __name__ == "__main__":
    unittest.main()
