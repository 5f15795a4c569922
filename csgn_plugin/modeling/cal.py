"""CAL's image model (Gu et al., CVPR 2022), as its authors' code, Simple-CCReID, builds it.

A backbone's last feature map -> max pooling and average pooling, concatenated -> BatchNorm1d
(weight N(1, 0.02), bias 0; trained) = the feature; an identity classifier on it: a linear layer
(weight N(0, 0.001), bias 0) for the cross-entropy recipes, a normalised one (cosines, for
CosFace) otherwise (``models/img_resnet.py``, ``models/utils/pooling.py``,
``models/classifier.py``). CAL's clothes classifier, a :class:`NormalizedClassifier` over the
training split's outfits, is a training-only head: the CAL objective owns it
(``losses.objective.CALObjective``), so that a trained model, its checkpoint's spec and evaluation
hold only what inference needs.

Backbones (:data:`CAL_MODELS`, the registered torchreid names):

* ``cal_resnet50``: torchvision's ResNet-50 without its pooling and fc, the first block of layer 4
  at stride 1 (its 3x3 conv and its downsampling shortcut): a 24x12 map of 2048 channels at
  384x192, a 4096-d feature;
* ``cal_osnet_x0_25``: torchreid's OSNet x0.25 up to conv5 (128 channels, a 256-d feature), the
  same head on a backbone small enough for the CPU study.

Train mode returns ``{"features": BN feature, "logits": identity logits}``; eval mode Simple-
CCReID's test feature (``test.py``): the BN features of the image and of its mirror image,
summed, L2-normalised. ``pretrained`` loads ImageNet weights (torchvision's ResNet-50 V1 weights,
the ``pretrained=True`` weights of the reference; torchreid's OSNet weights), downloaded into
their caches (a run fetches them first, ``builders.resolve_weights``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..compat import torchreid_api

__all__ = ["CAL_MODELS", "IDENTITY_CLASSIFIERS", "CALModel", "NormalizedClassifier"]

# registered name -> backbone
CAL_MODELS = {"cal_resnet50": "resnet50", "cal_osnet_x0_25": "osnet_x0_25"}
# 'linear' for the cross-entropy identity losses, 'normalized' (cosines) for CosFace
IDENTITY_CLASSIFIERS = ("linear", "normalized")


class NormalizedClassifier(nn.Module):
    """Cosines between the L2-normalised input and L2-normalised class weights, no bias.

    Weights: each row uniform in [-1, 1], then rescaled to norm 1 (to within 1e-7 relative,
    through ``renorm`` to 1e-5 and x1e5, Simple-CCReID's initialisation)."""

    def __init__(self, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, feature_dim))
        with torch.no_grad():
            self.weight.uniform_(-1, 1).renorm_(2, 0, 1e-5).mul_(1e5)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(features, p=2, dim=1), F.normalize(self.weight, p=2, dim=1))


def _resnet50(pretrained: bool) -> tuple[nn.Module, int]:
    import torchvision

    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V1 if pretrained else None
    net = torchvision.models.resnet50(weights=weights)
    net.layer4[0].conv2.stride = (1, 1)
    net.layer4[0].downsample[0].stride = (1, 1)
    return nn.Sequential(*list(net.children())[:-2]), 2048


def _osnet_x0_25(pretrained: bool) -> tuple[nn.Module, int]:
    net = torchreid_api().models.build_model("osnet_x0_25", 1, pretrained=pretrained)
    # OSNet.featuremaps, without the pooling, fc and classifier this head replaces
    parts = [net.conv1, net.maxpool, net.conv2, net.conv3, net.conv4, net.conv5]
    return nn.Sequential(*parts), net.conv5.conv.out_channels


_BACKBONES = {"resnet50": _resnet50, "osnet_x0_25": _osnet_x0_25}


def build_backbone(name: str, pretrained: bool) -> tuple[nn.Module, int]:
    """``(module: images -> feature map, channels)`` of a CAL model's backbone."""
    return _BACKBONES[CAL_MODELS[name]](pretrained)


class CALModel(nn.Module):
    """Backbone, max + average pooling, BN feature, identity classifier (module docstring)."""

    loss_recipe = "cal"

    def __init__(
        self, name: str, num_classes: int, identity_classifier: str, pretrained: bool
    ) -> None:
        super().__init__()
        if name not in CAL_MODELS:
            raise ValueError(f"unknown CAL model '{name}'; known: {sorted(CAL_MODELS)}")
        if identity_classifier not in IDENTITY_CLASSIFIERS:
            raise ValueError(
                f"identity_classifier must be one of {IDENTITY_CLASSIFIERS}, got "
                f"'{identity_classifier}'"
            )
        self.name = name
        self.num_classes = num_classes
        self.identity_classifier = identity_classifier
        self.backbone, channels = build_backbone(name, pretrained)
        self.feature_dim = 2 * channels
        self.bn = nn.BatchNorm1d(self.feature_dim)
        nn.init.normal_(self.bn.weight, 1.0, 0.02)
        nn.init.zeros_(self.bn.bias)
        if identity_classifier == "linear":
            self.classifier: nn.Module = nn.Linear(self.feature_dim, num_classes)
            nn.init.normal_(self.classifier.weight, std=0.001)
            nn.init.zeros_(self.classifier.bias)
        else:
            self.classifier = NormalizedClassifier(self.feature_dim, num_classes)

    def feature(self, imgs: torch.Tensor) -> torch.Tensor:
        """The BN feature: max and average pooling of the map, concatenated, batch-normalised."""
        maps = self.backbone(imgs)
        pooled = torch.cat([F.adaptive_max_pool2d(maps, 1), F.adaptive_avg_pool2d(maps, 1)], 1)
        return self.bn(pooled.flatten(1))

    def forward(self, imgs: torch.Tensor) -> Any:
        if self.training:
            features = self.feature(imgs)
            return {"features": features, "logits": self.classifier(features)}
        summed = self.feature(imgs) + self.feature(imgs.flip(3))
        return F.normalize(summed, p=2, dim=1)

    def architecture(self) -> dict[str, Any]:
        """What rebuilds this model besides its name and classes (a checkpoint's spec)."""
        return {"identity_classifier": self.identity_classifier}
