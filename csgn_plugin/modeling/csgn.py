"""The assembled models: CSGN and the CLIP-ReID baselines, their torchreid factories.

One class, :class:`CSGN`, covers all three registered names:

=================  =======================  ===============  ==========================
name               image towers             prompt sets      text tower
=================  =======================  ===============  ==========================
``csgn``           ViT-B/16 + RN50 (fused)  rgb, gray        ViT-B/16 CLIP's (512-d)
``clipreid_vitb16`` ViT-B/16                rgb              ViT-B/16 CLIP's (512-d)
``clipreid_rn50``  RN50                     rgb              RN50 CLIP's (1024-d)
=================  =======================  ===============  ==========================

The forward contract the engine codes against:

* train mode: ``model(imgs, camids=None)`` -> ``{'logits': [Tensor(B, num_classes), ...],
  'features': [Tensor(B, D_i), ...], 'image_feature': Tensor(B, E)}``: one logit tensor per BN-neck
  classifier (parts ``global``, ``local``, ``proj`` that the model has), the features of the
  triplet loss (CLIP-ReID's layer-11 and layer-12 class tokens for a ViT, layer-3 and layer-4
  pooled maps for a ResNet alone, the pooled layer-4 map in CSGN, and the joint-space feature),
  and the joint-space feature ``image_feature`` that HSF compares with the prompt features;
* eval mode: ``model(imgs, camids=None)`` -> ``Tensor(B, feature_dim)`` (flip-averaged if
  enabled), torchreid's contract, so ``FeatureExtractor`` and torchreid's engines work unchanged.

A model knows its architecture: :meth:`CSGN.architecture` is every :class:`CSGNConfig` value
except the weight sources, with the activation resolved (what ``'auto'`` picked for the weights
the model was built from), so ``CSGN(config_from_architecture(arch), num_classes)`` rebuilds it
without a config file and without downloading anything. The architecture also travels inside
the state dict (torch's extra state, see :mod:`~csgn_plugin.modeling.architecture`): loading a
state dict into a model built differently raises a ``ValueError`` naming what differs, whoever
loads it (torchreid's ``load_pretrained_weights`` included).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Callable, Optional

import torch
from torch import nn

from .architecture import architecture_differences, decode_architecture, encode_architecture
from .clip_towers import ReIDResNet, ReIDViT, clip_text_parts
from .clip_weights import load_clip, transformer_activation
from .grayscale import to_grayscale
from .mdg import PromptLearner, TextEncoder
from .vss import VSS

__all__ = [
    "ARCHITECTURE_FIELDS",
    "CONFIG_KEYS",
    "CSGN",
    "CSGNConfig",
    "MODEL_FACTORIES",
    "MODEL_PRESETS",
    "QUICK_GELU_TO_ACTIVATION",
    "architecture_of",
    "build_model_from_config",
    "config_from_architecture",
    "config_from_cfg",
    "preset_config",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class CSGNConfig:
    """Everything a model build needs; mirrors the ``clip`` and ``csgn`` config sections."""

    vit_arch: str = "ViT-B-16"  # open_clip architecture of the ViT tower; '' = none
    resnet_arch: str = "RN50"  # open_clip architecture of the ResNet tower; '' = none
    vit_weights: str = ""  # '' random, an open_clip tag ('openai'), or a file
    resnet_weights: str = ""
    # transformer activation: 'quick_gelu', 'gelu', or 'auto' (decided by the weights; see
    # clip_weights.load_clip). A built model reports the resolved value in architecture().
    activation: str = "auto"
    image_size: tuple[int, int] = (256, 128)
    pixel_mean: tuple[float, ...] = IMAGENET_MEAN  # normalisation of the batches the model gets
    pixel_std: tuple[float, ...] = IMAGENET_STD
    vit_stride: int = 16
    resnet_last_stride: int = 1
    pos_interp: str = "bilinear"
    num_cameras: int = 0  # > 0: camera embedding (SIE) on the ViT
    sie_scale: float = 3.0
    modalities: tuple[str, ...] = ("rgb", "gray")
    prompt_template: str = "A photo of a {} person."
    prompt_n_ctx: int = 4
    prompt_init_std: float = 0.02
    fusion: str = "concat"
    fusion_heads: int = 8
    test_neck: str = "before"
    test_parts: tuple[str, ...] = ("auto",)
    test_flip: bool = False


# What each registered name means on top of CSGNConfig's defaults.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "csgn": {},
    "clipreid_vitb16": {"resnet_arch": "", "modalities": ("rgb",)},
    "clipreid_rn50": {"vit_arch": "", "modalities": ("rgb",)},
}
MODALITIES = ("rgb", "gray")
WEIGHT_FIELDS = ("vit_weights", "resnet_weights")
# What a trained model records about itself: everything but where its initial weights came from.
ARCHITECTURE_FIELDS = tuple(f.name for f in fields(CSGNConfig) if f.name not in WEIGHT_FIELDS)
# The project config key behind each field, for messages that tell the user what to set.
CONFIG_KEYS: dict[str, str] = {
    "vit_arch": "clip.vit_arch",
    "resnet_arch": "clip.resnet_arch / csgn.use_resnet",
    "vit_weights": "clip.vit_weights",
    "resnet_weights": "clip.resnet_weights",
    "activation": "clip.quick_gelu on|off",
    "image_size": "data.height / data.width",
    "pixel_mean": "data.norm_mean",
    "pixel_std": "data.norm_std",
    "vit_stride": "clip.vit_stride",
    "resnet_last_stride": "clip.resnet_last_stride",
    "pos_interp": "clip.pos_interp",
    "num_cameras": "clip.sie_camera",
    "sie_scale": "clip.sie_scale",
    "modalities": "csgn.modalities",
    "prompt_template": "csgn.prompt_template",
    "prompt_n_ctx": "csgn.prompt_n_ctx",
    "prompt_init_std": "csgn.prompt_init_std",
    "fusion": "csgn.fusion",
    "fusion_heads": "csgn.fusion_heads",
    "test_neck": "csgn.test_neck",
    "test_parts": "csgn.test_parts",
    "test_flip": "csgn.test_flip",
}
# clip.quick_gelu (user-facing) -> CSGNConfig.activation
QUICK_GELU_TO_ACTIVATION = {"auto": "auto", "on": "quick_gelu", "off": "gelu"}


class CSGN(nn.Module):
    """CSGN (CLIP-driven semantic guidance network) and, by configuration, CLIP-ReID.

    Sub-modules: ``vss`` (image side: ``vss.vit``, ``vss.resnet``, ``vss.fusion``,
    ``vss.necks``, ``vss.classifiers``), ``prompt_learner`` (MDG's per-identity prompt vectors
    ``prompt_learner.ctx.<modality>``) and ``text_encoder`` (CLIP's frozen text transformer).

    Which parameters train is set by :meth:`set_stage` through ``requires_grad``; the model is
    built in stage 2. The engine gives its optimizer the parameters with ``requires_grad``.
    """

    #: the stage-2 loss recipe (``losses.objective``) and the stages run before it
    loss_recipe = "clip_reid"
    training_stages = ("prompt",)
    #: stage-2 parameters by part (``csgn.<part>_lr_factor``), by name prefix
    PARAMETER_PARTS = {
        "vss.vit.": "vit",
        "vss.resnet.": "resnet",
        "vss.fusion.": "fusion",
        "vss.necks.": "head",
        "vss.classifiers.": "head",
    }

    def __init__(self, config: CSGNConfig, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not config.vit_arch and not config.resnet_arch:
            raise ValueError("a model needs clip.vit_arch or clip.resnet_arch (or both)")
        bad = [m for m in config.modalities if m not in MODALITIES]
        if bad or not config.modalities:
            raise ValueError(f"csgn.modalities must be a subset of {MODALITIES}, got {bad}")
        if config.num_cameras > 0 and not config.vit_arch:
            raise ValueError("camera embeddings (clip.sie_camera) need the ViT tower")
        if len(config.pixel_mean) != 3 or len(config.pixel_std) != 3:
            raise ValueError("pixel mean and std (data.norm_mean/norm_std) need 3 values each")
        self.config = config
        size = tuple(config.image_size)
        vit_clip = resnet_clip = None
        vit = resnet = None
        activation = config.activation
        if config.vit_arch:
            vit_clip = load_clip(config.vit_arch, config.vit_weights, activation)
            # The ResNet CLIP below contributes only its ModifiedResNet (no transformer) when a
            # ViT is present: give it the ViT's resolved activation rather than guess again.
            activation = transformer_activation(vit_clip.transformer)
            vit = ReIDViT(
                vit_clip.visual,
                size,
                config.vit_stride,
                config.pos_interp,
                config.num_cameras,
                config.sie_scale,
            )
        if config.resnet_arch:
            resnet_clip = load_clip(config.resnet_arch, config.resnet_weights, activation)
            # The attention pool maps into the RN50 CLIP's own space; with a ViT the joint
            # space is the ViT CLIP's, so the pool would only be dead weight.
            resnet = ReIDResNet(
                resnet_clip.visual,
                size,
                config.resnet_last_stride,
                config.pos_interp,
                keep_attnpool=vit is None,
            )
        self.vss = VSS(
            vit,
            resnet,
            num_classes,
            config.fusion,
            config.fusion_heads,
            config.test_neck,
            config.test_parts,
            config.test_flip,
        )
        text = clip_text_parts(vit_clip if vit_clip is not None else resnet_clip)
        self.prompt_learner = PromptLearner(
            text["token_embedding"],
            text["positional_embedding"].shape[0],
            num_classes,
            config.modalities,
            config.prompt_template,
            config.prompt_n_ctx,
            config.prompt_init_std,
        )
        self.text_encoder = TextEncoder(
            text["positional_embedding"],
            text["transformer"],
            text["ln_final"],
            text["text_projection"],
            text["attn_mask"],
        )
        if self.text_encoder.output_dim != self.vss.embed_dim:
            raise ValueError(
                f"text features ({self.text_encoder.output_dim}-d) and image features "
                f"({self.vss.embed_dim}-d) live in different spaces: check clip.*_arch"
            )
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std), persistent=False)
        self.num_classes = num_classes
        # what 'auto' resolved to: the activation of the transformers the model keeps
        self.activation = transformer_activation(self.text_encoder.transformer)
        self.stage = 0
        self.set_stage(2)

    def architecture(self) -> dict[str, Any]:
        """Every value needed to rebuild this model (num_classes aside), as JSON values."""
        return architecture_of(self.config, self.activation)

    def get_extra_state(self) -> torch.Tensor:
        # the architecture, as a fixed-size tensor that every "same shape" loader keeps
        return encode_architecture(self.architecture())

    def set_extra_state(self, state: Any) -> None:
        """Refuse weights trained with another architecture (num_classes may differ)."""
        differences = architecture_differences(
            decode_architecture(state), self.architecture(), CONFIG_KEYS
        )
        if differences:
            raise ValueError(
                "these weights were trained with another architecture than this model was built "
                f"with (checkpoint -> model): {'; '.join(differences)}. Build the model from the "
                "checkpoint instead: csgn_plugin.load_extractor(path), or "
                "csgn_plugin.modeling.build_model_from_spec(ModelSpec.from_dict("
                "checkpoint['model_spec']))"
            )

    @property
    def num_ids(self) -> int:
        """Number of identities that own prompts (= training identities = num_classes)."""
        return self.prompt_learner.num_ids

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.prompt_learner.modalities

    @property
    def feature_dim(self) -> int:
        """Dimension of the eval-mode (inference) feature."""
        return self.vss.feature_dim

    @property
    def embed_dim(self) -> int:
        """E: dimension of the joint image-text space (image_feature, prompt features)."""
        return self.vss.embed_dim

    def forward(self, imgs: torch.Tensor, camids: Optional[torch.Tensor] = None):  # noqa: ANN201
        """Train mode: dict of logits/features/image_feature; eval mode: inference feature.

        ``camids`` (LongTensor (B,)) feed the camera embedding when SIE is on; without them (as
        FeatureExtractor calls) no camera embedding is added.
        """
        return self.vss(imgs, camids)

    def to_grayscale(self, imgs: torch.Tensor) -> torch.Tensor:
        """Normalised RGB batch -> normalised 3-channel grayscale batch (BT.601 luma)."""
        return to_grayscale(imgs, self.pixel_mean, self.pixel_std)

    def prompt_image_features(
        self, imgs: torch.Tensor, camids: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """CLIP image features (B, E) that the prompt stage learns against.

        The ViT's projected class token (with a ViT) or the ResNet's attention pool (ResNet
        alone), computed in eval mode whatever the model's mode (as CLIP-ReID caches them).
        ``camids`` are accepted for the engine's uniform call and not used: the camera
        embedding is untrained in stage 1 and CLIP-ReID leaves it out there too.
        """
        self.vss.check_input(imgs)
        tower = self.vss.vit if self.vss.vit is not None else self.vss.resnet
        was_training = tower.training
        tower.eval()
        try:
            if self.vss.vit is not None:
                return self.vss.vit.project(self.vss.vit(imgs)[1])
            return self.vss.resnet.attnpool(self.vss.resnet(imgs)[1])
        finally:
            tower.train(was_training)

    def prompt_features(self, pids: torch.Tensor, modality: str) -> torch.Tensor:
        """Text features (len(pids), E) of these identities' prompts of one modality."""
        prompts = self.prompt_learner(pids, modality)
        return self.text_encoder(prompts, self.prompt_learner.eot_index)

    def parameter_part(self, name: str) -> Optional[str]:
        """The part a stage-2 parameter belongs to ('vit', 'resnet', 'fusion', 'head'), or None
        for the prompt learner and the text tower (trained in stage 1 or never)."""
        for prefix, part in self.PARAMETER_PARTS.items():
            if name.startswith(prefix):
                return part
        return None

    def set_stage(self, stage: int) -> None:
        """Set ``requires_grad`` for a training stage (CLIP-ReID's split).

        * stage 1: only the prompt vectors (``prompt_learner.ctx.*``) train;
        * stage 2: the whole image side (``vss.*``: towers, SIE, fusion, BN-neck weights,
          classifiers) trains, except the BN-neck biases (frozen, as CLIP-ReID's bottlenecks);
          the prompts and the text tower are frozen.
        """
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        for param in self.parameters():
            param.requires_grad_(False)
        if stage == 1:
            for param in self.prompt_learner.parameters():
                param.requires_grad_(True)
        else:
            for param in self.vss.parameters():
                param.requires_grad_(True)
            for neck in self.vss.necks.values():
                neck.bias.requires_grad_(False)
        self.stage = stage


def architecture_of(config: CSGNConfig, activation: str) -> dict[str, Any]:
    """The architecture dict (JSON values) of ``config`` built with the resolved ``activation``:
    every field but the weight sources; :func:`config_from_architecture` inverts it."""
    if activation not in ("quick_gelu", "gelu"):
        raise ValueError(
            f"activation must be resolved ('quick_gelu' or 'gelu'), got {activation!r}"
        )
    values = asdict(replace(config, activation=activation))
    return {
        key: list(values[key]) if isinstance(values[key], tuple) else values[key]
        for key in ARCHITECTURE_FIELDS
    }


def preset_config(name: str, **overrides: Any) -> CSGNConfig:
    """The :class:`CSGNConfig` of a registered name, with ``overrides`` applied."""
    if name not in MODEL_PRESETS:
        raise KeyError(f"unknown CSGN model '{name}'; known: {sorted(MODEL_PRESETS)}")
    known = {f.name for f in fields(CSGNConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown model options {unknown}; known: {sorted(known)}")
    return replace(CSGNConfig(), **{**MODEL_PRESETS[name], **overrides})


def _make_factory(name: str) -> Callable[..., CSGN]:
    def factory(
        num_classes: int,
        loss: str = "softmax",
        pretrained: bool = True,
        use_gpu: bool = True,
        **overrides: Any,
    ) -> CSGN:
        # loss and use_gpu are torchreid's factory arguments: the output dict serves every
        # loss, and the engine moves the model to its device.
        config = preset_config(name, **overrides)
        if pretrained:
            weights = {
                "vit_weights": "openai" if config.vit_arch else "",
                "resnet_weights": "openai" if config.resnet_arch else "",
            }
            weights = {k: getattr(config, k) or v for k, v in weights.items()}
            config = replace(config, **weights)
        return CSGN(config, num_classes)

    factory.__name__ = name
    factory.__doc__ = (
        f"torchreid factory of '{name}': the real-size model; pretrained=True loads OpenAI's "
        "CLIP weights through open_clip (network), pretrained=False builds random towers. "
        "Keyword overrides are CSGNConfig fields."
    )
    return factory


MODEL_FACTORIES: dict[str, Callable[..., CSGN]] = {n: _make_factory(n) for n in MODEL_PRESETS}


def _as_tuple(value: Any, key: str, length: Optional[int] = None) -> tuple:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(f"config key '{key}' must be a list, got {value!r}")
    if length is not None and len(value) != length:
        raise ValueError(f"config key '{key}' must have {length} values, got {list(value)}")
    return tuple(value)


def _activation_from_cfg(quick_gelu: Any) -> str:
    if quick_gelu not in QUICK_GELU_TO_ACTIVATION:
        raise ValueError(
            f"clip.quick_gelu must be one of {sorted(QUICK_GELU_TO_ACTIVATION)}, got {quick_gelu!r}"
        )
    return QUICK_GELU_TO_ACTIVATION[quick_gelu]


def _same_kind(value: Any, like: Any) -> bool:
    """``value`` (from JSON) is of the kind of ``like``: ints pass for floats, bools only for
    bools, lists for tuples (element by element)."""
    if isinstance(like, tuple):
        return isinstance(value, (list, tuple)) and all(_same_kind(v, like[0]) for v in value)
    if isinstance(like, bool) or isinstance(value, bool):
        return isinstance(like, bool) and isinstance(value, bool)
    if isinstance(like, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(like))


def config_from_architecture(
    architecture: dict[str, Any], where: str = "architecture"
) -> CSGNConfig:
    """The :class:`CSGNConfig` (no weight sources) of an :meth:`CSGN.architecture` dict.

    Every field must be present with a value of its type and the activation resolved
    (``'quick_gelu'`` or ``'gelu'``); errors name ``where`` and the key.
    """
    if not isinstance(architecture, dict):
        raise ValueError(f"{where} must be a dict, got {type(architecture).__name__}")
    missing = [k for k in ARCHITECTURE_FIELDS if k not in architecture]
    unknown = sorted(set(architecture) - set(ARCHITECTURE_FIELDS))
    if missing or unknown:
        raise ValueError(f"{where}: missing keys {missing}, unknown keys {unknown}")
    defaults = CSGNConfig()
    values: dict[str, Any] = {}
    for key in ARCHITECTURE_FIELDS:
        value, like = architecture[key], getattr(defaults, key)
        if not _same_kind(value, like):
            raise ValueError(f"{where}.{key}: expected a value like {like!r}, got {value!r}")
        values[key] = tuple(value) if isinstance(like, tuple) else type(like)(value)
    if values["activation"] not in ("quick_gelu", "gelu"):
        raise ValueError(
            f"{where}.activation must be resolved ('quick_gelu' or 'gelu'), got "
            f"{values['activation']!r}"
        )
    return CSGNConfig(**values)


def config_from_cfg(cfg: Any, num_cameras: int = 0) -> CSGNConfig:
    """Map the project config (``model``, ``data``, ``clip``, ``csgn``; duck-typed) to a
    :class:`CSGNConfig` for ``cfg.model.name``."""
    name = cfg.model.name
    clip, csgn = cfg.clip, cfg.csgn
    preset = MODEL_PRESETS[name]
    if clip.sie_camera and num_cameras < 1:
        raise ValueError("clip.sie_camera is on but the training set reports no cameras")
    options: dict[str, Any] = {
        "vit_arch": clip.vit_arch,
        "resnet_arch": clip.resnet_arch if csgn.use_resnet else "",
        "vit_weights": clip.vit_weights if cfg.model.pretrained else "",
        "resnet_weights": clip.resnet_weights if cfg.model.pretrained else "",
        "activation": _activation_from_cfg(clip.quick_gelu),
        "image_size": (int(cfg.data.height), int(cfg.data.width)),
        "pixel_mean": _as_tuple(cfg.data.norm_mean, "data.norm_mean", 3),
        "pixel_std": _as_tuple(cfg.data.norm_std, "data.norm_std", 3),
        "vit_stride": int(clip.vit_stride),
        "resnet_last_stride": int(clip.resnet_last_stride),
        "pos_interp": clip.pos_interp,
        "num_cameras": int(num_cameras) if clip.sie_camera else 0,
        "sie_scale": float(clip.sie_scale),
        "modalities": _as_tuple(csgn.modalities, "csgn.modalities"),
        "prompt_template": csgn.prompt_template,
        "prompt_n_ctx": int(csgn.prompt_n_ctx),
        "prompt_init_std": float(csgn.prompt_init_std),
        "fusion": csgn.fusion,
        "fusion_heads": int(csgn.fusion_heads),
        "test_neck": csgn.test_neck,
        "test_parts": _as_tuple(csgn.test_parts, "csgn.test_parts"),
        "test_flip": bool(csgn.test_flip),
    }
    # The baseline names fix their towers and prompt sets; the csgn.* ablation switches
    # (use_resnet, modalities) apply to 'csgn' only.
    options.update(preset)
    return CSGNConfig(**options)


def build_model_from_config(cfg: Any, num_classes: int, num_cameras: int) -> Optional[CSGN]:
    """Build ``cfg.model.name`` if it is one of ours; ``None`` for any other name (the caller
    then uses torchreid's ``build_model``)."""
    if cfg.model.name not in MODEL_PRESETS:
        return None
    return CSGN(config_from_cfg(cfg, num_cameras), num_classes)
