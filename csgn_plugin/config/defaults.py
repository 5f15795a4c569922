"""The one yacs config: torchreid's standard keys plus the plugin's sections.

torchreid's keys keep their names and meanings (upstream ``scripts/default_config.py``), so an
existing torchreid config file loads unchanged. The plugin adds:

* ``cc_data``  dataset options of the clothes-changing parsers (``data_defaults.py``)
* ``cc_eval``  clothes-changing evaluation: protocols, single-shot, model selection
* ``clip``, ``csgn``, ``stage1``  the CLIP towers and the CSGN method (``model_defaults.py``)
* ``runtime``  device, precision, logging, checkpoints
"""

from __future__ import annotations

from yacs.config import CfgNode as CN

from .data_defaults import add_data_sections
from .model_defaults import add_model_sections


def _torchreid_sections(cfg: CN) -> None:
    cfg.model = CN()
    cfg.model.name = "osnet_x0_25"
    cfg.model.pretrained = False  # True downloads ImageNet/CLIP weights (needs network)
    cfg.model.load_weights = ""  # path to model weights (torchreid's load_pretrained_weights)
    cfg.model.resume = ""  # path to a checkpoint to resume from ('auto': the last in save_dir)
    # plugin addition: model.load_weights must fill every tensor of the model with one of the
    # right shape and bring nothing the model lacks; False opts in to partial loading (what
    # fits is loaded, what stayed random is listed as a warning)
    cfg.model.strict_load = True

    cfg.data = CN()
    cfg.data.type = "image"
    cfg.data.root = "reid-data"
    cfg.data.sources = ["synthcc"]
    cfg.data.targets = ["synthcc"]
    cfg.data.workers = 2
    cfg.data.split_id = 0
    cfg.data.height = 256
    cfg.data.width = 128
    cfg.data.combineall = False
    cfg.data.transforms = ["random_flip"]
    # plugin additions (csgn_plugin/data/transforms.py): resize interpolation per split
    # ('bilinear', 'bicubic', 'nearest'; CLIP-ReID trains bicubic, tests bilinear) and the
    # zero padding per side of the 'pad_crop' transform (CLIP-ReID: 10)
    cfg.data.train_interpolation = "bilinear"
    cfg.data.test_interpolation = "bilinear"
    cfg.data.pad_crop_padding = 10
    # images decoded once (csgn_plugin/data/image_cache.py): every split read, decoded and
    # resized a single time into memory, batches augmented on the device. 'auto' (on CUDA),
    # 'on' (also on a CPU), 'off' (per-image loading in workers). A split goes to the training
    # device while the splits fit cache_device_gb, then to (pinned) host memory while they fit
    # cache_host_gb, else it is loaded per image
    cfg.data.cache = "auto"
    cfg.data.cache_device_gb = 8.0
    cfg.data.cache_host_gb = 16.0
    cfg.data.k_tfm = 1
    cfg.data.norm_mean = [0.485, 0.456, 0.406]
    cfg.data.norm_std = [0.229, 0.224, 0.225]
    cfg.data.save_dir = "log"
    cfg.data.load_train_targets = False

    cfg.market1501 = CN()
    cfg.market1501.use_500k_distractors = False
    cfg.cuhk03 = CN()
    cfg.cuhk03.labeled_images = False
    cfg.cuhk03.classic_split = False
    cfg.cuhk03.use_metric_cuhk03 = False

    cfg.sampler = CN()
    cfg.sampler.train_sampler = "RandomSampler"
    cfg.sampler.train_sampler_t = "RandomSampler"
    cfg.sampler.num_instances = 4
    cfg.sampler.num_cams = 1
    cfg.sampler.num_datasets = 1

    cfg.video = CN()
    cfg.video.seq_len = 15
    cfg.video.sample_method = "evenly"
    cfg.video.pooling_method = "avg"

    cfg.train = CN()
    cfg.train.optim = "adam"
    cfg.train.lr = 0.0003
    cfg.train.weight_decay = 5e-4
    cfg.train.max_epoch = 60
    cfg.train.start_epoch = 0
    cfg.train.batch_size = 32
    cfg.train.fixbase_epoch = 0
    cfg.train.open_layers = ["classifier"]
    # torchreid's staged lr: the modules named in new_layers (top-level attribute names) train at
    # train.lr, every other parameter at train.lr x base_lr_mult
    cfg.train.staged_lr = False
    cfg.train.new_layers = ["classifier"]
    cfg.train.base_lr_mult = 0.1
    cfg.train.lr_scheduler = "single_step"
    cfg.train.stepsize = [20]
    cfg.train.gamma = 0.1
    cfg.train.print_freq = 20
    cfg.train.seed = 1
    # plugin additions to torchreid's train section
    cfg.train.bias_lr_factor = 1.0  # lr multiplier of bias parameters (CLIP-ReID: 2)
    cfg.train.warmup_epochs = 0  # linear warm-up epochs before the scheduler's decay
    cfg.train.warmup_factor = 0.1  # lr multiplier at warm-up index 0
    # when the epoch scheduler steps: 'epoch_end' (torchreid: epoch e runs at index e - 1) or
    # 'epoch_start' (CLIP-ReID: epoch e runs at index e, e.g. its first epoch at 0.19 x lr)
    cfg.train.step_scheduler_at = "epoch_end"

    cfg.sgd = CN()
    cfg.sgd.momentum = 0.9
    cfg.sgd.dampening = 0.0
    cfg.sgd.nesterov = False
    cfg.rmsprop = CN()
    cfg.rmsprop.alpha = 0.99
    cfg.adam = CN()
    cfg.adam.beta1 = 0.9
    cfg.adam.beta2 = 0.999

    cfg.loss = CN()
    cfg.loss.name = "softmax"
    cfg.loss.softmax = CN()
    cfg.loss.softmax.label_smooth = True
    cfg.loss.triplet = CN()
    cfg.loss.triplet.margin = 0.3
    cfg.loss.triplet.weight_t = 1.0
    cfg.loss.triplet.weight_x = 0.0
    # plugin additions: the loss weights of CLIP-based models (dict outputs)
    cfg.loss.clip = CN()
    cfg.loss.clip.id_weight = 0.25  # CLIP-ReID: 0.25 for ViT-B/16, 1.0 for RN50
    cfg.loss.clip.triplet_weight = 1.0
    cfg.loss.hsf = CN()
    cfg.loss.hsf.rgb_weight = 1.0  # image feature vs the RGB prompt features of all ids
    cfg.loss.hsf.gray_weight = 1.0  # ... vs the grayscale prompt features (0: HSF RGB-only)
    # plugin additions: the CAL models' losses (Gu et al., CVPR 2022), defaults as Simple-CCReID's
    # configs/default_img.py. Identity loss: 'cross_entropy' (linear classifier; label smoothing
    # by loss.softmax.label_smooth, epsilon 0.1) or 'cosface' (normalised classifier, scale and
    # id_margin)
    cfg.loss.cal = CN()
    cfg.loss.cal.id_loss = "cross_entropy"
    # cosine scale of the clothes classifier's loss, the adversarial loss and 'cosface'
    cfg.loss.cal.scale = 16.0
    cfg.loss.cal.id_margin = 0.0  # CosFace margin of the identity loss 'cosface'
    cfg.loss.cal.pair_weight = 0.0  # weight of the batch-hard triplet loss on cosine distances
    cfg.loss.cal.pair_margin = 0.3
    # share of the adversarial target spread over all the outfits of the sample's identity (the
    # rest, 1 - epsilon, is on its own outfit)
    cfg.loss.cal.epsilon = 0.1
    # epoch index (0-based) from which the clothes classifier trains (its own optimizer), and from
    # which the clothes-based adversarial loss trains the backbone
    cfg.loss.cal.start_epoch_cc = 25
    cfg.loss.cal.start_epoch_adv = 25

    cfg.test = CN()
    cfg.test.batch_size = 100
    cfg.test.dist_metric = "euclidean"
    cfg.test.normalize_feature = False
    cfg.test.ranks = [1, 5, 10, 20]
    cfg.test.evaluate = False
    cfg.test.eval_freq = -1
    cfg.test.start_eval = 0
    cfg.test.rerank = False
    cfg.test.visrank = False
    cfg.test.visrank_topk = 10
    # plugin addition: an evaluation (tools/test.py, test.evaluate True) needs model.load_weights;
    # True evaluates the model as initialised instead (the table and results.json say so)
    cfg.test.allow_untrained = False


