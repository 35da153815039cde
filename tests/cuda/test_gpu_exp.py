"""benchmarks/gpu_exp.py: the short run of the papers' settings that benchmarks/gpu.sh starts with
`dvc exp run`. Runs everywhere (no CUDA needed): it checks the params the GPU run would train with.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from bonescan.config import parse_params

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_exp():
    spec = importlib.util.spec_from_file_location("gpu_exp", ROOT / "benchmarks" / "gpu_exp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _params_with(overrides: dict[str, object]):
    """params.yaml with dotted keys set as `dvc exp run -S key=value` sets them (the value read as YAML)."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return parse_params(raw)


def _as_dvc_reads_them(gpu_exp, overrides: dict[str, object]) -> dict[str, object]:
    return {key: yaml.safe_load(gpu_exp.yaml_value(value)) for key, value in overrides.items()}


def test_the_short_run_trains_the_papers_settings_for_two_epochs_without_imagenet(gpu_exp):
    short = _params_with(_as_dvc_reads_them(gpu_exp, gpu_exp.overrides("yu2023", 2, "no", tiny=False)))
    paper = _params_with({"clf.preset": "yu2023", "gan.preset": "paper"})
    assert (short.clf.pretrain.epochs, short.clf.finetune.epochs) == (2, 2)
    assert (short.gan.pretrain.epochs, short.gan.finetune.epochs) == (2, 2)
    assert short.clf.pretrain_init == "none" and paper.clf.pretrain_init == "imagenet"
    ignore = {"preset", "pretrain_init"}
    clf_short, clf_paper = short.clf.model_dump(exclude=ignore), paper.clf.model_dump(exclude=ignore)
    for stage in ("pretrain", "finetune"):
        clf_short[stage].pop("epochs"), clf_paper[stage].pop("epochs")
    assert clf_short == clf_paper  # multiscale, RAdam lr 1e-4, batch 4, no schedule, cross-entropy
    gan_short, gan_paper = short.gan.model_dump(exclude={"preset"}), paper.gan.model_dump(exclude={"preset"})
    for stage in ("pretrain", "finetune"):
        gan_short[stage].pop("epochs"), gan_paper[stage].pop("epochs")
    assert gan_short == gan_paper  # full size, default widths, z_dim 128, batch 2, lr 2e-4, Eq. 2-4


def test_preset_keys_win_over_keys_set_next_to_them_which_is_why_the_short_run_spells_them_out():
    # If this starts failing, config.py lets explicit keys win and gpu.sh could pass the presets directly.
    both = _params_with({"clf.preset": "yu2023", "clf.finetune.epochs": 2, "gan.preset": "paper",
                         "gan.finetune.epochs": 2})  # fmt: skip
    assert both.clf.finetune.epochs == 500 and both.gan.finetune.epochs == 500


def test_the_tiny_run_keeps_the_papers_optimisation_at_small_sizes(gpu_exp):
    tiny = _params_with(_as_dvc_reads_them(gpu_exp, gpu_exp.overrides("yu2023", 1, "no", tiny=True)))
    assert tiny.clf.model == "multiscale" and tiny.clf.finetune.optimizer == "radam"
    assert tuple(tiny.base.image_size) == (64, 32) and tiny.gan.model.image_size is None
    assert tiny.gan.train.batch_size == 2 and tiny.clf.finetune.epochs == 1
