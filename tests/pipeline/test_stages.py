"""Specification of how the flow runs DVC stages and classifies their failures."""

from __future__ import annotations

import pytest

from pipeline.stages import FailureKind, StageFailed, classify_failure, run_stage, stage_order


@pytest.mark.parametrize(
    ("returncode", "output", "kind"),
    [
        (1, "ERROR: failed to reproduce 'ingest@target': Unable to acquire lock", FailureKind.LOCKED),
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