def _plugin_sections(cfg: CN) -> None:
    cfg.cc_eval = CN()
    # protocols to report; 'auto' = those the dataset declares (LTCC: general, cc, sc; ...)
    cfg.cc_eval.protocols = ["auto"]
    cfg.cc_eval.single_shot = False  # one gallery image per id, averaged over trials
    cfg.cc_eval.single_shot_trials = 10
    cfg.cc_eval.single_shot_seed = 0
    cfg.cc_eval.max_rank = 50
    # '<protocol>_<r1|mAP>' of the first target that picks the best checkpoint, e.g. 'cc_mAP'
    cfg.cc_eval.best_metric = "auto"
    cfg.cc_eval.chunk_size = 1024  # queries ranked at a time (bounds memory on LaST-size data)

    cfg.runtime = CN()
    cfg.runtime.device = "auto"  # 'auto' (cuda when available), 'cuda', 'cpu'
    cfg.runtime.amp = "auto"  # 'auto' (bf16 on CUDA, off on CPU), 'bf16', 'fp16', 'off'
    # NHWC images and weights: 'auto' (on CUDA for models with convolutional towers), 'on', 'off'
    cfg.runtime.channels_last = "auto"
    # the training step and extraction: 'auto' (CUDA graphs on CUDA, single process, runs of at
    # least 50 stage-2 steps; eager otherwise), 'graphs' (CUDA graphs of the static-shape passes,
    # csgn_plugin/graphs.py), 'off' (eager), or a torch.compile mode: 'default',
    # 'reduce-overhead' (compiled and CUDA-graphed), 'max-autotune'. True / False mean
    # 'default' / 'off'
    cfg.runtime.compile = "auto"
    # what CPU numbers depend on besides the inputs: the kernel set ('avx2': the same numbers on
    # every x86 CPU with AVX2, with or without AVX-512; 'native': the CPU's best) and the torch
    # threads (0: one per core, so the numbers depend on the core count; N: always N)
    cfg.runtime.cpu_kernels = "avx2"
    cfg.runtime.cpu_threads = 0
    cfg.runtime.pin_memory = True
    cfg.runtime.persistent_workers = True
    cfg.runtime.prefetch_factor = 2
    cfg.runtime.checkpoint_period = 1  # epochs between 'last' checkpoints (0: only at the end)
    cfg.runtime.checkpoint_iters = 0  # also every N steps inside an epoch (0: off)
    cfg.runtime.nan_policy = "stop"  # non-finite loss: 'stop' (clear error) or 'skip' the step
    # DDP: seconds a rank waits in a collective before it gives up (a dead or stuck peer stops
    # the job after at most this long instead of hanging)
    cfg.runtime.dist_timeout_s = 1800
    cfg.runtime.plot = True  # write training curves and CMC plots into save_dir


def get_default_config() -> CN:
    """A fresh copy of every key with its default."""
    cfg = CN()
    _torchreid_sections(cfg)
    _plugin_sections(cfg)
    add_data_sections(cfg)
    add_model_sections(cfg)
    return cfg
