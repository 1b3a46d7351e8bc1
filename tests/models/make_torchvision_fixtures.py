#!/usr/bin/env python3
"""Builds torchvision models in PyTorch and writes what the C++ parity test reads.

For each model: <name>.h5 holds the state_dict, one dataset per entry, exactly
as a user would export it with h5py (no ZSQ attributes); <name>-io.h5 holds an
input batch and PyTorch's logits for it (eval mode). BN running statistics are
randomised so that eval-mode BN is really exercised.

usage: make_torchvision_fixtures.py OUT_DIR
"""
import os
import sys

import h5py
import torch
import torchvision


def randomise_bn(model):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


def write(out_dir, name, model, x):
    model.eval()
    with torch.no_grad():
        logits = model(x)
    with h5py.File(os.path.join(out_dir, name + ".h5.tmp"), "w") as f:
        for key, value in model.state_dict().items():
            f.create_dataset(key, data=value.numpy())
    os.replace(os.path.join(out_dir, name + ".h5.tmp"), os.path.join(out_dir, name + ".h5"))
    with h5py.File(os.path.join(out_dir, name + "-io.h5"), "w") as f:
        f.create_dataset("input", data=x.numpy())
        f.create_dataset("logits", data=logits.numpy())
    print(f"wrote {name}: input {tuple(x.shape)}, logits {tuple(logits.shape)}")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(0)

    # ResNet-18 with a 1-channel stem and 10 classes (any channels / classes).
    r18 = torchvision.models.resnet18(num_classes=10)
    r18.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    randomise_bn(r18)
    write(out_dir, "tv_resnet18", r18, torch.randn(2, 1, 64, 64))

    mb = torchvision.models.mobilenet_v2(num_classes=1000)
    randomise_bn(mb)
    write(out_dir, "tv_mobilenet_v2", mb, torch.randn(2, 3, 64, 64))

    r50 = torchvision.models.resnet50(num_classes=5)
    randomise_bn(r50)
    write(out_dir, "tv_resnet50", r50, torch.randn(2, 3, 64, 64))


if __name__ == "__main__":
    main()
