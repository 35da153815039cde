"""The paper's grid as DVC experiments: queue commands, params validation, and the results table."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bonescan.config import ConfigError
from bonescan.experiments import (
    VARIANTS,
    ExperimentResult,
    PairedDifference,
    collect_results,
    dataset_label,
    dvc_exp_show,
    enqueue,
    grid,
    identify_variant,
    paired_difference,
    pairing_labels,
    queue_command,
    render_markdown,
    validate_overrides,
)


def _state(rev: str, name: str | None, params: dict, metrics: dict | None, metrics_error: str = "") -> dict:
    """One ExpState of `dvc exp show --json` (DVC 3.67), as DVC writes it."""
    if metrics is not None:
        metrics_entry = {"metrics/eval.json": {"data": metrics}}
    elif metrics_error:
        metrics_entry = {"metrics/eval.json": {"error": {"type": "FileNotFoundError", "msg": metrics_error}}}
    else:
        metrics_entry = {}
    return {
        "rev": rev,
        "name": name,
        "data": {
            "rev": rev,
            "timestamp": None if rev == "workspace" else "2026-11-22T21:12:02",
            "params": {"params.yaml": {"data": params}},
            "metrics": metrics_entry,
            "deps": {"src/bonescan/evaluate.py": {"hash": "9662b0b5e604079fe73fb410601cd39a", "size": 287,
                                                  "nfiles": None}},
            "outs": {},
            "meta": {},
        },
        "error": None,
        "experiments": None,
    }


def _params(variant: int, model: str) -> dict:
    raw: dict = {"clf": {"model": model, "pretrain_source": "source"}, "evaluate": {"ci": 0.95},
                 "augment": {"factor": 3}, "gan": {"synthesize": {}}}
    for key, value in VARIANTS[variant].overrides.items():
        section, *rest = key.split(".")
        node = raw[section]
        for part in rest[:-1]:
            node = node.setdefault(part, {})
        node[rest[-1]] = value
    return raw


def _metrics(acc: float, f1: float) -> dict:
    return {"accuracy": acc, "accuracy_ci_low": acc - 0.1, "accuracy_ci_high": acc + 0.05,
            "macro_f1": f1, "macro_f1_ci_low": f1 - 0.2, "macro_f1_ci_high": f1 + 0.1}


def _exp_show() -> list[dict]:
    """Workspace + one commit with three experiments: two finished, one queued (real DVC 3.67 layout)."""
    done_1 = _state("93e6735338cf26bb806c16f1617cd65e892e2600", "v1-multiscale", _params(1, "multiscale"),
                    _metrics(0.8, 0.7))
    done_5 = _state("5587eec0de4414ee6554b009ce1d9664a0d1a3fb", "v5-multiscale", _params(5, "multiscale"),
                    _metrics(0.9, 0.85))
    queued = _state("5bdb41d5b6f1a4c345650b4baebaa905006cb3c5", "v3-resnet34", _params(3, "resnet34"), None)
    baseline = _state("3e21791214d50d5191efbfbce70cfe373ef262b1", "main", _params(4, "mobilenet_v3_small"),
                      None, metrics_error="[Errno 2] No such file or directory: 'metrics/eval.json'")
    baseline["experiments"] = [
        {"revs": [done_5], "executor": None, "name": "v5-multiscale"},
        {"revs": [done_1], "executor": None, "name": "v1-multiscale"},
        {"revs": [queued], "name": "v3-resnet34",
         "executor": {"state": "queued", "name": "dvc-task",
                      "local": {"root": None, "log": None, "pid": None, "returncode": None,
                                "task_id": "5bdb41d5b6f1a4c345650b4baebaa905006cb3c5"}}},
    ]
    workspace = _state("workspace", None, _params(5, "multiscale"), _metrics(0.9, 0.85))
    return [workspace, baseline]


def test_grid_is_the_product_of_variants_models_and_pretraining():
    cells = grid([1, 3, 5], ["multiscale", "resnet34"], ["imagenet", "none"], extra={"augment.factor": 15})
    assert len(cells) == 12
    assert len({c.name for c in cells}) == 12
    cell = next(c for c in cells if c.variant == 3 and c.model == "resnet34" and c.pretrain == "none")
    assert cell.name == "v3-resnet34-none"
    assert cell.overrides["gan.synthesize.arch"] == "mu_acgan"
    assert cell.overrides["clf.pretrain_source"] == "none" and cell.overrides["augment.factor"] == 15


def test_queue_command_writes_values_the_way_dvc_reads_them_back():
    cell = grid([2], ["mobilenet_v3_small"])[0]
    cmd = queue_command(cell)
    assert cmd[:6] == ["dvc", "exp", "run", "--queue", "-n", "v2-mobilenet-v3-small"]
    assert all(arg.startswith("++") for arg in cmd[7::2])  # add-or-override: defaults may be absent
    sets = dict(arg[2:].split("=", 1) for arg in cmd[7::2])
    assert sets == {
        "augment.mode": "none",
        "gan.synthesize.count": "null",
        "gan.synthesize.arch": "acgan",
        "clf.model": "mobilenet_v3_small",
    }
    assert {k: yaml.safe_load(v) for k, v in sets.items()} == cell.overrides


def test_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match="unknown dataset variant"):
        grid([6])


def test_overrides_are_validated_against_the_real_params_before_queueing():
    raw = yaml.safe_load(Path("params.yaml").read_text())
    validate_overrides(raw, grid(list(VARIANTS), ["multiscale", "resnet34"], ["imagenet", "source", "none"]))
    with pytest.raises(ConfigError, match="augment.factr"):
        validate_overrides(raw, grid([4], extra={"augment.factr": 15}))
    with pytest.raises(ValueError, match="unknown model"):
        validate_overrides(raw, grid([1], ["resnet35"]))


def test_every_variant_is_recognised_from_its_params():
    for number in VARIANTS:
        assert identify_variant(_params(number, "multiscale")) == number
    assert identify_variant({"clf": {"model": "x"}}) is None


def test_traditional_augmentation_written_offline_is_the_same_variant_as_drawn_online():
    params = _params(5, "multiscale")
    assert params["augment"]["mode"] == "online"  # what a queued cell runs: the default mode
    params["augment"]["mode"] = "offline"
    assert identify_variant(params) == 5
    params["augment"]["mode"] = "none"
    assert identify_variant(params) == 3


def test_collector_reads_experiments_states_and_metrics_from_exp_show_json():
    results = collect_results(_exp_show())
    assert [r.name for r in results] == ["v5-multiscale", "v1-multiscale", "v3-resnet34"]
    by_name = {r.name: r for r in results}
    assert by_name["v5-multiscale"].state == "done" and by_name["v5-multiscale"].variant == 5
    assert by_name["v5-multiscale"].metrics["accuracy"] == 0.9
    assert by_name["v3-resnet34"].state == "queued" and by_name["v3-resnet34"].metrics == {}
    with_baselines = collect_results(_exp_show(), include_baselines=True)
    assert [r.name for r in with_baselines][:2] == ["workspace", "main"]
    assert "No such file" in with_baselines[1].error


def test_an_unchanged_workspace_is_not_listed_twice():
    exp_show = _exp_show()
    workspace, commit = exp_show
    commit["data"] = workspace["data"]  # nothing uncommitted: the same params and metrics
    names = [r.name for r in collect_results(exp_show, include_baselines=True)]
    assert "workspace" not in names and "main" in names


def test_markdown_table_has_one_row_per_experiment_with_intervals_and_a_pivot():
    text = render_markdown(collect_results(_exp_show()), columns=("accuracy", "macro_f1"))
    table = [line for line in text.splitlines() if line.startswith("| v")]
    assert [line.split(" | ")[0] for line in table[:3]] == ["| v1-multiscale", "| v3-resnet34", "| v5-multiscale"]
    assert "| 1 original | multiscale | source | done | 0.800 [0.700, 0.850] | 0.700 [0.500, 0.800] |" in text
    assert "| queued | - | - |" in text
    assert "## macro_f1 by model and dataset variant" in text
    assert "| multiscale | 0.700 [0.500, 0.800] | 0.850 [0.650, 0.950] |" in text


def test_queued_overrides_land_in_the_experiment_params_dvc_reports(tmp_path, monkeypatch):
    """Round trip through real git + DVC: enqueue -> `dvc exp show --json` -> collector."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    (tmp_path / "params.yaml").write_text("clf:\n  model: mobilenet_v3_small\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  evaluate:\n    cmd: echo\n    params: [clf.model]\n"
        "    metrics:\n      - metrics/eval.json:\n          cache: false\n"
    )
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)
    try:
        enqueue(grid([3], ["resnet34"]), cwd=tmp_path)
        results = collect_results(dvc_exp_show(tmp_path))
    finally:
        subprocess.run(["dvc", "queue", "remove", "--all"], cwd=tmp_path, capture_output=True)
    assert [(r.name, r.state, r.variant) for r in results] == [("v3-resnet34", "queued", 3)]
    assert results[0].param("clf.model") == "resnet34"


