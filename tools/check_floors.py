"""Install every declared floor version into a fresh virtual environment and run the quick tests.

    python tools/check_floors.py --venv /tmp/floor [--python python3.10] [--print]

Reads the floors from setup.py (``REQUIRES``, ``TORCHREID_UNDECLARED``, ``TEST_REQUIRES``:
``name>=X`` becomes ``name==X``), makes ``--venv`` with ``--python`` (it must lie outside the
repository), installs the floors there, then a copy of this repository's files (tracked and
not ignored) with ``--no-deps``, and runs ``python -m pytest -q -m "not slow"`` from the
repository's root with that environment's Python.
``--print`` only prints the pins. PyPI's torch wheels bring CUDA's libraries (about 3 GB).
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP = os.path.join(ROOT, "setup.py")
LISTS = ("REQUIRES", "TORCHREID_UNDECLARED", "TEST_REQUIRES")


def declared(setup_path: str = SETUP) -> dict:
    """setup.py's requirement lists by name (``LISTS``) and ``python_requires``, read without
    running it."""
    tree = ast.parse(open(setup_path, encoding="utf-8").read(), setup_path)
    found: dict = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id in LISTS:
                found[target.id] = ast.literal_eval(node.value)
        if isinstance(node, ast.keyword) and node.arg == "python_requires":
            found["python_requires"] = ast.literal_eval(node.value)
    missing = [name for name in (*LISTS, "python_requires") if name not in found]
    if missing:
        raise ValueError(f"{setup_path}: no literal {', '.join(missing)}")
    return found


def floor_of(requirement: str) -> tuple[str, str]:
    """``'name>=X'`` -> ``('name', 'X')``; every declared requirement has exactly this form."""
    name, sep, version = requirement.partition(">=")
    if not sep or not name.strip() or not version.strip() or any(c in version for c in ",<=!~"):
        raise ValueError(f"requirement '{requirement}' is not of the form 'name>=version'")
    return name.strip(), version.strip()


def pins(setup_path: str = SETUP) -> list[str]:
    """``name==floor`` for every requirement of setup.py, tests included."""
    lists = declared(setup_path)
    return ["==".join(floor_of(r)) for name in LISTS for r in lists[name]]


def run(command: list[str]) -> None:
    print("+ " + " ".join(command), flush=True)
    subprocess.run(command, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--venv", help="where to make the environment (outside the repository)")
    parser.add_argument("--python", default=sys.executable, help="interpreter of the environment")
    parser.add_argument("--print", action="store_true", help="print the pins and stop")
    args = parser.parse_args(argv)
    floors = pins()
    if args.print:
        print("\n".join(floors))
        return 0
    if not args.venv:
        parser.error("--venv DIR is needed (or --print)")
    venv = os.path.abspath(args.venv)
    if os.path.commonpath([venv, ROOT]) == ROOT:
        parser.error(f"--venv '{venv}' lies inside the repository; choose a folder outside it")
    if os.path.exists(venv):
        parser.error(f"--venv '{venv}' exists; give a new folder")
    run([args.python, "-m", "venv", venv])
    python = os.path.join(venv, "bin", "python")
    run([python, "-m", "pip", "install", *floors])
    with tempfile.TemporaryDirectory() as copy:  # pip builds in the tree it is given
        files = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split("\0")
        for name in filter(None, files):
            os.makedirs(os.path.dirname(os.path.join(copy, name)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), os.path.join(copy, name))
        run([python, "-m", "pip", "install", "--no-deps", copy])
    os.chdir(ROOT)
    return subprocess.run([python, "-m", "pytest", "-q", "-m", "not slow"]).returncode


if __name__ == "__main__":
    sys.exit(main())
