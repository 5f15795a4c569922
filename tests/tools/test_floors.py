"""setup.py declares what the code needs: every distribution the package imports, a floor at least
as high as each feature it uses needs (a table of feature -> first version), and torchreid's
undeclared imports as its comment says. The whole floor set is checked by installing it
(tools/check_floors.py, README's Install section); this catches a newer API used without
raising its floor, where a pattern in the source shows the use."""

import ast
import functools
import glob
import importlib.metadata
import os
import re
import sys

import pytest

from csgn_plugin import compat

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import check_floors  # noqa: E402

# (distribution, first version with the feature, pattern in the package's source, the feature)
FEATURES = [
    ("torch", "2.0", r"torch\.compile\(", "torch.compile"),
    ("torch", "2.1", r"mmap=True", "torch.load(mmap=True)"),
    ("torch", "2.3", r"torch\.amp\.GradScaler\(", "torch.amp.GradScaler(device)"),
    ("torch", "2.4", r"torch\.OutOfMemoryError", "the top-level torch.OutOfMemoryError"),
    ("torch", "2.4", r"fused=True", "fused AdamW on the CPU (SynthCLIP pretraining)"),
    (
        "torch",
        "2.5",
        r"def allow_numpy_in_checkpoints",
        "weights_only loading of torchreid's numpy scalars (_codecs.encode allowed from 2.5)",
    ),
    (
        "open_clip_torch",
        "2.26",
        r"self\.transformer\(x, attn_mask=",
        "a batch-first text transformer (TextEncoder feeds (B, L, width))",
    ),
    (
        "open_clip_torch",
        "2.27",
        r"open_clip_load_state_dict\([^)]*weights_only=",
        "factory.load_state_dict(path, device=, weights_only=)",
    ),
    (
        "open_clip_torch",
        "2.27.1",
        r"(?m)^import open_clip$",
        "open_clip imported without a warning (2.27.0 imports timm.models.layers, deprecated)",
    ),
    ("gdown", "6.0", r"gdown\.exceptions\.DownloadError", "gdown.exceptions.DownloadError"),
    ("gdown", "6.3", r"gdown\.download\([^)]*timeout=", "gdown.download(timeout=...)"),
]
# torchvision releases pair with one torch release each
TORCHVISION_FOR_TORCH = {"2.4": "0.19", "2.5": "0.20", "2.6": "0.21", "2.7": "0.22"}
# (distribution, from this version, needs at least this Python)
NEEDS_PYTHON = [("gdown", "6.3", "3.10")]
# imported by a name in a string (compat.torchreid_api: both torchreid layouts)
IMPORTED_BY_NAME = {"torchreid"}
# a submodule whose import needs a distribution of its own
SUBMODULE_DISTRIBUTIONS = {"torch.utils.tensorboard": "tensorboard"}
# what setup.py's comment says torchreid 0.2.5 imports without declaring it
TORCHREID_IMPORTS = {
    "numpy": "numpy",
    "PIL": "Pillow",
    "gdown": "gdown",
    "torch.utils.tensorboard": "tensorboard",
    "scipy": "scipy",
    "cv2": "opencv-python-headless",
}


def version(text):
    return tuple(int(part) for part in text.split("."))


def at_least(declared, needed):
    length = max(len(version(declared)), len(version(needed)))

    def padded(text):
        return version(text) + (0,) * (length - len(version(text)))

    return padded(declared) >= padded(needed)


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def floors():
    lists = check_floors.declared()
    found = {}
    for key in check_floors.LISTS:
        for requirement in lists[key]:
            name, floor = check_floors.floor_of(requirement)
            found[canonical(name)] = floor
    found["python"] = lists["python_requires"].removeprefix(">=")
    return found


def sources(*patterns):
    return sorted(
        p for pattern in patterns for p in glob.glob(os.path.join(ROOT, pattern), recursive=True)
    )


PACKAGE = sources("csgn_plugin/**/*.py", "tools/*.py")


def imported_modules(paths):
    """Every module an import statement of ``paths`` names (absolute imports only)."""
    names = set()
    for path in paths:
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@functools.cache
def providers():
    return importlib.metadata.packages_distributions()  # reads every installed distribution


@functools.cache
def provider_by_record(name):
    """The distributions whose files hold the module ``name``: Python 3.10's
    ``packages_distributions`` reads only ``top_level.txt``, which open_clip's wheel lacks."""
    owns = re.compile(rf"^{re.escape(name)}(/|\.py,)", re.MULTILINE)
    return [
        d.metadata["Name"]
        for d in importlib.metadata.distributions()
        if owns.search(d.read_text("RECORD") or "")
    ]