def _run(name: str, variant: int, seed: int, f1: float, source: str = "none", gated: bool = True,
         gan: dict | None = None, **extra: object) -> ExperimentResult:
    """A finished run of `variant` with clf.seed `seed` (and other params in `extra`, dotted)."""
    params = _params(variant, "soft_threshold_net")
    params["clf"].update(pretrain_source=source, seed=seed)
    params["gan"]["synthesize"]["gated"] = gated
    for dotted, value in extra.items():
        section, key = dotted.split(".")
        params.setdefault(section, {})[key] = value
    return ExperimentResult(name, "abc1234", "done", params, _metrics(0.5, f1), variant=variant,
                            gan_quality=gan or {})


def test_paired_differences_say_whether_their_t_interval_excludes_zero():
    noisy = paired_difference([0.1, 0.2, 0.3])
    assert (noisy.n, noisy.higher) == (3, 3)
    assert noisy.mean == pytest.approx(0.2) and noisy.sd == pytest.approx(0.1)
    assert noisy.low == pytest.approx(0.2 - 4.303 * 0.1 / 3**0.5, abs=1e-4)  # t table: 4.303 at 2 degrees of freedom
    assert "interval includes 0" in noisy.verdict  # all three higher, yet three pairs cannot exclude 0
    assert paired_difference([0.10, 0.11, 0.12]).verdict.startswith("higher")
    assert paired_difference([-0.10, -0.11, -0.12]).verdict.startswith("lower")
    assert "no claim" in paired_difference([0.3]).verdict
    with pytest.raises(ValueError, match="no paired differences"):
        paired_difference([])


