"""Config keys of the CLIP towers and of the CSGN method (``clip``, ``csgn``, ``stage1``).

``clip`` and ``csgn`` are read by ``csgn_plugin.builders.csgn_config`` (with
``model.name``, ``model.pretrained`` and ``data.height/width/norm_mean/norm_std``), which fills
``modeling.CSGNConfig`` (it has no defaults: these are the only ones). ``stage1`` is the prompt
stage's schedule (``builders.prompt_stage_options``). The stage-2 loss weights are in
``loss.clip`` and ``loss.hsf``; the stage-2 optimiser in ``train``.
"""

from __future__ import annotations

from yacs.config import CfgNode as CN


def add_model_sections(cfg: CN) -> None:
    cfg.clip = CN()
    # open_clip architecture of the ViT tower (its CLIP also supplies the text tower of 'csgn'
    # and 'clipreid_vitb16'); 'csgn-tiny-vit' is a tiny one for tests and CPU demos
    cfg.clip.vit_arch = "ViT-B-16"
    # open_clip architecture of the ResNet tower (and the text tower of 'clipreid_rn50');
    # 'csgn-tiny-rn' is a tiny one
    cfg.clip.resnet_arch = "RN50"
    # weights when model.pretrained is True: an open_clip pretrained tag ('openai' downloads,
    # needs network) or a local file (OpenAI TorchScript .pt, state dict, open_clip checkpoint)
    cfg.clip.vit_weights = "openai"
    cfg.clip.resnet_weights = "openai"
    # activation of the towers: 'auto' = QuickGELU for OpenAI weights (tag 'openai', TorchScript
    # archives, flat state dicts), GELU for open_clip checkpoints and random towers; 'on'/'off'
    cfg.clip.quick_gelu = "auto"
    cfg.clip.vit_stride = 16  # patch-embedding stride: 16, or 12 for overlapping patches
    cfg.clip.resnet_last_stride = 1  # layer-4 stride: 1 (16x8 map at 256x128) or 2 (CLIP's)
    # interpolation of positional grids to the ReID input size (CLIP-ReID: bilinear)
    cfg.clip.pos_interp = "bilinear"
    cfg.clip.sie_camera = False  # learned camera embedding on the ViT's class token (SIE)
    cfg.clip.sie_scale = 3.0  # SIE coefficient (CLIP-ReID: 3.0; 1.0 with stride 12)

    cfg.csgn = CN()
    # prompt sets of MDG: ['rgb', 'gray'] (CSGN); ['rgb'] = no grayscale prompts (CLIP-ReID).
    # Only for model 'csgn': the clipreid_* names always have ['rgb']
    cfg.csgn.modalities = ["rgb", "gray"]
    # VSS's ResNet (local) branch; False = ViT only (ablation). Only for model 'csgn'
    cfg.csgn.use_resnet = True
    # fusion of the ViT class token with the ResNet map: 'concat' (concatenation + linear),
    # 'sum' (gated weighted sum) or 'cross_attn' (class token attends over ResNet tokens)
    cfg.csgn.fusion = "concat"
    cfg.csgn.fusion_heads = 8  # attention heads of 'cross_attn' (must divide the ViT width)
    # std of the initial weights that bring the ResNet into the joint-space feature (0: it starts
    # exactly at CLIP's projected class token, and no gradient reaches the ResNet through it in
    # the first step)
    cfg.csgn.fusion_init_std = 0.0
    cfg.csgn.prompt_template = "A photo of a {} person."  # '{}' = where the learned tokens go
    cfg.csgn.prompt_n_ctx = 4  # learnable tokens per identity and modality
    cfg.csgn.prompt_init_std = 0.02  # prompt vectors are initialised N(0, std)
    # inference feature: 'before' or 'after' the BN necks (CLIP-ReID: before) ...
    cfg.csgn.test_neck = "before"
    # ... of these parts, concatenated: any of 'global' (ViT class token), 'local' (pooled
    # ResNet map), 'proj' (joint-space feature); ['auto'] = every part the model has
    cfg.csgn.test_parts = ["auto"]
    cfg.csgn.test_flip = False  # average the features of the image and its mirror image
    # L2-normalise each part before concatenating them (CLIP-ReID: off)
    cfg.csgn.test_part_norm = False
    # stage-2 learning-rate factors per part of 'csgn' (x train.lr, x train.bias_lr_factor for
    # biases): the ViT tower, the ResNet tower, the fusion layers, the BN necks and classifiers
    cfg.csgn.vit_lr_factor = 1.0
    cfg.csgn.resnet_lr_factor = 1.0
    cfg.csgn.fusion_lr_factor = 1.0
    cfg.csgn.head_lr_factor = 1.0

    cfg.stage1 = CN()  # prompt learning over cached CLIP image features (CLIP-ReID stage 1)
    cfg.stage1.max_epoch = 120  # CLIP-ReID: 120 (ViT-B/16), 60 (RN50); 0 skips the stage
    cfg.stage1.batch_size = 64  # cached features per step
    cfg.stage1.lr = 3.5e-4  # Adam on the prompt vectors only
    cfg.stage1.weight_decay = 1e-4
    # CLIP-ReID's stage-1 schedule (timm's cosine): epoch e of 1..max_epoch runs at
    # warmup_lr + e (lr - warmup_lr) / warmup_epochs while e < warmup_epochs, then at
    # lr_min + (lr - lr_min) (1 + cos(pi e / max_epoch)) / 2
    cfg.stage1.warmup_epochs = 5
    cfg.stage1.warmup_lr = 1e-5
    cfg.stage1.lr_min = 1e-6
    # weight of the cross-modal mutual term (rgb images <-> gray prompts, gray images <-> rgb
    # prompts); 0 = each modality only with itself
    cfg.stage1.cross_modal_weight = 0.0
    cfg.stage1.print_freq = 10  # epochs between log lines
