"""What a ZSQ file says about itself: the root attributes of model files
(`ModelMeta`) and the once-for-all configuration of student, fixed and
vertical-layered files (`StudentConfig`), read exactly as the C++ does
(framework/model_file.cpp, models/extract.cpp `read_extracted`,
models/quant_factory.cpp `StudentConfig`).
"""
from dataclasses import dataclass, field

from . import files

MODEL_FORMAT = "zsq-model"
STUDENT_FORMAT = "zsq-student"
FIXED_FORMAT = "zsq-fixed"
VERTICAL_FORMAT = "zsq-vertical"
MODEL_FORMAT_VERSION = 1
EXTRACT_FORMAT_VERSION = 2  # 2: fixed files hold bit-packed codes
SAME_BITS = 0  # first/last layer or input bits: the middle layers' bits ("same")

FIRST, MIDDLE, LAST = "first", "middle", "last"  # layer roles


@dataclass
class ModelMeta:
    """Root attributes of a ZSQ file; missing ones stay empty / zero."""
    format: str = ""
    version: int = 0
    arch: str = ""
    num_classes: int = 0
    input_shape: list = field(default_factory=list)
    input_mean: list = field(default_factory=list)
    input_std: list = field(default_factory=list)
    width: int = 0
    precision: str = ""
    recipe: str = ""


def read_meta(file):
    """The root attributes of an open file (no format check)."""
    meta = ModelMeta(
        format=files.attr_str(file, "format") or "",
        version=files.attr_int(file, "version") or 0,
        arch=files.attr_str(file, "arch") or "",
        num_classes=files.attr_int(file, "num_classes") or 0,
        input_shape=files.attr_ints(file, "input_shape") or [],
        input_mean=files.attr_floats(file, "input_mean") or [],
        input_std=files.attr_floats(file, "input_std") or [],
        width=files.attr_int(file, "width") or 0,
        precision=files.attr_str(file, "precision") or "",
        recipe=files.attr_str(file, "recipe") or "",
    )
    if meta.input_shape and len(meta.input_shape) != 3:
        raise ValueError(f"'{file.filename}': attribute input_shape should be (C, H, W), "
                         f"has {len(meta.input_shape)} values")
    return meta


def bits_text(bits):
    """[2, 3, 4, 8] -> "2,3,4,8"."""
    return ",".join(str(b) for b in bits)


@dataclass
class StudentConfig:
    """The bit-widths of a once-for-all student (C++ models::StudentConfig)."""
    bits: list
    wbits: list
    abits: list
    first_bits: int = 8
    last_bits: int = 8
    input_bits: int = SAME_BITS
    top_bits: int = 8
    nesting: str = "shift"
    input_range: list = field(default_factory=list)  # [lo, hi] or empty (calibrated)
    input_border: bool = False  # AQuant's rounding borders (act_border) on every layer's input (zsq ptq --border)

    def check(self, path):
        """ValueError naming `path` for lists or values out of range."""
        def bad(message):
            raise ValueError(f"'{path}': {message}")
        if not self.bits:
            bad("the student has no bit-widths (attribute model_bits)")
        if len(self.wbits) != len(self.bits) or len(self.abits) != len(self.bits):
            bad(f"model_bits ({bits_text(self.bits)}), wbits ({bits_text(self.wbits)}) and abits "
                f"({bits_text(self.abits)}) must have the same length")
        for b in (self.first_bits, self.last_bits, self.input_bits):
            if b != SAME_BITS and not 2 <= b <= 16:
                bad(f"first/last layer and input bits must be in [2, 16] or 0 ('same'), got {b}")
        if not 2 <= self.top_bits <= 16:
            bad(f"top_bits must be in [2, 16], got {self.top_bits}")
        for b in self.bits + self.wbits:
            if not 2 <= b <= self.top_bits:
                bad(f"bits must be in [2, top bits = {self.top_bits}], got {b}")
        for b in self.abits:
            if not 2 <= b <= 16:
                bad(f"abits must be in [2, 16], got {b}")
        if len(set(self.bits)) != len(self.bits):
            bad(f"a bit-width is listed twice in model_bits ({bits_text(self.bits)})")
        if self.nesting not in ("shift", "round"):
            bad(f"unknown nesting '{self.nesting}': expected 'shift' or 'round'")
        if self.input_range and len(self.input_range) != 2:
            bad(f"attribute input_range should hold [lo, hi], has {len(self.input_range)} values")

    def index_of(self, bits, path):
        """Position of model bit-width `bits`; ValueError when the model lacks it."""
        if bits not in self.bits:
            raise ValueError(f"'{path}': bit-width {bits} is not one of the model's ({bits_text(self.bits)})")
        return self.bits.index(bits)

    def _role_bits(self, role, middle):
        fixed = self.first_bits if role == FIRST else self.last_bits if role == LAST else SAME_BITS
        return list(middle) if fixed == SAME_BITS else [fixed] * len(self.bits)

    def layer_wbits(self, role):
        """Weight bits of a layer of `role` at each model bit-width."""
        return self._role_bits(role, self.wbits)

    def layer_abits(self, role):
        """Input (activation) bits of a layer of `role` at each model bit-width."""
        if role == FIRST and self.input_bits != SAME_BITS:
            return [self.input_bits] * len(self.bits)
        return self._role_bits(role, self.abits)

    def layer_top_bits(self, role):
        """Precision of a layer's stored weight codes: at least its largest weight bits."""
        return max(self.top_bits, max(self.layer_wbits(role)))


def _need(value, file, key):
    if value is None:
        raise ValueError(f"'{file.filename}' lacks the attribute '{key}'")
    return value


def read_student_config(file):
    """The StudentConfig of a zsq-student, zsq-fixed or zsq-vertical file."""
    first_last = _need(files.attr_ints(file, "first_last_bits"), file, "first_last_bits")
    if len(first_last) not in (1, 2):
        raise ValueError(f"'{file.filename}': attribute 'first_last_bits' should hold one or two integers, "
                         f"has {len(first_last)}")
    input_bits = files.attr_int(file, "input_bits")
    config = StudentConfig(
        bits=_need(files.attr_ints(file, "model_bits"), file, "model_bits"),
        wbits=_need(files.attr_ints(file, "wbits"), file, "wbits"),
        abits=_need(files.attr_ints(file, "abits"), file, "abits"),
        first_bits=first_last[0],
        last_bits=first_last[-1],
        input_bits=SAME_BITS if input_bits is None else input_bits,
        top_bits=_need(files.attr_int(file, "top_bits"), file, "top_bits"),
        nesting=files.attr_str(file, "nesting") or "shift",
        input_range=files.attr_floats(file, "input_range") or [],
        input_border=bool(files.attr_int(file, "input_border") or 0),
    )
    config.check(file.filename)
    return config


def read_quantized_meta(file, formats):
    """Meta and StudentConfig of a quantized file whose format must be in `formats`."""
    meta = read_meta(file)
    if meta.format not in formats:
        raise ValueError(f"'{file.filename}' is a '{meta.format or 'plain HDF5'}' file, expected format "
                         + " or ".join(f"'{f}'" for f in formats))
    if not 1 <= meta.version <= EXTRACT_FORMAT_VERSION:
        raise ValueError(f"'{file.filename}' has format version {meta.version}; "
                         f"this package reads versions 1..{EXTRACT_FORMAT_VERSION}")
    if not meta.arch or meta.num_classes <= 0 or len(meta.input_shape) != 3:
        raise ValueError(f"'{file.filename}' lacks arch, num_classes or input_shape")
    return meta, read_student_config(file)
