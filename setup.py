from setuptools import find_packages, setup

setup(
    name="csgn-reid",
    version="0.1.0",
    description="Clothes-changing person re-identification for torchreid, with CSGN",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(include=["csgn_plugin", "csgn_plugin.*"]),
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "torchreid>=0.2.5",
        "open_clip_torch>=2.24",
        # open_clip reads safetensors CLIP weights with it (open_clip depends on it too; the
        # plugin's support for those files must not hang on that)
        "safetensors>=0.4",
        "yacs>=0.1.8",
        "numpy>=1.23",
        "gdown>=6.3",  # download(timeout=...) and its resume contract
        # torchreid imports these but does not declare them
        "scipy>=1.9",
        "opencv-python-headless>=4.7",
        "tensorboard>=2.12",
        "Pillow>=9.4",
        "matplotlib>=3.6",
        "tqdm>=4.64",
    ],
    extras_require={"test": ["pytest>=7.4", "pytest-xdist>=3.5", "ruff>=0.6"]},
    entry_points={"torchreid.plugins": ["csgn = csgn_plugin:register"]},
)
