"""The locked packages the GPU run needs and a GPU machine lacks, as `name==version` lines for pip download.

benchmarks/gpu.sh stops its exp run at `evaluate` with tracking off, so it needs bonescan's
dependencies without Prefect (pipeline/ only) and MLflow (tracking and the registry), plus pytest:
their closure, read from this environment's package metadata, at the lock's versions. Left out as
well: torch, torchvision, triton and the CUDA libraries (the machine's own, see gpu_install.py), and
every name in `--present` (packages the GPU image already holds: one name a line, or a comma-separated
list). Then, on a machine with pip access:

    python benchmarks/gpu_wheels.py --present present.txt > gpu-wheels.txt
    pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        -d .whl -r gpu-wheels.txt
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
NOT_ON_THE_GPU = {"prefect", "mlflow", "fastapi"}  # the exp run stops at evaluate, tracking off
TEST_TOOLS = ("pytest", "pytest-timeout")
MACHINE_OWN = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*)$")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: list[str]) -> set[str]:
    """Normalized names of `roots` and everything they require here (markers evaluated, extras off)."""
    seen: set[str] = set()
    todo = [normalize(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(normalize(req.name))
    return seen


def read_present(path: Path | None) -> set[str]:
    if path is None:
        return set()
    return {normalize(n) for n in re.split(r"[,\s]+", path.read_text()) if n.strip()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", type=Path, default=ROOT / "requirements.lock")
    parser.add_argument("--present", type=Path, default=None, help="names the GPU image already has")
    args = parser.parse_args()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    roots = [Requirement(r).name for r in project["dependencies"]]
    roots = [r for r in roots if normalize(r) not in NOT_ON_THE_GPU] + list(TEST_TOOLS)
    needed = closure(roots)
    pins = {}
    for line in args.lock.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[normalize(name)] = version
    present = read_present(args.present)
    for name in sorted(needed):
        if name in pins and not MACHINE_OWN.match(name) and name not in present:
            print(f"{name}=={pins[name]}")
    unpinned = sorted(n for n in needed if n not in pins)
    if unpinned:
        print(f"not in the lock (left out): {', '.join(unpinned)}", file=sys.stderr)


if __name__ == "__main__":
    main()
