"""Serve the `retrain` flow on a schedule: `python -m pipeline.serve --cron "0 2 * * 1"`.

Start a Prefect server first (`prefect server start`, UI on http://127.0.0.1:4200) and point this
process at it (`export PREFECT_API_URL=http://127.0.0.1:4200/api`); scheduled and past runs then show
in the UI, and `prefect deployment run retrain/bonescan-retrain` triggers one by hand.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bonescan.config import load_params
from pipeline.flows import retrain

DEPLOYMENT = "bonescan-retrain"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cron", help="cron schedule (default: orchestration.cron in params.yaml)")
    parser.add_argument("--project-root", default=".", help="bonescan project to run in (default: cwd)")
    parser.add_argument("--name", default=DEPLOYMENT, help="deployment name (default: %(default)s)")
    parser.add_argument("--no-schedule", action="store_true", help="serve without a schedule (manual runs)")
    args = parser.parse_args(argv)
    root = Path(args.project_root).resolve()
    cfg = load_params(root / "params.yaml").orchestration
    retrain.serve(
        name=args.name,
        cron=None if args.no_schedule else (args.cron or cfg.cron),
        parameters={
            "project_root": str(root),
            "stage_timeout_s": cfg.stage_timeout_s,
            "training_timeout_s": cfg.training_timeout_s,
        },
        tags=["bonescan"],
    )


if __name__ == "__main__":
    main()
