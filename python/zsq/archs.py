"""The model zoo, written once against a layer factory as in the C++
(models/resnet.cpp, models/mobilenet_v2.cpp, models/zoo.cpp), so that the
same definition builds the FP32 teacher, the fake-quantized student and the
integer model with the C++ module names:

* CIFAR-style ResNet-8/20/32/56: 3x3 stem (stride 1), three stages of basic
  blocks at widths w, 2w, 4w, projection shortcuts (1x1 conv + BN,
  "downsample.0/1") where the shape changes, global average pool, `fc`.
* torchvision ResNet-18/50 (7x7 stride-2 stem, 3x3 max pool, stride on the
  bottleneck's 3x3 conv) and MobileNetV2 (`features.*`, `classifier.1`).

A factory has conv2d(in, out, kernel, stride, padding, groups, bias, role),
linear(in, out, bias, role) and batch_norm(channels); role is config.FIRST,
MIDDLE or LAST.
"""
import torch.nn.functional as F
from torch import nn

from .config import FIRST, LAST, MIDDLE

ARCHS = ("resnet8", "resnet20", "resnet32", "resnet56", "resnet18", "resnet50", "mobilenet_v2")
CIFAR_ARCHS = {"resnet8": 8, "resnet20": 20, "resnet32": 32, "resnet56": 56}


class Fp32Factory:
    """Plain FP32 layers (the teacher)."""

    def conv2d(self, cin, cout, kernel, stride=1, padding=0, groups=1, bias=False, role=MIDDLE):
        return nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=bias)

    def linear(self, cin, cout, bias=True, role=LAST):
        return nn.Linear(cin, cout, bias=bias)

    def batch_norm(self, channels):
        return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)


def _conv(f, cin, cout, kernel, stride, role=MIDDLE):
    return f.conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, role=role)


def _downsample(f, cin, cout, stride):
    return nn.Sequential(_conv(f, cin, cout, 1, stride), f.batch_norm(cout))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and an identity or projection shortcut."""
    expansion = 1

    def __init__(self, f, cin, planes, stride):
        super().__init__()
        self.conv1 = _conv(f, cin, planes, 3, stride)
        self.bn1 = f.batch_norm(planes)
        self.conv2 = _conv(f, planes, planes, 3, 1)
        self.bn2 = f.batch_norm(planes)
        self.downsample = _downsample(f, cin, planes, stride) if stride != 1 or cin != planes else None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    """1x1, 3x3 (strided), 1x1 convolutions (ResNet v1.5), expansion 4."""
    expansion = 4

    def __init__(self, f, cin, planes, stride):
        super().__init__()
        self.conv1 = _conv(f, cin, planes, 1, 1)
        self.bn1 = f.batch_norm(planes)
        self.conv2 = _conv(f, planes, planes, 3, stride)
        self.bn2 = f.batch_norm(planes)
        self.conv3 = _conv(f, planes, planes * 4, 1, 1)
        self.bn3 = f.batch_norm(planes * 4)
        needs = stride != 1 or cin != planes * 4
        self.downsample = _downsample(f, cin, planes * 4, stride) if needs else None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


def _stage(f, block, cin, planes, blocks, stride):
    layers = []
    for i in range(blocks):
        layers.append(block(f, cin, planes, stride if i == 0 else 1))
        cin = planes * block.expansion
    return nn.Sequential(*layers), cin


class Classifier(nn.Module):
    """An image classifier: normalized N x C x H x W in, N x classes logits out.

    Attributes set by the loaders: arch, num_classes, input_shape,
    input_mean, input_std, width (and, for students, bits / model_bits).
    """

    def forward(self, x):
        """Logits: head(penultimate(x))."""
        return self.head(self.penultimate(x))

    def penultimate(self, x):
        """The features after global pooling, N x D (C++ `features`)."""
        raise NotImplementedError

    def head(self, features):
        """The classifier on the pooled features: N x D -> N x classes."""
        raise NotImplementedError

    def set_bits(self, bits):
        """Switches a student to model bit-width `bits` (one of `model_bits`)."""
        from .quant import set_bits
        return set_bits(self, bits)

    def preprocess(self, images):
        """Pixels (uint8 0-255, or float in [0, 1]) -> this model's normalized input."""
        from .data import normalize
        return normalize(images, self.input_mean, self.input_std)


