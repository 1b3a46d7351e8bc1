"""Python access to ZSQ files (pure Python on h5py, numpy and torch).

    import zsq
    teacher = zsq.load_teacher("teacher.h5")             # FP32 model file
    student = zsq.load_student("run/checkpoint.h5", 4)   # fake-quantized at 4 bits
    w4 = zsq.load_extracted("model-w4.h5")               # integer reference path
    logits = student(student.preprocess(pixels))         # pixels: uint8 or [0, 1]

Every loader returns a torch.nn.Module in eval mode whose parameter and
buffer names are the file's datasets, and whose forward takes normalized
images, as ZSQ's own forward does (the loader normalizes in `zsq eval`).
The numbers are the C++ binary's (see README, "Quantization semantics").
`save_teacher` writes a PyTorch classifier as a model file `zsq` reads.
Problems with a file raise ValueError naming the file.
"""
from .archs import ARCHS, Classifier, build
from .config import ModelMeta, StudentConfig
from .data import load_fashion_mnist, normalize, preprocess, read_idx
from .loaders import load_extracted, load_student, load_teacher, save_teacher
from .quant import set_bits

__all__ = [
    "ARCHS", "Classifier", "ModelMeta", "StudentConfig", "build", "load_extracted", "load_fashion_mnist",
    "load_student", "load_teacher", "normalize", "preprocess", "read_idx", "save_teacher", "set_bits",
]
