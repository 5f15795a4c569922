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

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Optional

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
    "MODEL_PRESETS",
    "architecture_of",
    "config_from_architecture",
]


@dataclass(frozen=True)
class CSGNConfig:
    """Everything a model build needs. No field has a default: ``builders.csgn_config`` fills it
    from the project config (where every default lives), ``config_from_architecture`` from a
    checkpoint, ``clipreid_format`` with CLIP-ReID's own values."""

    vit_arch: str  # open_clip architecture of the ViT tower; '' = none
    resnet_arch: str  # open_clip architecture of the ResNet tower; '' = none
    vit_weights: str  # '' random, an open_clip tag ('openai'), or a file
    resnet_weights: str
    # transformer activation: 'quick_gelu', 'gelu', or 'auto' (decided by the weights; see
    # clip_weights.load_clip). A built model reports the resolved value in architecture().
    activation: str
    image_size: tuple[int, int]
    pixel_mean: tuple[float, ...]  # normalisation of the batches the model gets
    pixel_std: tuple[float, ...]
    vit_stride: int
    resnet_last_stride: int
    pos_interp: str
    num_cameras: int  # > 0: camera embedding (SIE) on the ViT
    sie_scale: float
    modalities: tuple[str, ...]
    prompt_template: str
    prompt_n_ctx: int
    prompt_init_std: float
    fusion: str  # how the two towers are fused (unused with one tower)
    fusion_heads: int
    fusion_init_std: float
    test_neck: str
    test_parts: tuple[str, ...]
    test_flip: bool
    test_part_norm: bool


# What each registered name fixes, whatever the config says.
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
    "fusion_init_std": "csgn.fusion_init_std",
    "test_neck": "csgn.test_neck",
    "test_parts": "csgn.test_parts",
    "test_flip": "csgn.test_flip",
    "test_part_norm": "csgn.test_part_norm",
}


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
            config.fusion_init_std,
            config.test_neck,
            config.test_parts,
            config.test_flip,
            config.test_part_norm,
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

    def prompt_features(
        self, pids: torch.Tensor, modality: str, up_to_eot: bool = False
    ) -> torch.Tensor:
        """Text features (len(pids), E) of these identities' prompts of one modality
        (``up_to_eot``: the text transformer stops at the end-of-text token, ``TextEncoder``)."""
        prompts = self.prompt_learner(pids, modality)
        return self.text_encoder(prompts, self.prompt_learner.eot_index, up_to_eot)

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


def _field_kinds() -> dict[str, Any]:
    """Each field's kind from its annotation: a type, or ``(tuple, element type)``."""
    simple = {"str": str, "int": int, "float": float, "bool": bool}
    kinds: dict[str, Any] = {}
    for f in fields(CSGNConfig):
        annotation = str(f.type)
        if annotation.startswith("tuple["):
            kinds[f.name] = (tuple, simple[annotation[6:-1].split(",")[0].strip()])
        else:
            kinds[f.name] = simple[annotation]
    return kinds


_KINDS = _field_kinds()


def _same_kind(value: Any, kind: Any) -> bool:
    """``value`` (from JSON) is of ``kind``: ints pass for floats, bools only for bools, lists for
    tuples (element by element)."""
    if isinstance(kind, tuple):
        return isinstance(value, (list, tuple)) and all(_same_kind(v, kind[1]) for v in value)
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


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
    values: dict[str, Any] = {"vit_weights": "", "resnet_weights": ""}
    for key in ARCHITECTURE_FIELDS:
        value, kind = architecture[key], _KINDS[key]
        if not _same_kind(value, kind):
            name = f"a tuple of {kind[1].__name__}" if isinstance(kind, tuple) else kind.__name__
            raise ValueError(f"{where}.{key}: expected {name}, got {value!r}")
        values[key] = tuple(value) if isinstance(kind, tuple) else kind(value)
    if values["activation"] not in ("quick_gelu", "gelu"):
        raise ValueError(
            f"{where}.activation must be resolved ('quick_gelu' or 'gelu'), got "
            f"{values['activation']!r}"
        )
    return CSGNConfig(**values)