class CifarResNet(Classifier):
    """CIFAR-style ResNet-(6n+2) with base width `width`."""

    def __init__(self, depth, in_channels, num_classes, width, f):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n, w = (depth - 2) // 6, width
        self.conv1 = f.conv2d(in_channels, w, 3, stride=1, padding=1, role=FIRST)
        self.bn1 = f.batch_norm(w)
        self.layer1, cin = _stage(f, BasicBlock, w, w, n, 1)
        self.layer2, cin = _stage(f, BasicBlock, cin, 2 * w, n, 2)
        self.layer3, cin = _stage(f, BasicBlock, cin, 4 * w, n, 2)
        self.fc = f.linear(cin, num_classes, bias=True, role=LAST)

    def penultimate(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)

    def head(self, features):
        return self.fc(features)


class TorchvisionResNet(Classifier):
    """torchvision's ResNet-18 (basic blocks) or ResNet-50 (bottlenecks)."""

    def __init__(self, block, blocks, in_channels, num_classes, f):
        super().__init__()
        self.conv1 = f.conv2d(in_channels, 64, 7, stride=2, padding=3, role=FIRST)
        self.bn1 = f.batch_norm(64)
        self.layer1, cin = _stage(f, block, 64, 64, blocks[0], 1)
        self.layer2, cin = _stage(f, block, cin, 128, blocks[1], 2)
        self.layer3, cin = _stage(f, block, cin, 256, blocks[2], 2)
        self.layer4, cin = _stage(f, block, cin, 512, blocks[3], 2)
        self.fc = f.linear(cin, num_classes, bias=True, role=LAST)

    def penultimate(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x, 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)

    def head(self, features):
        return self.fc(features)


def _make_divisible(v, divisor=8):
    out = max(divisor, int(v + divisor / 2.0) // divisor * divisor)
    return out + divisor if out < 0.9 * v else out


def _conv_bn_relu6(f, cin, cout, kernel, stride, groups, role=MIDDLE):
    conv = f.conv2d(cin, cout, kernel, stride=stride, padding=(kernel - 1) // 2, groups=groups, role=role)
    return nn.Sequential(conv, f.batch_norm(cout), nn.ReLU6())


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand] -> 3x3 depthwise -> 1x1 project (+ residual)."""

    def __init__(self, f, cin, cout, stride, expand_ratio):
        super().__init__()
        self.use_residual = stride == 1 and cin == cout
        hidden = int(round(cin * float(expand_ratio)))
        layers = [_conv_bn_relu6(f, cin, hidden, 1, 1, 1)] if expand_ratio != 1 else []
        layers.append(_conv_bn_relu6(f, hidden, hidden, 3, stride, hidden))
        layers.append(f.conv2d(hidden, cout, 1, stride=1, padding=0, role=MIDDLE))
        layers.append(f.batch_norm(cout))
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        y = self.conv(x)
        return x + y if self.use_residual else y


class MobileNetV2(Classifier):
    """MobileNetV2, width multiplier 1.0, torchvision's module names."""
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, in_channels, num_classes, f):
        super().__init__()
        cin, last = _make_divisible(32), _make_divisible(1280)
        layers = [_conv_bn_relu6(f, in_channels, cin, 3, 2, 1, role=FIRST)]
        for t, c, n, s in self.SETTINGS:
            cout = _make_divisible(float(c))
            for i in range(n):
                layers.append(InvertedResidual(f, cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(_conv_bn_relu6(f, cin, last, 1, 1, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), f.linear(last, num_classes, bias=True, role=LAST))

    def penultimate(self, x):
        return F.adaptive_avg_pool2d(self.features(x), (1, 1)).flatten(1)

    def head(self, features):
        return self.classifier(features)


def build(arch, in_channels, num_classes, width=16, factory=None):
    """Builds `arch` (one of ARCHS) with `factory` (default: FP32 layers)."""
    factory = factory or Fp32Factory()
    if in_channels <= 0:
        raise ValueError(f"in_channels must be > 0, got {in_channels}")
    if num_classes <= 1:
        raise ValueError(f"num_classes must be > 1, got {num_classes}")
    if not 1 <= width <= 1024:
        raise ValueError(f"width must be in [1, 1024], got {width}")
    if arch in CIFAR_ARCHS:
        return CifarResNet(CIFAR_ARCHS[arch], in_channels, num_classes, width, factory)
    if arch == "resnet18":
        return TorchvisionResNet(BasicBlock, (2, 2, 2, 2), in_channels, num_classes, factory)
    if arch == "resnet50":
        return TorchvisionResNet(Bottleneck, (3, 4, 6, 3), in_channels, num_classes, factory)
    if arch == "mobilenet_v2":
        return MobileNetV2(in_channels, num_classes, factory)
    raise ValueError(f"unknown architecture '{arch}'; known: {', '.join(ARCHS)}")