def distributions_of(modules, local):
    """The distributions that provide ``modules`` (stdlib and ``local`` module names left out)."""
    provided = providers()
    found = set()
    for module in modules:
        for submodule, distribution in SUBMODULE_DISTRIBUTIONS.items():
            if module == submodule or module.startswith(submodule + "."):
                found.add(canonical(distribution))
        top = module.split(".")[0]
        if top in sys.stdlib_module_names or top in local:
            continue
        owners = provided.get(top) or provider_by_record(top)
        assert owners, f"no installed distribution provides '{top}'"
        found.update(canonical(d) for d in owners)
    return found


def local_modules():
    """Module names of the repository's own files (the plugin, tools, tests, projects)."""
    names = {"csgn_plugin"}
    for path in sources("tools/*.py", "tests/*.py", "projects/**/*.py", "setup.py"):
        names.add(os.path.splitext(os.path.basename(path))[0])
    return names


def test_each_feature_the_code_uses_is_within_its_declared_floor():
    declared = floors()
    text = {path: open(path, encoding="utf-8").read() for path in PACKAGE}
    for distribution, needed, pattern, feature in FEATURES:
        users = [os.path.relpath(p, ROOT) for p, t in text.items() if re.search(pattern, t)]
        assert users, f"no source uses {feature} ({pattern!r}) any more: update the table"
        floor = declared[canonical(distribution)]
        assert at_least(floor, needed), (
            f"{', '.join(users)} use(s) {feature}, new in {distribution} {needed}, but setup.py "
            f"declares {distribution}>={floor}"
        )
    torch_minor = ".".join(declared["torch"].split(".")[:2])
    assert at_least(declared["torchvision"], TORCHVISION_FOR_TORCH[torch_minor])
    for distribution, since, python in NEEDS_PYTHON:
        if at_least(declared[canonical(distribution)], since):
            assert at_least(declared["python"], python), f"{distribution} {since} needs {python}"
    # ruff checks the syntax of the oldest Python declared
    pyproject = open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8").read()
    target = re.search(r'target-version = "py(\d)(\d+)"', pyproject).groups()
    assert ".".join(target) == declared["python"]


def test_the_package_declares_what_it_imports_and_imports_what_it_declares():
    lists = check_floors.declared()
    own = {canonical(check_floors.floor_of(r)[0]) for r in lists["REQUIRES"]}
    imported = distributions_of(imported_modules(PACKAGE), local_modules())
    imported |= {canonical(name) for name in IMPORTED_BY_NAME}
    assert imported == own, (
        f"imported but not in REQUIRES: {sorted(imported - own)}; in REQUIRES but never "
        f"imported: {sorted(own - imported)}"
    )
    declared = set(floors()) - {"python"}
    tests = distributions_of(imported_modules(sources("tests/**/*.py")), local_modules())
    assert tests <= declared, f"the tests import undeclared {sorted(tests - declared)}"


def test_torchreid_imports_what_setup_py_says_it_does_not_declare():
    """numpy, Pillow, gdown, tensorboard, scipy and cv2: imported by torchreid 0.2.5's modules,
    absent from its requirements; the last two are declared for it alone."""
    torchreid_dir = os.path.dirname(compat.torchreid_api().__file__)
    while os.path.basename(torchreid_dir) != "torchreid":  # the PyPI layout: torchreid/reid
        torchreid_dir = os.path.dirname(torchreid_dir)
    modules = imported_modules(glob.glob(os.path.join(torchreid_dir, "**", "*.py"), recursive=True))
    requires = [r for r in importlib.metadata.requires("torchreid") or [] if "extra ==" not in r]
    declared = {canonical(re.split(r"[<>=!~ ;\[]", r)[0]) for r in requires}
    for module, distribution in TORCHREID_IMPORTS.items():
        assert any(m == module or m.startswith(module + ".") for m in modules), module
        assert canonical(distribution) not in declared
    lists = check_floors.declared()
    for_torchreid = {canonical(check_floors.floor_of(r)[0]) for r in lists["TORCHREID_UNDECLARED"]}
    assert for_torchreid == {"scipy", "opencv-python-headless"}


def test_the_environment_meets_the_floors():
    for distribution, floor in floors().items():
        installed = (
            ".".join(map(str, sys.version_info[:3]))
            if distribution == "python"
            else importlib.metadata.version(distribution)
        )
        numeric = re.match(r"[0-9.]*[0-9]", installed).group(0)
        assert at_least(numeric, floor), f"{distribution} {installed} is below its floor {floor}"


@pytest.mark.parametrize("bad", ["torch", "torch>=", "torch>=2.5,<3", "torch==2.5"])
def test_requirements_must_be_plain_floors(bad):
    with pytest.raises(ValueError, match="name>=version"):
        check_floors.floor_of(bad)
