"""HDF5 access shared by the loaders: opening with clear errors, attributes,
tensors by module path, checked state loading and atomic writes.

Every problem with a file is a ValueError whose message names the file, as
the C++ loaders' messages do.
"""
import os

import h5py
import numpy as np
import torch


def open_h5(path):
    """Opens `path` read-only; ValueError when it is missing or not HDF5."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"file not found: '{path}'")
    if os.path.isdir(path):
        raise ValueError(f"'{path}' is a folder, not a file")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"'{path}' is not an HDF5 file (or it is damaged): {err}") from None


def _attr(file, key):
    return file.attrs[key] if key in file.attrs else None


def attr_str(file, key):
    """A string attribute, or None when absent."""
    value = _attr(file, key)
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(-1)[0]
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)
    if not isinstance(value, str):
        raise ValueError(f"'{file.filename}': attribute '{key}' should be a string, is {value!r}")
    return value


def attr_ints(file, key):
    """An integer attribute as a list of ints, or None when absent."""
    value = _attr(file, key)
    if value is None:
        return None
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"'{file.filename}': attribute '{key}' should hold integers, holds {array.dtype}")
    return [int(v) for v in array.reshape(-1)]


def attr_int(file, key):
    """A one-integer attribute, or None when absent."""
    values = attr_ints(file, key)
    if values is None:
        return None
    if len(values) != 1:
        raise ValueError(f"'{file.filename}': attribute '{key}' should be one integer, has {len(values)}")
    return values[0]


def attr_floats(file, key):
    """A numeric attribute as a list of Python floats (double), or None when absent."""
    value = _attr(file, key)
    if value is None:
        return None
    array = np.asarray(value)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"'{file.filename}': attribute '{key}' should hold numbers, holds {array.dtype}")
    return [float(v) for v in array.reshape(-1)]


def dataset_names(file):
    """Every dataset of the file by its full name (groups joined with '/')."""
    names = []
    file.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


def read_tensor(file, name):
    """Dataset `name` as a CPU tensor (0-dim for scalars); ValueError when missing."""
    if name not in file or not isinstance(file[name], h5py.Dataset):
        raise ValueError(f"'{file.filename}' lacks the tensor '{name}'")
    array = np.asarray(file[name][()])
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(array).reshape(array.shape))


def load_state(module, file, ignore_groups=()):
    """Copies the file's tensors into `module` by state_dict name.

    Every tensor of the module must be in the file with the same shape, and
    every dataset of the file must belong to the module (datasets under a
    group in `ignore_groups`, e.g. "train/", are skipped). One ValueError
    lists every mismatch, as the C++ load_state does.
    """
    state = module.state_dict(keep_vars=True)
    problems = []
    for name, tensor in state.items():
        if name not in file:
            problems.append(f"missing tensor '{name}'")
        elif tuple(file[name].shape) != tuple(tensor.shape):
            problems.append(f"'{name}' has shape {list(file[name].shape)} in the file, "
                            f"the model expects {list(tensor.shape)}")
    for name in dataset_names(file):
        if name not in state and not any(name.startswith(g) for g in ignore_groups):
            problems.append(f"unexpected tensor '{name}'")
    if problems:
        shown = "\n  ".join(problems[:12])
        more = f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else ""
        raise ValueError(f"'{file.filename}' does not match the model ({len(problems)} problem"
                         f"{'s' if len(problems) > 1 else ''}):\n  {shown}{more}")
    with torch.no_grad():
        for name, tensor in state.items():
            value = read_tensor(file, name)
            if tensor.is_floating_point() and not value.is_floating_point() and value.dtype != torch.uint8:
                raise ValueError(f"'{file.filename}': '{name}' holds integers, the model expects floating point")
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise ValueError(f"'{file.filename}': '{name}' holds values that are not finite (NaN or inf)")
            tensor.copy_(value.to(tensor.dtype))


def unpack_codes(packed, bits, count):
    """Signed `bits`-bit codes packed by zsq (C++ quant::pack_codes): value + 2^(bits-1), least
    significant bit first, one code after another, numpy's packbits(bitorder='little')."""
    flat = np.unpackbits(np.asarray(packed, dtype=np.uint8), bitorder="little")
    if len(packed) != (count * bits + 7) // 8:
        raise ValueError(f"{len(packed)} bytes cannot hold exactly {count} codes of {bits} bits")
    planes = flat[:count * bits].reshape(count, bits).astype(np.int64)
    return (planes << np.arange(bits, dtype=np.int64)).sum(1) - (1 << (bits - 1))


def load_packed_state(module, file):
    """load_state for a version-2 zsq-fixed file: each `*.weight_codes` buffer from its bit-packed
    `*.weight_codes_packed` and `*.weight_code_bits` (C++ load_packed_state)."""
    state = module.state_dict(keep_vars=True)
    expected = set()
    with torch.no_grad():
        for name, tensor in state.items():
            if not name.endswith("weight_codes"):
                expected.add(name)
                value = read_tensor(file, name)
                if tuple(value.shape) != tuple(tensor.shape):
                    raise ValueError(f"'{file.filename}': '{name}' has shape {list(value.shape)}, "
                                     f"the model expects {list(tensor.shape)}")
                if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                    raise ValueError(f"'{file.filename}': '{name}' holds values that are not finite (NaN or inf)")
                tensor.copy_(value.to(tensor.dtype))
                continue
            prefix = name[:-len("weight_codes")]
            expected.update((prefix + "weight_codes_packed", prefix + "weight_code_bits"))
            bits = int(read_tensor(file, prefix + "weight_code_bits"))
            if not 2 <= bits <= 16:
                raise ValueError(f"'{file.filename}': '{prefix}weight_code_bits' is {bits}; expected 2..16")
            try:
                codes = unpack_codes(file[prefix + "weight_codes_packed"][()], bits, tensor.numel())
            except (KeyError, ValueError) as err:
                raise ValueError(f"'{file.filename}': '{prefix}weight_codes_packed': {err}") from None
            tensor.copy_(torch.from_numpy(codes).reshape(tensor.shape).to(tensor.dtype))
    for name in dataset_names(file):
        if name not in expected:
            raise ValueError(f"'{file.filename}' holds an unexpected tensor '{name}'")


def check_output(path):
    """(path, folder) of an output file that can be written: not a folder, in
    a folder that exists and is writable; a ValueError naming it otherwise."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    if os.path.isdir(path):
        raise ValueError(f"output '{path}' is a folder; give a file name")
    if not os.path.isdir(folder):
        raise ValueError(f"output folder '{folder}' does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"output folder '{folder}' is not writable")
    return path, folder


def atomic_replace(path, write):
    """Writes `path` atomically: `write(tmp)` writes a temporary file in the
    same folder (".NAME.tmp.PID", as the C++ writer), which is synced and
    renamed over `path`; on failure it is removed and the old file stays."""
    path, folder = check_output(path)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write(path, fill):
    """Writes an HDF5 file atomically (atomic_replace): `fill(h5py.File)`
    fills the temporary file."""
    def write(tmp):
        with h5py.File(tmp, "w") as file:
            fill(file)
    atomic_replace(path, write)