def test_a_paired_difference_reads_back_from_the_json_a_report_writes():
    original = paired_difference([0.10, 0.11, 0.12])
    written = json.loads(json.dumps({**dataclasses.asdict(original), "verdict": original.verdict}))
    assert PairedDifference.from_dict(written) == original

def test_runs_pair_by_the_params_outside_the_grid_axes_but_not_by_how_they_execute():
    runs = [_run("a", 1, 1, 0.5), _run("b", 5, 1, 0.6, **{"base.threads": 1}), _run("c", 1, 2, 0.4)]
    assert pairing_labels(runs) == ["clf.seed=1", "clf.seed=1", "clf.seed=2"]


def test_synthetic_variants_say_whether_the_gate_chose_their_images():
    assert dataset_label(_run("a", 5, 1, 0.5)) == "5 MU-ACGAN + traditional (gated)"
    assert dataset_label(_run("a", 5, 1, 0.5, gated=False)) == "5 MU-ACGAN + traditional (ungated)"
    assert dataset_label(_run("a", 4, 1, 0.5, gated=False)) == "4 traditional"  # no synthetic images: no gate


def test_table4_pairs_each_variant_with_the_original_images_of_the_same_seed():
    runs = [_run(f"s{seed}v{v}", v, seed, f1) for seed, f1s in ((1, (0.5, 0.6)), (2, (0.4, 0.52)), (3, (0.6, 0.69)))
            for v, f1 in zip((1, 4), f1s, strict=True)]
    text = render_markdown(runs, columns=("macro_f1",))
    table = text[text.index("## Table 4"):text.index("## Table 5") if "## Table 5" in text else None]
    assert "| pairing | 1 original | 4 traditional |" in table
    assert "| clf.seed=2 | 0.400 [0.200, 0.500] | 0.520 [0.320, 0.620] |" in table
    assert "| mean ± sd | 0.500 ± 0.100 (n=3) | 0.603 ± 0.085 (n=3) |" in table
    assert "- 4 traditional vs 1 original: macro_f1 +0.103 ± 0.015" in table and "3 of 3 higher" in table
    assert "higher; the interval excludes 0" in table


