"""Deploy the `retrain` flow to a Prefect work pool, so workers on other machines run it.

    prefect work-pool create bonescan --type process     # once, on the shared Prefect server
    python -m pipeline.deploy --pool bonescan              # from the checkout the workers run in
    prefect worker start --pool bonescan                   # on every machine that should run it

Unlike `pipeline.serve`, no process of ours has to stay up: the server schedules runs (cron from
params' `orchestration.cron`) and any worker polling the pool picks them up. The deployment points at
a project directory: each worker runs the flow there, so that path must hold a bonescan checkout
(with its DVC cache filled, e.g. by `dvc pull` after cloning) on every worker machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

from bonescan.config import load_params
from pipeline.flows import retrain
from pipeline.serve import DEPLOYMENT

ENTRYPOINT = "pipeline/flows.py:retrain"  # relative to the project directory


def deploy(
    pool: str,
    project_root: str | Path = ".",
    *,
    name: str = DEPLOYMENT,
    cron: str | None = None,
    schedule: bool = True,
    work_queue: str | None = None,
) -> UUID:
    """Create or update the deployment of `retrain` on work pool `pool`.

    Args:
        pool: an existing Prefect work pool (`prefect work-pool create NAME --type process`).
        project_root: the bonescan checkout, at the same path on the worker machines; the flow is
            loaded from its `pipeline/flows.py` and runs its DVC stages there.
        name: deployment name; runs start with `prefect deployment run retrain/NAME`.
        cron: schedule; default `orchestration.cron` from the project's params.yaml.
        schedule: False deploys without a schedule (runs only when triggered).
        work_queue: a queue of the pool (e.g. one per GPU type); default the pool's default queue.

    Returns:
        The deployment id.

    Raises:
        ValueError: the work pool does not exist.
    """
    root = Path(project_root).resolve()
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            raise ValueError(
                f"no Prefect work pool {pool!r} on {client.api_url}; create it with "
                f"`prefect work-pool create {pool} --type process`"
            ) from None
    cfg = load_params(root / "params.yaml").orchestration
    flow = retrain.from_source(source=str(root), entrypoint=ENTRYPOINT)
    # `to_deployment().apply()` rather than `flow.deploy()`: deploy() first lists the pool's online
    # workers, a request prefect 3.8.8's server rejects under fastapi 0.152 (422 on `limit: null`).
    deployment = flow.to_deployment(
        name=name,
        work_pool_name=pool,
        work_queue_name=work_queue,
        cron=(cron or cfg.cron) if schedule else None,
        parameters={
            "project_root": str(root),
            "stage_timeout_s": cfg.stage_timeout_s,
            "training_timeout_s": cfg.training_timeout_s,
        },
        concurrency_limit=1,  # two runs in one checkout would only queue on DVC's repo lock
        tags=["bonescan"],
    )
    return deployment.apply(work_pool_name=pool)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", required=True, help="Prefect work pool the workers poll")
    parser.add_argument(
        "--project-root", default=".", help="bonescan checkout the workers run in (default: cwd)"
    )
    parser.add_argument("--name", default=DEPLOYMENT, help="deployment name (default: %(default)s)")
    parser.add_argument("--cron", help="cron schedule (default: orchestration.cron in params.yaml)")
    parser.add_argument("--no-schedule", action="store_true", help="deploy without a schedule (manual runs)")
    parser.add_argument("--work-queue", help="work queue of the pool (default: the pool's default queue)")
    args = parser.parse_args(argv)
    try:
        deployment_id = deploy(
            args.pool,
            args.project_root,
            name=args.name,
            cron=args.cron,
            schedule=not args.no_schedule,
            work_queue=args.work_queue,
        )
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(
        f"deployed retrain/{args.name} ({deployment_id}) to work pool {args.pool!r}; "
        f"start a worker with: prefect worker start --pool {args.pool}"
    )


if __name__ == "__main__":
    main()
