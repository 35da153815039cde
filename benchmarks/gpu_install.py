"""Install requirements.lock on a GPU machine that cannot reach a package index; prints a JSON report.

Run it with the machine's own Python, which holds a CUDA build of torch (on the GPU machine that
Python is itself a venv, so a venv made from it would not see its torch); with `--target DIR` the
wheels go to DIR, which `benchmarks/gpu.sh` puts first on PYTHONPATH. For each `name==version` line
of the lock:

* torch, torchvision, triton and the CUDA libraries (nvidia-*, cuda-*) are the machine's own: the
  lock's CUDA wheels are gigabytes and cannot travel (the device's working tree carries 64 MiB);
  their versions are reported next to the lock's;
* a package already installed at the locked version is kept;
* else a wheel of exactly that version in `--wheels` is installed (pip, `--no-index --no-deps`: the
  lock is complete, so nothing else is resolved);
* else a package installed at another version is kept and reported as a deviation;
* else it is missing: the install fails, naming it (unless `--allow-missing`).

Without `--target`, bonescan itself is then installed, editable, without dependencies (with it,
PYTHONPATH=src does that job).

Usage: python benchmarks/gpu_install.py [--lock requirements.lock] [--wheels .whl] [--target DIR]
       [--dry-run] [--allow-missing] [--project .]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

MACHINE_OWN = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*)$")


def normalize(name: str) -> str:
    """PEP 503 name: lower case, runs of -_. as one dash."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """{normalized name: version} of the `name==version` lines (comments and blanks skipped)."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise ValueError(f"{path}: not an exact pin: {line!r}")
        pins[normalize(name.split("[", 1)[0])] = version.strip()
    return pins


def wheel_versions(folder: Path) -> dict[str, dict[str, Path]]:
    """{normalized name: {version: wheel file}} of the wheels in `folder`."""
    found: dict[str, dict[str, Path]] = {}
    for wheel in sorted(folder.glob("*.whl")) if folder.is_dir() else []:
        name, version = wheel.name.split("-")[:2]
        found.setdefault(normalize(name), {})[version] = wheel
    return found


def installed_versions() -> dict[str, str]:
    """{normalized name: version} of what this interpreter imports (a venv's own packages first)."""
    out: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            out.setdefault(normalize(name), dist.version)
    return out


@dataclass
class Plan:
    """What to do with every pin of the lock."""

    install: dict[str, str] = field(default_factory=dict)  # name -> wheel file
    kept: dict[str, str] = field(default_factory=dict)  # name -> version (the locked one)
    machine_own: dict[str, dict[str, str | None]] = field(default_factory=dict)  # name -> lock / machine
    deviations: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> lock / installed
    missing: dict[str, str] = field(default_factory=dict)  # name -> locked version


def plan(pins: dict[str, str], installed: dict[str, str], wheels: dict[str, dict[str, Path]]) -> Plan:
    """Decide, for every pin, between the machine's package, the installed one and a carried wheel."""
    out = Plan()
    for name, version in sorted(pins.items()):
        have = installed.get(name)
        if MACHINE_OWN.match(name):
            out.machine_own[name] = {"lock": version, "machine": have}
        elif have == version:
            out.kept[name] = version
        elif version in wheels.get(name, {}):
            out.install[name] = str(wheels[name][version])
        elif have is not None:
            out.deviations[name] = {"lock": version, "installed": have}
        else:
            out.missing[name] = version
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", type=Path, default=Path("requirements.lock"))
    parser.add_argument("--wheels", type=Path, default=Path(".whl"))
    parser.add_argument("--project", type=Path, default=Path("."))
    parser.add_argument("--target", type=Path, default=None, help="install the wheels into this folder")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, install nothing")
    parser.add_argument("--allow-missing", action="store_true", help="install what is there, report the rest")
    args = parser.parse_args()
    decided = plan(read_lock(args.lock), installed_versions(), wheel_versions(args.wheels))
    report = {"python": sys.version.split()[0], "wheels": str(args.wheels), **asdict(decided)}
    report["counts"] = {k: len(v) for k, v in asdict(decided).items()}
    print(json.dumps(report, indent=2))
    if decided.missing and not args.allow_missing:
        raise SystemExit(
            f"{len(decided.missing)} locked packages are neither installed nor in {args.wheels}: "
            f"{', '.join(f'{k}=={v}' for k, v in decided.missing.items())}"
        )
    if args.dry_run:
        return
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-cache-dir"]
    if args.target is not None:
        pip += ["--no-compile", "--upgrade", "--target", str(args.target)]
    if decided.install:
        subprocess.run([*pip, *decided.install.values()], check=True)
    if args.target is None:
        subprocess.run([*pip, "--no-build-isolation", "-e", str(args.project)], check=True)


if __name__ == "__main__":
    main()
