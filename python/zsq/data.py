"""Input preparation as ZSQ's data loader does it (framework/data.cpp): pixels
in [0, 1] (uint8 / 255 in float32), then (x - mean) / std per channel in
float32. Every ZSQ model's forward takes images normalized this way.
"""
import gzip
import os

import numpy as np
import torch


def _per_channel(values, channels, what):
    values = [float(v) for v in (values if np.ndim(values) else [values])]
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ValueError(f"input {what} has {len(values)} values, the input has {channels} channels")
    return torch.tensor(values, dtype=torch.float32).view(1, channels, 1, 1)


def normalize(pixels, mean, std):
    """N x C x H x W pixels -> normalized float32 images.

    `pixels`: a tensor or array, uint8 (0-255) or float in [0, 1]; `mean`,
    `std`: per channel (or one value for all), applied to pixels in [0, 1].
    """
    x = torch.as_tensor(pixels)
    if x.dim() != 4:
        raise ValueError(f"normalize expects N x C x H x W images, got shape {tuple(x.shape)}")
    x = x.to(torch.float32).div(255.0) if x.dtype == torch.uint8 else x.to(torch.float32)
    channels = x.shape[1]
    std_t = _per_channel(std, channels, "std")
    if not bool((std_t > 0).all()):
        raise ValueError(f"input std must be > 0, got {std}")
    return (x - _per_channel(mean, channels, "mean")) / std_t


def preprocess(pixels, model):
    """Pixels -> `model`'s input, with the normalization its file states."""
    return normalize(pixels, model.input_mean, model.input_std)


def read_idx(path):
    """An IDX file (as Fashion-MNIST's, gzipped or plain) as a numpy array."""
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"'{path}' is not an IDX file of unsigned bytes (wrong magic number)")
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"'{path}' is truncated: {data.size} bytes for shape {shape}")
    return data.reshape(shape)


def load_fashion_mnist(split="test", data_dir="/usr/share/datasets/fashion-mnist", limit=0):
    """(images uint8 N x 1 x 28 x 28, labels int64 N) of Fashion-MNIST's split,
    the first `limit` only when limit > 0 (the order `zsq eval` uses)."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test', got '{split}'")

    def find(stem):
        for name in (stem + ".gz", stem):
            if os.path.exists(os.path.join(data_dir, name)):
                return os.path.join(data_dir, name)
        raise ValueError(f"Fashion-MNIST file '{stem}[.gz]' not found in '{data_dir}'")

    images = read_idx(find(f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(find(f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"Fashion-MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels")
    if limit > 0:
        images, labels = images[:limit], labels[:limit]
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.copy())
