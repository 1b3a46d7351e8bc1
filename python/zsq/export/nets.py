"""The zoo's forward passes (python/zsq/archs.py) as ONNX nodes, module by
module, for the FP32 teacher and for the integer models alike: the layers
are emitted by layers.py, ReLU (Relu), ReLU6 (Clip 0..6), residual adds
(Add, in float, after the layers' dequantized outputs as in the integer
path), max pooling, global average pooling and Flatten stay float.
"""
import numpy as np
from torch import nn

from .. import archs
from ..integer import IntLayer
from . import layers
from .graph import ExportError


class Emitter:
    """Walks a loaded zsq module and adds its nodes to a Graph."""

    def __init__(self, graph, weight_mode, form):
        self.g, self.mode, self.form = graph, weight_mode, form

    def module(self, m, x, name):
        """The nodes of module `m` (named `name`) applied to tensor `x`; returns the output tensor."""
        if isinstance(m, IntLayer):
            return layers.integer_layer(self.g, m, x, name, self.mode, self.form)
        if isinstance(m, nn.Conv2d):
            return layers.fp32_conv(self.g, m, x, name)
        if isinstance(m, nn.BatchNorm2d):
            return layers.fp32_batch_norm(self.g, m, x, name)
        if isinstance(m, nn.Linear):
            return layers.fp32_linear(self.g, m, x, name)
        if isinstance(m, (nn.Identity, nn.Dropout)):  # folded BatchNorm; dropout in eval mode
            return x
        if isinstance(m, nn.ReLU):
            return self.relu(x, name)
        if isinstance(m, nn.ReLU6):
            return self.relu6(x, name)
        if isinstance(m, nn.Sequential):
            for child_name, child in m.named_children():
                x = self.module(child, x, f"{name}.{child_name}" if name else child_name)
            return x
        if isinstance(m, (archs.BasicBlock, archs.Bottleneck)):
            return self.residual_block(m, x, name)
        if isinstance(m, archs.InvertedResidual):
            y = self.module(m.conv, x, name + ".conv")
            return self.g.node("Add", [x, y], name + ".add") if m.use_residual else y
        raise ExportError(f"cannot export module '{name}' ({type(m).__name__})")

    def relu(self, x, name):
        return self.g.node("Relu", [x], name + ".relu")

    def relu6(self, x, name):
        low = self.g.const(name + ".min", np.array(0.0, dtype=np.float32))
        high = self.g.const(name + ".max", np.array(6.0, dtype=np.float32))
        return self.g.node("Clip", [x, low, high], name + ".relu6")

    def residual_block(self, block, x, name):
        """BasicBlock / Bottleneck: relu(bn(conv)) ..., then relu(out + shortcut(x))."""
        out = x
        convs = ("conv1", "conv2", "conv3") if isinstance(block, archs.Bottleneck) else ("conv1", "conv2")
        for i, conv in enumerate(convs, start=1):
            out = self.module(getattr(block, conv), out, f"{name}.{conv}")
            out = self.module(getattr(block, f"bn{i}"), out, f"{name}.bn{i}")
            if i < len(convs):
                out = self.relu(out, f"{name}.{conv}")
        shortcut = self.module(block.downsample, x, name + ".downsample") if block.downsample is not None else x
        return self.relu(self.g.node("Add", [out, shortcut], name + ".add"), name)

    def pooled(self, x, name):
        pooled = self.g.node("GlobalAveragePool", [x], name + ".pool")
        return self.g.node("Flatten", [pooled], name + ".flatten", axis=1)

    def classifier(self, model, x):
        """The whole network (a zsq Classifier) on the graph input `x`; returns the logits tensor."""
        if isinstance(model, (archs.CifarResNet, archs.TorchvisionResNet)):
            x = self.relu(self.module(model.bn1, self.module(model.conv1, x, "conv1"), "bn1"), "conv1")
            stages = ["layer1", "layer2", "layer3"]
            if isinstance(model, archs.TorchvisionResNet):
                x = self.g.node("MaxPool", [x], "maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
                stages.append("layer4")
            for stage in stages:
                x = self.module(getattr(model, stage), x, stage)
            return self.module(model.fc, self.pooled(x, "features"), "fc")
        if isinstance(model, archs.MobileNetV2):
            x = self.module(model.features, x, "features")
            return self.module(model.classifier, self.pooled(x, "features"), "classifier")
        raise ExportError(f"cannot export a {type(model).__name__}")
