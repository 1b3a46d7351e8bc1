"""The fuzz targets' seed corpus: one small valid file of each kind per target.

usage: make_seeds.py OUT_DIR ZSQ_BINARY   (run with PYTHONPATH=python; needs h5py, numpy, PIL, torch)
"""
import gzip
import os
import shutil
import struct
import subprocess
import sys

import h5py
import numpy as np
from PIL import Image

import zsq

out, zsq_bin = sys.argv[1], sys.argv[2]
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
rng = np.random.default_rng(0)


def folder(name):
    path = os.path.join(out, name)
    os.makedirs(path, exist_ok=True)
    return path


def idx(array):
    return bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()


d = folder("idx")
images = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
open(os.path.join(d, "images.idx"), "wb").write(idx(images))
open(os.path.join(d, "labels.idx"), "wb").write(idx(np.array([1, 2, 3], np.uint8)))
open(os.path.join(d, "images.idx.gz"), "wb").write(gzip.compress(idx(images[:1])))

d = folder("h5_dataset")
with h5py.File(os.path.join(d, "uint8.h5"), "w") as f:
    f["images"] = rng.integers(0, 256, (4, 1, 8, 8), dtype=np.uint8)
    f["labels"] = np.arange(4, dtype=np.int64)
with h5py.File(os.path.join(d, "float.h5"), "w") as f:
    f["images"] = rng.random((2, 3, 4, 4), dtype=np.float32)
    f["labels"] = np.array([0, 1], np.int32)

d = folder("model")
teacher = os.path.join(d, "teacher.h5")
zsq.save_teacher(zsq.build("resnet8", 1, 10, width=2).eval(), teacher, "resnet8", 10, (1, 28, 28), [0.3], [0.4], width=2)
s = folder("student")
student = os.path.join(s, "student.h5")
subprocess.run([zsq_bin, "init-student", "--teacher", teacher, "--bits", "2,8", "--calib-count", "4", "--threads", "1",
                "--out", student], check=True, capture_output=True)
subprocess.run([zsq_bin, "extract", "--checkpoint", student, "--bits", "2", "--out", os.path.join(d, "fixed.h5"),
                "--threads", "1"], check=True, capture_output=True)
subprocess.run([zsq_bin, "extract", "--checkpoint", student, "--out", os.path.join(d, "vertical.h5"), "--threads", "1"],
               check=True, capture_output=True)

d = folder("image")
Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(os.path.join(d, "grey.png"))
Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(os.path.join(d, "rgb.png"))
Image.fromarray(rng.integers(0, 256, (28, 28, 4), dtype=np.uint8)).save(os.path.join(d, "rgba.png"))
Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(os.path.join(d, "grey.jpg"), quality=90)
Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(os.path.join(d, "rgb.jpg"), quality=90)

d = folder("ini")
configs = os.path.join(root, "launch", "configs")
for name in sorted(os.listdir(configs)):
    if name.endswith(".ini"):
        shutil.copy(os.path.join(configs, name), d)
open(os.path.join(d, "sections.ini"), "w").write("arch = resnet20\n[train-teacher]\nepochs = 3\nbits = 2,4\n[quantize]\nlr = 1\n")
print(f"make_seeds: seed corpus in {out}")
