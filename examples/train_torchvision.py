"""Trains a torchvision classifier briefly on Fashion-MNIST and writes it as a ZSQ teacher file.

    python3 train_torchvision.py --arch resnet18 --out my_resnet18.h5 [--steps 300]

Stands for "your own model": a torchvision ResNet-18 or MobileNetV2 whose stem takes one channel,
trained on 28 x 28 images with plain PyTorch (Debian's python3-torch and python3-torchvision), then
written with h5py as ZSQ reads a PyTorch model: one dataset per state_dict entry, named as in the
state_dict, and the attributes that say how to feed it. `zsq quantize --teacher my_resnet18.h5`
takes the file as it is. Exit status: 0 written, 1 a data or file problem, 2 a wrong command line.
"""
import argparse
import gzip
import os
import sys

import h5py
import numpy as np
import torch
import torchvision

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's training pixels in [0, 1]


def build(arch):
    """The torchvision model with a 1-channel stem (the only change to it)."""
    if arch == "resnet18":
        model = torchvision.models.resnet18(num_classes=10)
        model.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    else:
        model = torchvision.models.mobilenet_v2(num_classes=10)
        model.features[0][0] = torch.nn.Conv2d(1, 32, 3, 2, 1, bias=False)
    return model


def read_idx(path):
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[:3] != b"\0\0\x08":
        raise ValueError(f"'{path}' is not an IDX file of unsigned bytes")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(raw[3]))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * raw[3]).reshape(shape)


def load(data_dir, split):
    def find(stem):
        for name in (stem + ".gz", stem):
            if os.path.exists(os.path.join(data_dir, name)):
                return os.path.join(data_dir, name)
        raise ValueError(f"'{stem}[.gz]' not found in '{data_dir}'")
    prefix = "train" if split == "train" else "t10k"
    images = torch.from_numpy(read_idx(find(f"{prefix}-images-idx3-ubyte")).copy()).float().div(255).unsqueeze(1)
    labels = torch.from_numpy(read_idx(find(f"{prefix}-labels-idx1-ubyte")).astype(np.int64))
    return (images - MEAN) / STD, labels


def save(model, arch, path):
    """The export: a state_dict written with h5py (this is all ZSQ needs of a PyTorch model)."""
    tmp = path + ".tmp"
    with h5py.File(tmp, "w") as f:
        for name, tensor in model.state_dict().items():
            f.create_dataset(name, data=tensor.detach().cpu().numpy())
        f.attrs["arch"] = arch                     # a zoo architecture with torchvision's names
        f.attrs["num_classes"] = 10
        f.attrs["input_shape"] = [1, 28, 28]      # C, H, W
        f.attrs["input_mean"] = [MEAN]            # per channel, on pixels scaled to [0, 1]
        f.attrs["input_std"] = [STD]
    os.replace(tmp, path)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=["resnet18", "mobilenet_v2"], default="resnet18")
    p.add_argument("--out", required=True, help="ZSQ teacher file to write")
    p.add_argument("--steps", type=int, default=300, help="SGD steps of 128 images (default 300)")
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.steps <= 0:
        p.error(f"--steps must be > 0, got {args.steps}")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK):
        print(f"train_torchvision: error: cannot write into '{out_dir}'", file=sys.stderr)
        return 1
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    try:
        images, labels = load(args.data_dir, "train")
        test_images, test_labels = load(args.data_dir, "test")
    except (OSError, ValueError) as err:
        print(f"train_torchvision: error: {err}", file=sys.stderr)
        return 1
    model = build(args.arch)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=args.steps)
    model.train()
    for step in range(args.steps):
        pick = torch.randint(0, images.shape[0], (128,))
        loss = torch.nn.functional.cross_entropy(model(images[pick]), labels[pick])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 50 == 0 or step + 1 == args.steps:
            print(f"step {step + 1}/{args.steps}  loss {loss.item():.4f}", flush=True)
    # A short run leaves BatchNorm's running statistics behind the weights (MobileNetV2 evaluated at
    # 10-15 % after 40 steps): recompute them as plain averages over a few training batches.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        for _ in range(20):
            model(images[torch.randint(0, images.shape[0], (128,))])
    model.eval()
    with torch.no_grad():
        correct = sum((model(test_images[i:i + 500]).argmax(1) == test_labels[i:i + 500]).sum().item()
                      for i in range(0, test_images.shape[0], 500))
    print(f"{args.arch}: test top-1 {100 * correct / test_images.shape[0]:.2f} % (PyTorch)")
    save(model, args.arch, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
