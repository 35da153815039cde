"""Specification of dvc.yaml's code deps and of the import graph: every module a stage's function imports
is a dep of that stage (so `dvc repro` re-runs it when that code changes), and no stage module imports
another stage module (shared concepts live in their homes). Also: the phantoms stage depends on every
phantoms key but the worker count."""

from __future__ import annotations

import ast
import re
import subprocess
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml

from bonescan.config import IngestConfig, PhantomConfig

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
# Stage -> the module holding its function (cli.py is the thin layer around them).
STAGE_MODULES = {
    "phantoms": "bonescan.dicom.phantom",
    "ingest": "bonescan.ingest",
    "split": "bonescan.data.split",
    "ceiling": "bonescan.ceiling",
    "gan_pretrain": "bonescan.gan.train",
    "gan_finetune": "bonescan.gan.train",
    "synthesize": "bonescan.gan.synthesize",
    "augment": "bonescan.data.augment",
    "clf_pretrain": "bonescan.train",
    "clf_finetune": "bonescan.train",
    "evaluate": "bonescan.evaluate",
    "promote": "bonescan.model_registry.stage",
    "report": "bonescan.report.build",
}
# Modules that are stages (or the stage side of a package); none may import another.
STAGES = {
    "bonescan.ingest", "bonescan.data.split", "bonescan.ceiling", "bonescan.gan.train", "bonescan.gan.synthesize",
    "bonescan.data.augment", "bonescan.train", "bonescan.evaluate", "bonescan.predict",
    "bonescan.model_registry.stage", "bonescan.report.build",
}  # fmt: skip
# Known exceptions, each with its reason; an entry that no longer applies fails the test.
ALLOWED_STAGE_IMPORTS = {
    ("bonescan.train", "bonescan.data.augment"): "online augmentation builds its transform in the loader",
}
NOT_A_CODE_DEP = {"src/bonescan/config.py", "src/bonescan/__init__.py"}  # params; the version string


def _docstring_only(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def _file(module: str) -> Path | None:
    base = SRC / module.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(module: str) -> set[str]:
    """bonescan modules `module` imports, at any level of its code."""
    path = _file(module)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        found |= {name for name in names if name.startswith("bonescan") and _file(name) is not None}
    return found


def _closure(module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        parts = current.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # importing a.b runs a/__init__.py
        todo += sorted(_imports(current))
    return seen


def _stage_deps(stage: dict) -> list[str]:
    body = stage.get("do", stage)
    return [d for d in body.get("deps", []) if isinstance(d, str) and d.startswith("src/")]


DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.parametrize("stage", sorted(STAGE_MODULES))
def test_every_module_a_stage_imports_is_one_of_its_code_deps(stage):
    deps = _stage_deps(DVC["stages"][stage])
    files = {_file(m).relative_to(ROOT).as_posix() for m in _closure(STAGE_MODULES[stage])
             if not _docstring_only(_file(m))}  # fmt: skip
    missing = sorted(
        f for f in files - NOT_A_CODE_DEP if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)
    )
    assert not missing, f"dvc.yaml stage {stage!r} lacks code deps {missing}"
    stale = sorted(d for d in deps if not (ROOT / d).exists())
    assert not stale, f"dvc.yaml stage {stage!r} lists code deps that do not exist: {stale}"


def test_no_stage_module_imports_another_stage_module():
    found = {(m, i) for m in STAGES for i in _imports(m) if i in STAGES and i != m}
    assert found - ALLOWED_STAGE_IMPORTS.keys() == set()
    assert ALLOWED_STAGE_IMPORTS.keys() <= found  # an exception that no longer applies is removed


def test_the_phantoms_stage_depends_on_every_phantoms_key_but_the_worker_count():
    # A key missing here would leave a stale cohort in DVC's cache; `workers` changes no byte of it.
    expected = {f"phantoms.{key}" for key in PhantomConfig.model_fields} - {"phantoms.workers"}
    assert set(DVC["stages"]["phantoms"]["params"]) == expected


def test_the_ingest_stage_depends_on_every_ingest_key_but_how_many_processes_decode():
    # serial and parallel ingest write the same bytes (tests/test_ingest.py); any other key may change them
    expected = {f"ingest.{key}" for key in IngestConfig.model_fields} - {"ingest.workers", "ingest.chunksize"}
    listed = {p for p in DVC["stages"]["ingest"]["do"]["params"] if p.startswith("ingest")}
    assert listed == expected


def _resolved(path: str) -> str | None:
    """`${a.b}` in a dvc.yaml path, from params.yaml; None for a foreach stage's `${item...}` / `${key}`."""

    def lookup(match: re.Match) -> str:
        node = PARAMS
        for part in match.group(1).split("."):
            node = node[part]
        return str(node)

    return None if "${item" in path or "${key" in path else re.sub(r"\$\{([^}]+)\}", lookup, path)


def test_every_uncached_out_is_one_git_keeps_so_an_experiment_copy_has_it():
    # `dvc exp run` works in a copy with git's files and DVC's cache: an uncached, git-ignored out is
    # missing there, and the stage re-runs in every experiment though its inputs did not change
    uncached = []
    for name, stage in DVC["stages"].items():
        for out in stage.get("do", stage).get("outs", []) + stage.get("do", stage).get("metrics", []):
            if isinstance(out, dict):
                (path, options), = out.items()
                if options.get("cache") is False and (resolved := _resolved(path)):
                    uncached.append((name, resolved))
    assert uncached  # plots, metrics, reports
    ignored = subprocess.run(["git", "check-ignore", *(p for _, p in uncached)], cwd=ROOT,
                             capture_output=True, text=True).stdout.split()
    assert not ignored, f"uncached outs that git ignores: {[(n, p) for n, p in uncached if p in ignored]}"
    # ... nor any file inside one, unless DVC ignores it too (it would change the out's hash in the copy)
    dvcignore = set(_patterns(ROOT / ".dvcignore"))
    inside = [pattern for pattern in _patterns(ROOT / ".gitignore") for _, out in uncached
              if _inside(pattern, out) and pattern not in dvcignore]
    assert not inside, f".gitignore patterns inside uncached outs, missing from .dvcignore: {inside}"


def _patterns(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _inside(pattern: str, out: str) -> bool:
    """Whether a gitignore pattern names files below the folder `out`."""
    parts, out_parts = pattern.strip("/").split("/"), out.strip("/").split("/")
    return len(parts) > len(out_parts) and all(fnmatch(o, p) for o, p in zip(out_parts, parts, strict=False))