def test_table5_compares_pretraining_sources_against_none_and_leaves_unpaired_runs_out():
    runs = [_run("n1", 4, 1, 0.6), _run("s1", 4, 1, 0.5, source="source"),
            _run("n2", 4, 2, 0.7), _run("s2", 4, 2, 0.6, source="source"), _run("s3", 4, 3, 0.1, source="source")]
    text = render_markdown(runs, columns=("macro_f1",))
    table = text[text.index("## Table 5"):]
    assert "| pairing | none | source |" in table
    assert "| clf.seed=3 | - | 0.100 [-0.100, 0.200] |" in table
    assert "| paired difference vs none | - | -0.100 ± 0.000" in table and "0 of 2 higher" in table


def _gan_report(ssim_mu: float, ssim_ac: float, digest: str) -> dict:
    def arch(ssim: float, name: str) -> dict:
        cls = {"diversity_ssim": 0.6, "real_diversity_ssim": 0.5, "admitted": ssim > 0.4}
        return {"generator_sha256": f"{name}{digest}", "mean_ssim_to_real": ssim, "mean_fidelity": 0.5,
                "tstr_val_balanced_accuracy": 0.4, "classes": {"healthy": cls, "benign": cls}}
    return {"classifier": {"real_val_accuracy": 0.34}, "archs": {"mu_acgan": arch(ssim_mu, "m"), "acgan": arch(ssim_ac, "a")}}


def test_table3_lists_each_gan_training_once_and_pairs_mu_acgan_with_acgan():
    first, second = _gan_report(0.45, 0.40, "1"), _gan_report(0.50, 0.41, "2")
    runs = [_run("a", 1, 1, 0.5, gan=first), _run("b", 4, 2, 0.6, gan=first),  # one GAN, two classifiers
            _run("c", 1, 3, 0.5, gan=second, **{"gan.seed": 2})]
    text = render_markdown(runs, columns=("macro_f1",))
    table = text[text.index("## Table 3"):]
    assert table.count("| mu_acgan |") == 2  # the second classifier on the first GAN adds no row
    assert "| gan.seed=default | 0.340 | mu_acgan |" in table  # labelled by what the GAN depends on
    assert "| gan.seed=2 | 0.340 | acgan |" in table
    assert "| 0.340 | mu_acgan | 0.450 | 0.500 | 0.400 | 0.100 | 2 |" in table
    assert "over 2 GAN training(s)" in table
    assert "- SSIM to real: +0.070 ± 0.028" in table and "2 of 2 higher" in table


def test_two_gan_trainings_with_the_same_params_are_told_apart_by_their_run():
    runs = [_run("a", 1, 1, 0.5, gan=_gan_report(0.45, 0.40, "1")), _run("b", 1, 1, 0.5, gan=_gan_report(0.5, 0.4, "2"))]
    table = render_markdown(runs, columns=("macro_f1",)).split("## Table 3")[1]
    assert "| same params (a) | 0.340 | mu_acgan |" in table and "| same params (b) | 0.340 | mu_acgan |" in table
    assert "over 2 GAN training(s)" in table


def test_collector_reads_the_gan_report_dvc_shows_as_a_metric():
    exp_show = _exp_show()
    exp_show[1]["experiments"][0]["revs"][0]["data"]["metrics"]["reports/gan_quality.json"] = {
        "data": _gan_report(0.45, 0.4, "1")}
    results = {r.name: r for r in collect_results(exp_show)}
    assert results["v5-multiscale"].gan_quality["archs"]["acgan"]["mean_ssim_to_real"] == 0.4
    assert results["v1-multiscale"].gan_quality == {}
