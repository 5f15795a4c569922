from setuptools import find_packages, setup

# What the package imports. Each floor is the oldest version the code runs on: a floor that a
# feature sets is named beside it and in tests/tools/test_floors.py's table; the others are the
# oldest versions checked. tools/check_floors.py installs every floor together (README, Install).
REQUIRES = [
    # weights_only loading of torchreid's checkpoints, whose numpy scalars pickle through
    # _codecs.encode (allowed from torch 2.5); torch.OutOfMemoryError and fused AdamW on the CPU
    # (SynthCLIP pretraining) need 2.4
    "torch>=2.5",
    "torchvision>=0.20",  # the release built for torch 2.5
    "torchreid>=0.2.5",
    # factory.load_state_dict(device=, weights_only=) is 2.27's; 2.27.0 imports timm.models.layers,
    # whose deprecation warning recent timm prints on every start
    "open_clip_torch>=2.27.1",
    "yacs>=0.1.8",
    "numpy>=1.23",
    "Pillow>=9.4",
    "gdown>=6.3",  # download(timeout=...) and its resume contract
    "requests>=2.27",
    "PyYAML>=6.0",
    "filelock>=3.0.12",
    "tensorboard>=2.12",
    "matplotlib>=3.6",
    "tqdm>=4.64",
]
# torchreid 0.2.5 imports numpy, Pillow, gdown, tensorboard, scipy and cv2 when it is imported
# and declares none of them; the plugin imports the first four itself (above)
TORCHREID_UNDECLARED = ["scipy>=1.9", "opencv-python-headless>=4.7.0.68"]
# The tests write .safetensors files with safetensors; the package reads them through open_clip,
# which requires safetensors itself (since 2.27)
TEST_REQUIRES = ["pytest>=7.4", "ruff>=0.6", "safetensors>=0.4"]

setup(
    name="csgn-reid",
    version="0.1.0",
    description="Clothes-changing person re-identification for torchreid, with CSGN",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(include=["csgn_plugin", "csgn_plugin.*"]),
    python_requires=">=3.10",  # gdown 6.3 requires it
    install_requires=REQUIRES + TORCHREID_UNDECLARED,
    extras_require={"test": TEST_REQUIRES},
)
