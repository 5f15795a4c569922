"""The one place that writes into torchreid's registries.

Datasets go through torchreid's ``register_image_dataset`` / ``register_video_dataset``; models
into the module-global factory dict of ``torchreid.models`` (torchreid has no register function
for models). :func:`register` is idempotent: a name already bound to our object is left alone, a
name bound to someone else's object is an error, never silently replaced.
"""

from __future__ import annotations

from .compat import allow_numpy_in_checkpoints, model_factory, torchreid_api

_DONE = False


def _dataset_registry(kind: str) -> dict:
    return vars(torchreid_api().data.datasets)[f"__{kind}_datasets"]


def _check_free(registry: dict, name: str, obj: object, what: str) -> bool:
    """True when ``name`` still has to be registered."""
    if name not in registry:
        return True
    if registry[name] is obj:
        return False
    raise ValueError(
        f"torchreid already has a {what} named '{name}' ({registry[name]!r}); "
        f"csgn_plugin cannot register {obj!r} under that name"
    )


def register() -> None:
    """Register the datasets and models with torchreid (safe to call any number of times)."""
    global _DONE
    if _DONE:
        return
    from .builders import CAL_MODEL_FACTORIES, CLIP_MODEL_FACTORIES
    from .data.datasets import IMAGE_DATASETS, VIDEO_DATASETS

    allow_numpy_in_checkpoints()  # torchreid's own checkpoints reload under torch >= 2.6
    tr = torchreid_api()
    for name, cls in IMAGE_DATASETS.items():
        if _check_free(_dataset_registry("image"), name, cls, "image dataset"):
            tr.data.register_image_dataset(name, cls)
    for name, cls in VIDEO_DATASETS.items():
        if _check_free(_dataset_registry("video"), name, cls, "video dataset"):
            tr.data.register_video_dataset(name, cls)
    factory = model_factory()
    for name, fn in {**CLIP_MODEL_FACTORIES, **CAL_MODEL_FACTORIES}.items():
        if _check_free(factory, name, fn, "model"):
            factory[name] = fn
    _DONE = True
