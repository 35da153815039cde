"""Licence of every direct dependency in pyproject.toml, read from the installed package metadata.

Prints a markdown table (the README's "Licences" section) and exits non-zero when a default
dependency is GPL or AGPL (optional extras may be; LGPL is allowed).

Usage: python tools/licences.py [--pyproject pyproject.toml]
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import re
import sys
import tomllib
from pathlib import Path

_COPYLEFT = re.compile(r"(?<![L\w])A?GPL|(?<!Lesser )(?<!Library )General Public License", re.IGNORECASE)


def requirement_name(requirement: str) -> str:
    """`"pydicom>=3.0,<3.1"` -> `"pydicom"` (extras and markers dropped)."""
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0]


def direct_dependencies(pyproject: Path) -> dict[str, str]:
    """name -> group ("default" or the optional extra's name) of every requirement in pyproject."""
    project = tomllib.loads(pyproject.read_text())["project"]
    groups = {requirement_name(r): "default" for r in project.get("dependencies", [])}
    for extra, requirements in project.get("optional-dependencies", {}).items():
        for r in requirements:
            groups.setdefault(requirement_name(r), extra)
    return groups


_LICENCE_NAME = re.compile(r"MIT|BSD|Apache|GPL|MPL|PSF|ISC|Zlib|CC0|Unlicense", re.IGNORECASE)


def installed_licence(name: str) -> str | None:
    """License-Expression, else the licence classifiers, else a short License field that names a
    licence; None if not installed. Packages that state none read "see the package"."""
    try:
        meta = metadata.metadata(name)
    except metadata.PackageNotFoundError:
        return None
    if meta.get("License-Expression"):
        return meta["License-Expression"].strip()
    classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or []
                   if c.startswith("License ::") and c.strip() != "License :: OSI Approved"]  # fmt: skip
    if classifiers:
        return "; ".join(classifiers)
    text = (meta.get("License") or "").strip().splitlines()
    if text and len(text[0]) <= 60 and _LICENCE_NAME.search(text[0]):
        return text[0]
    return "see the package (no licence field)"


def is_copyleft(licence: str) -> bool:
    """GPL or AGPL (any version); LGPL is not counted."""
    return bool(_COPYLEFT.search(licence))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=Path(__file__).resolve().parents[1] / "pyproject.toml")
    args = parser.parse_args()
    rows, bad = [], []
    for name, group in direct_dependencies(args.pyproject).items():
        licence = installed_licence(name)
        version = metadata.version(name) if licence is not None else "not installed"
        rows.append(f"| {name} | {version} | {licence or '-'} | {group} |")
        if group == "default" and licence and is_copyleft(licence):
            bad.append(name)
    print("| package | version | licence | group |\n|---|---|---|---|\n" + "\n".join(rows))
    if bad:
        print(f"copyleft default dependencies: {', '.join(bad)}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
