"""zsq.mixed_plot: the margin of each mixed point over the straight line joining the neighbouring uniform
points (by weight size and by BOPs, checked by hand), the picture, and clear errors for bad front files."""
import contextlib
import io
import os
import tempfile
import unittest

from zsq import mixed_plot

HEADER = "kind,budget,weight_bytes,mean_wbits,bops,kl,top1,file_bytes,seconds,mix\n"
ROWS = (
    "uniform,2,100,2,1000,0.5,0.80,0,0,\"2\"\n"
    "uniform,4,200,4,3000,0.1,0.90,0,0,\"4\"\n"
    "size,150B,150,3,1500,0.2,0.88,0,0,\"4,2,4\"\n"
    "bops,2500,180,3.6,2500,0.1,0.89,0,0,\"4,4,2\"\n"
    "size,300B,300,8,9000,0.0,0.91,0,0,\"8\"\n"
    "joint,150+2000,150,3,2000,0.2,0.87,0,0,\"4,2,2\"\n"
)


class MixedPlotTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.csv = os.path.join(self.dir.name, "front.csv")
        with open(self.csv, "w") as f:
            f.write(HEADER + ROWS)

    def tearDown(self):
        self.dir.cleanup()

    def test_margins_against_the_uniform_line(self):
        m = mixed_plot.margins(mixed_plot.read_front(self.csv))
        self.assertEqual([r["kind"] for r, _, _ in m], ["size", "bops", "size", "joint"])
        # 150 B lies halfway between 100 and 200 B: the line gives 0.85; 1500 BOPs a quarter: 0.825.
        self.assertAlmostEqual(m[0][1], 0.88 - 0.85)
        self.assertAlmostEqual(m[0][2], 0.88 - 0.825)
        self.assertAlmostEqual(m[1][1], 0.89 - 0.88)
        self.assertAlmostEqual(m[1][2], 0.89 - 0.875)
        self.assertIsNone(m[2][1])  # beyond the highest uniform point: no line
        self.assertIsNone(m[2][2])
        self.assertAlmostEqual(m[3][1], 0.87 - 0.85)  # halfway on both lines
        self.assertAlmostEqual(m[3][2], 0.87 - 0.85)

    def test_prints_and_draws(self):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertEqual(mixed_plot.main([self.csv]), 0)
        self.assertIn("+3.00", out.getvalue())
        self.assertIn("+5.50", out.getvalue())
        png = os.path.join(self.dir.name, "front.png")
        with open(png, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

    def test_clear_errors(self):
        bad = os.path.join(self.dir.name, "bad.csv")
        for text, message in (("a,b\n1,2\n", "is not a front file"),
                              (HEADER + "uniform,2,x,2,1000,0,0.8,0,0,\"2\"\n", "must be numbers"),
                              (HEADER + ROWS.splitlines(True)[0], "at least two uniform points")):
            with open(bad, "w") as f:
                f.write(text)
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                self.assertEqual(mixed_plot.main([bad]), 1)
            self.assertIn(message, err.getvalue())
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertEqual(mixed_plot.main([os.path.join(self.dir.name, "missing.csv")]), 1)
        self.assertIn("file not found", err.getvalue())


if __name__ == "__main__":
    unittest.main()
