"""Folding BatchNorm into the convolution before it, for inference.

Why: in eval mode a BatchNorm is a per-channel affine map, so it can be merged
into the preceding convolution's weights and bias; the network then skips one
memory-bound pass over every feature map. ONNX Runtime and TensorRT do this on
their own; the torch backend did not (the MobileNet encoders of ``lite`` and
``base`` have a BatchNorm after each of their ~60 convolutions). The fold uses
``torch.nn.utils.fusion.fuse_conv_bn_eval`` (the maintained implementation);
this module only finds the pairs in the two layouts the encoders use.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from fsmde_core.models.resnet import BasicBlock, ResNetEncoder

#: Attribute pairs (conv, its BatchNorm) of torchvision-style ResNet stems and blocks.
NAMED_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every BatchNorm2d that directly follows a Conv2d into it, in place; returns how many.

    Pairs are adjacent items of an ``nn.Sequential`` (MobileNet's conv-BN-act,
    a ResNet downsample) or ``convN`` / ``bnN`` attributes of the ResNet stem and
    blocks (whose ``forward`` applies ``bnN`` right after ``convN``). The folded
    BatchNorm becomes ``nn.Identity`` so module names and ``forward`` stay as
    they are. Only for inference: a model in training mode is refused, since
    its BatchNorms still learn from batch statistics.
    """
    if model.training:
        raise ValueError("fold_batchnorm is for inference: call model.eval() first")
    folded = 0
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                conv, bn = module[i], module[i + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    module[i], module[i + 1] = fuse_conv_bn_eval(conv, bn), nn.Identity()
                    folded += 1
        if not isinstance(module, (BasicBlock, ResNetEncoder)):  # where bnN is known to follow convN
            continue
        for conv_name, bn_name in NAMED_PAIRS:
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
                folded += 1
    return folded
