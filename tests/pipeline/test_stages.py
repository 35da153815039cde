"""Specification of how the flow runs DVC stages and classifies their failures."""

from __future__ import annotations

import subprocess

import pytest

from pipeline.stages import (
    FailureKind,
    StageFailed,
    classify_failure,
    push_outputs,
    render_metrics,
    run_stage,
    stage_environment,
    stage_order,
)


@pytest.mark.parametrize(
    ("returncode", "output", "kind"),
    [
        (1, "ERROR: failed to reproduce 'ingest@target': Unable to acquire lock", FailureKind.LOCKED),
        (255, "ERROR: failed to reproduce 'a': '/p/a.txt' is busy, it is being blocked by:\n  (PID 7): dvc repro",
         FailureKind.LOCKED),
        (-9, "", FailureKind.TRANSIENT),
        (137, "Killed", FailureKind.TRANSIENT),
        (1, "mlflow: Connection refused", FailureKind.TRANSIENT),
        (1, "RuntimeError: CUDA error: out of memory", FailureKind.TRANSIENT),
        (1, "error: params.yaml: invalid parameters: ingest.wrokers: unknown key", FailureKind.ERROR),
        (1, "ResidualPHIError: 2 leaks", FailureKind.ERROR),
    ],
)
def test_failures_are_classified_so_only_transient_ones_are_retried(returncode, output, kind):
    assert classify_failure(returncode, output) is kind


def test_stage_order_follows_dependencies(scratch_project):
    assert stage_order(scratch_project) == ["make_a", "make_b"]


def test_unchanged_stage_is_skipped_by_dvc(scratch_project):
    assert run_stage("make_a", scratch_project).ran
    assert not run_stage("make_a", scratch_project).ran
    assert run_stage("make_a", scratch_project, force=True).ran


def test_a_failing_stage_raises_with_its_output(scratch_project):
    (scratch_project / "dvc.yaml").write_text(
        "stages:\n  broken:\n    cmd: python -c \"raise SystemExit('bad input: x.dcm')\"\n"
    )
    with pytest.raises(StageFailed, match="bad input: x.dcm") as info:
        run_stage("broken", scratch_project)
    assert info.value.kind is FailureKind.ERROR


def test_push_sends_stage_outputs_to_the_dvc_remote(scratch_project, tmp_path_factory):
    remote = tmp_path_factory.mktemp("remote")
    subprocess.run(["dvc", "remote", "add", "-d", "store", str(remote)], cwd=scratch_project, env=stage_environment(),
                   check=True, capture_output=True)  # fmt: skip
    run_stage("make_a", scratch_project)
    push_outputs(scratch_project)
    pushed = [p for p in remote.rglob("*") if p.is_file()]
    assert len(pushed) == 1 and pushed[0].read_text() == "1"  # a.txt, content-addressed


def test_push_without_a_remote_fails_as_a_data_error_not_a_transient_one(scratch_project):
    run_stage("make_a", scratch_project)
    with pytest.raises(StageFailed) as failure:
        push_outputs(scratch_project)
    assert failure.value.kind is not FailureKind.TRANSIENT


def test_metrics_artifact_is_a_narrow_table_per_file_with_nested_keys_dotted_and_lists_left_out():
    text = render_metrics({
        "metrics/eval.json": {"macro_f1": 0.674204, "n_units": 45},
        "reports/gan_quality.json": {"archs": {"acgan": {"mean_fidelity": 0.3333}}, "details": [1, 2]},
        "reports/empty.json": {"details": []},
    })  # fmt: skip
    assert "### metrics/eval.json" in text and "| macro_f1 | 0.6742 |" in text and "| n_units | 45 |" in text
    assert "| archs.acgan.mean_fidelity | 0.3333 |" in text and "details" not in text
    assert "empty.json" not in text
    assert max(len(line) for line in text.splitlines()) < 80


def test_a_stage_whose_outputs_another_dvc_process_holds_fails_as_locked(scratch_project):
    """DVC 3.67 reports a held stage lock as "'<path>' is busy, it is being blocked by: (PID n): ..."."""
    from dvc.fs import localfs
    from dvc.rwlock import rwlock

    tmp_dir = scratch_project / ".dvc" / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    out = str(scratch_project / "a.txt")
    held = rwlock(str(tmp_dir), localfs, "dvc repro make_a", [], [out], False)  # as a running repro holds it
    with held, pytest.raises(StageFailed) as exc:
        run_stage("make_a", scratch_project)
    assert "is busy" in str(exc.value)
    assert exc.value.kind is FailureKind.LOCKED
    assert "another DVC process" in str(exc.value)


def test_a_held_repository_lock_fails_as_locked(scratch_project):
    from dvc.repo import Repo

    with Repo(str(scratch_project)) as repo, repo.lock, pytest.raises(StageFailed) as exc:
        run_stage("make_a", scratch_project)
    assert exc.value.kind is FailureKind.LOCKED
