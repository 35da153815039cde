"""The `retrain` flow: every DVC stage as a Prefect task, in pipeline order, under one MLflow parent run.

What Prefect adds on top of `dvc repro`: schedules and a UI, retries of transient failures only
(never of data errors or a held DVC lock), timeouts, a concurrency tag for the GPU-bound stages,
the run's metrics as a markdown artifact, and a link artifact to the run's offline HTML report. What it does not do: decide what to re-run. DVC skips
unchanged stages itself, so a scheduled run with no new data finishes in seconds.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from bonescan import tracking
from bonescan.config import load_params
from pipeline.stages import (
    FailureKind,
    StageFailed,
    StageResult,
    metrics_markdown,
    push_outputs,
    run_stage,
    stage_order,
)

GPU_TAG = "gpu"  # `prefect concurrency-limit create gpu 1` lets one training stage run per GPU
GPU_STAGE_PREFIXES = ("gan_", "clf_")


def retry_only_transient(task, task_run, state) -> bool:  # Prefect passes all three
    """Retry condition: only failures classified as transient are retried."""
    exc = state.data if isinstance(state.data, BaseException) else None
    return isinstance(exc, StageFailed) and exc.kind is FailureKind.TRANSIENT


@task(retries=2, retry_delay_seconds=30, retry_condition_fn=retry_only_transient, task_run_name="{stage}")
def dvc_stage(stage: str, project_root: str, parent_run_id: str | None, force: bool = False) -> StageResult:
    env = {tracking.PARENT_RUN_ENV: parent_run_id} if parent_run_id else {}
    result = run_stage(stage, project_root, env=env, force=force)
    get_run_logger().info("%s: %s in %.1f s", stage, "ran" if result.ran else "unchanged, skipped by DVC", result.seconds)
    return result


@task(retries=2, retry_delay_seconds=60, retry_condition_fn=retry_only_transient, task_run_name="dvc push")
def dvc_push(project_root: str, remote: str | None) -> str:
    output = push_outputs(project_root, remote)
    get_run_logger().info("dvc push: %s", output.splitlines()[-1] if output else "nothing to push")
    return output


def _tracking_on(project_root: str) -> bool:
    """params' tracking.enabled (true for a project without params.yaml), unless BONESCAN_TRACKING=0."""
    params_file = Path(project_root) / "params.yaml"
    enabled = load_params(params_file).tracking.enabled if params_file.is_file() else True
    return tracking.tracking_enabled(enabled)


def report_file(project_root: str) -> Path | None:
    """The run's HTML report (params' report.out) if the report stage has written it, else None."""
    params_file = Path(project_root) / "params.yaml"
    if not params_file.is_file():
        return None
    path = Path(project_root) / load_params(params_file).report.out
    return path if path.is_file() else None


def report_markdown(project_root: str) -> str:
    """The artifact's line naming the HTML report (a file on the worker: Prefect's UI cannot serve it)."""
    path = report_file(project_root)
    if path is None:
        return "HTML report: not built in this project (the `report` stage has not run)."
    return f"HTML report: [{path.name}]({path.as_uri()}) at `{path}` (self-contained; open it in a browser)."


def is_gpu_stage(stage: str) -> bool:
    return stage.startswith(GPU_STAGE_PREFIXES)


@flow(name="retrain", log_prints=True)
def retrain(
    project_root: str = ".",
    stages: list[str] | None = None,
    force: bool = False,
    stage_timeout_s: float = 2 * 3600,
    training_timeout_s: float = 24 * 3600,
    track: bool = True,
    push: bool = False,
    remote: str | None = None,
) -> list[StageResult]:
    """Bring every DVC stage up to date, in order.

    Args:
        project_root: the bonescan project (where dvc.yaml is).
        stages: run only these stages (names as in `dvc stage list`); default: all, in dependency order.
        force: re-run stages even when DVC finds them unchanged.
        stage_timeout_s: timeout of data stages; training stages get `training_timeout_s`.
        track: open one MLflow parent run for this pipeline run; stages log child runs under it (also off
            when params' tracking.enabled is false or BONESCAN_TRACKING=0).
        push: after the stages, `dvc push` the outputs to the DVC remote (a worker on another machine
            otherwise keeps its results in its own cache).
        remote: the DVC remote to push to; default: the project's default remote.
    """
    root = str(Path(project_root).resolve())
    order = stage_order(root)
    selected = order if stages is None else [s for s in order if s in set(stages) or s.split("@")[0] in set(stages)]
    track = track and _tracking_on(root)
    parent = tracking.start_pipeline_run(root, run_name="retrain") if track else None
    results: list[StageResult] = []
    status = "FAILED"
    try:
        for stage in selected:
            options = {"timeout_seconds": training_timeout_s if is_gpu_stage(stage) else stage_timeout_s}
            if is_gpu_stage(stage):
                options["tags"] = [GPU_TAG]
            results.append(
                dvc_stage.with_options(**options)(stage, root, parent.run_id if parent else None, force)
            )
        if push:
            dvc_push(root, remote)
        status = "FINISHED"
    finally:
        table = metrics_markdown(root)
        ran = ", ".join(r.stage for r in results if r.ran) or "none (all up to date)"
        create_markdown_artifact(
            markdown=f"# bonescan retrain\n\nStages run: {ran}\n\n{report_markdown(root)}\n\n{table}",
            key="bonescan-metrics",
            description="DVC metrics after this pipeline run",
        )
        report = report_file(root)
        if report is not None:
            create_link_artifact(link=report.as_uri(), link_text=str(report), key="bonescan-report",
                                 description="offline HTML report of this pipeline run (reports/index.html)")
            if parent:
                parent.set_tags({"bonescan.report": str(report)})
        if parent:
            parent.set_tags({"stages_run": ran, "dvc_lock_sha256_after": tracking.dvc_lock_hash(root)})
            tracking.finish(parent, status)
    return results
