"""The grid of Yu et al. 2023, Tables 4-7, as DVC experiments, and one table of their results.

Each cell of the grid is a DVC experiment: the same pipeline (`dvc.yaml`) with a few params changed
by `-S key=value`, queued with `dvc exp run --queue` and run with `dvc queue start`. DVC's run cache
shares every stage a cell does not change (ingest, split, GAN training), so the grid costs roughly
one classifier training and evaluation per cell. Axes:

- dataset variant (Table 4): 1 original, 2 ACGAN-balanced, 3 MU-ACGAN-balanced, 4 traditional
  augmentation, 5 MU-ACGAN + traditional augmentation (`VARIANTS`);
- model (Table 6): any of `bonescan.models.available()`, e.g. `PAPER_MODELS`;
- stage-1 pretraining (Table 5): `clf.pretrain_source` imagenet / source / none.

`collect_results` reads `dvc exp show --json` (DVC 3.x: a list of baselines, each with
`experiments`, a list of ranges whose first `revs` entry is the experiment's tip) and
`render_markdown` writes one table with confidence intervals, then Tables 3-5 as paired
comparisons: runs that agree on every param outside the axes (`AXIS_KEYS`; how a run executes,
`EXECUTION_KEYS`, does not count) form a pair, so cells queued per seed (`--set clf.seed=S`) are
compared seed by seed (`paired_difference`: mean, sd, Student-t interval, a verdict).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import shlex
import statistics
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from scipy.stats import t as student_t

from bonescan.config import apply_overrides, override_text, parse_params

__all__ = [
    "GAN_COLUMNS",
    "PAPER_MODELS",
    "VARIANTS",
    "PairedDifference",
    "ExperimentResult",
    "GridCell",
    "Variant",
    "collect_results",
    "dataset_label",
    "dvc_exp_show",
    "enqueue",
    "gan_comparison",
    "gan_values",
    "grid",
    "identify_variant",
    "paired_difference",
    "pairing_labels",
    "queue_command",
    "render_markdown",
    "validate_overrides",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """One training-set variant of Yu et al. 2023, Table 4, as params overrides."""

    number: int
    name: str
    overrides: Mapping[str, Any]
    # Other values under which a run still is this variant (traditional augmentation drawn online
    # or written offline is the same variant); queueing uses `overrides` (online: the default, and
    # +0.105 balanced accuracy over offline on the demo).
    also: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def holds_in(self, param: Callable[[str, Any], Any]) -> bool:
        """Whether every override (or one of its `also` values) is what `param(key)` reads."""
        return all(
            param(key, _MISSING) in (value, *self.also.get(key, ())) for key, value in self.overrides.items()
        )


# No synthetic images: gan.synthesize.count 0. Balanced: count null brings every class to the majority.
VARIANTS: dict[int, Variant] = {
    1: Variant(1, "original", {"augment.mode": "none", "gan.synthesize.count": 0}),
    2: Variant(
        2, "ACGAN", {"augment.mode": "none", "gan.synthesize.count": None, "gan.synthesize.arch": "acgan"}
    ),
    3: Variant(
        3, "MU-ACGAN", {"augment.mode": "none", "gan.synthesize.count": None, "gan.synthesize.arch": "mu_acgan"}
    ),
    4: Variant(
        4, "traditional", {"augment.mode": "online", "gan.synthesize.count": 0}, {"augment.mode": ("offline",)}
    ),
    5: Variant(
        5,
        "MU-ACGAN + traditional",
        {"augment.mode": "online", "gan.synthesize.count": None, "gan.synthesize.arch": "mu_acgan"},
        {"augment.mode": ("offline",)},
    ),
}

# The classifiers compared in Yu et al. 2023, Table 6 (the multi-scale model is theirs).
PAPER_MODELS: tuple[str, ...] = (
    "multiscale",
    "resnet34",
    "vgg16",
    "densenet121",
    "resnext50",
    "inception_v3",
    "mobilenet_v3_large",
    "efficientnet_b0",
)

DEFAULT_COLUMNS: tuple[str, ...] = (
    "accuracy",
    "macro_precision",
    "macro_recall",
    "macro_specificity",
    "macro_f1",
    "macro_auc",
)


@dataclass(frozen=True)
class GridCell:
    """One experiment of the grid: its name and the `-S` overrides that define it."""

    name: str
    variant: int
    model: str | None
    pretrain: str | None
    overrides: dict[str, Any]


def grid(
    variants: Sequence[int],
    models: Sequence[str | None] = (None,),
    pretrain: Sequence[str | None] = (None,),
    extra: Mapping[str, Any] | None = None,
    prefix: str = "",
) -> list[GridCell]:
    """Cartesian product variants x models x pretraining sources, as named override sets.

    Args:
        variants: numbers of `VARIANTS`.
        models: `clf.model` values; None keeps params.yaml's model.
        pretrain: `clf.pretrain_source` values; None keeps params.yaml's.
        extra: overrides added to every cell (e.g. {"clf.preset": "yu2023", "augment.factor": 15}).
        prefix: prepended to every experiment name (names must be unique in the repository).
    """
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown dataset variant(s) {unknown}; known: {sorted(VARIANTS)}")
    cells = []
    for number, model, source in itertools.product(variants, models, pretrain):
        overrides = dict(VARIANTS[number].overrides)
        if model is not None:
            overrides["clf.model"] = model
        if source is not None:
            overrides["clf.pretrain_source"] = source
        overrides.update(extra or {})
        parts = [f"{prefix}v{number}", model, source]
        name = "-".join(p.replace("_", "-") for p in parts if p)
        cells.append(GridCell(name, number, model, source, overrides))
    return cells


def queue_command(cell: GridCell) -> list[str]:
    """`dvc exp run --queue -n NAME -S ++key=value ...` for one cell.

    `++` is Hydra's add-or-override: a key left at its default (absent from params.yaml) is set
    too. Typos cannot slip through that way because `validate_overrides` checks every cell first.
    """
    cmd = ["dvc", "exp", "run", "--queue", "-n", cell.name]
    for key, value in cell.overrides.items():
        cmd += ["-S", f"++{key}={override_text(value)}"]
    return cmd


def validate_overrides(raw_params: Mapping[str, Any], cells: Iterable[GridCell]) -> None:
    """Fail before queueing if any cell's params would not load (typo'd key, bad value, unknown model).

    Raises:
        bonescan.config.ConfigError: naming the experiment and the bad key.
        ValueError: a model name that is not registered.
    """
    from bonescan.models import available

    models = set(available())
    for cell in cells:
        raw = apply_overrides(raw_params, cell.overrides)
        parse_params(raw, source=f"params.yaml with the overrides of experiment {cell.name!r}")
        model = raw.get("clf", {}).get("model")
        if model is not None and model not in models:
            raise ValueError(f"experiment {cell.name!r}: unknown model {model!r}; available: {sorted(models)}")


def enqueue(cells: Sequence[GridCell], cwd: str | Path = ".", dry_run: bool = False) -> list[str]:
    """Queue every cell as a DVC experiment (or only return the commands with `dry_run`).

    Returns:
        the shell-quoted commands, in order.
    """
    commands = [queue_command(cell) for cell in cells]
    for cmd in commands:
        if not dry_run:
            subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)
            log.info("queued %s", cmd[5])
    return [shlex.join(cmd) for cmd in commands]


def dvc_exp_show(cwd: str | Path = ".", all_commits: bool = False) -> list[dict]:
    """The parsed output of `dvc exp show --json` in `cwd`."""
    cmd = ["dvc", "exp", "show", "--json", *(["--all-commits"] if all_commits else [])]
    out = subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


@dataclass(frozen=True)
class ExperimentResult:
    """One experiment (or baseline) row of `dvc exp show`.

    Attributes:
        name: experiment name (or branch / "workspace" for a baseline).
        rev: git revision (first 7 characters).
        state: "done", or DVC's executor state: "queued", "running", "failed".
        params: params.yaml contents of the experiment.
        metrics: flat metrics of the metrics file (empty if not produced).
        error: why metrics are missing, if DVC said so.
    """

    name: str
    rev: str
    state: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    error: str = ""
    variant: int | None = field(default=None)
    gan_quality: dict[str, Any] = field(default_factory=dict)  # the synthesize stage's report (Table 3)

    def param(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.params
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node


def identify_variant(params: Mapping[str, Any]) -> int | None:
    """The `VARIANTS` number whose overrides all hold in `params`, or None."""
    result = ExperimentResult("", "", "", dict(params), {})
    for number, variant in VARIANTS.items():
        if variant.holds_in(result.param):
            return number
    return None


_MISSING = object()


def _state_result(
    state: dict, name: str, run_state: str, params_file: str, metrics_file: str, gan_report: str
) -> ExperimentResult:
    data = state.get("data") or {}
    params = ((data.get("params") or {}).get(params_file) or {}).get("data") or {}
    metrics_entry = (data.get("metrics") or {}).get(metrics_file) or {}
    gan_entry = (data.get("metrics") or {}).get(gan_report) or {}
    error = state.get("error") or metrics_entry.get("error") or {}
    return ExperimentResult(
        name=name,
        rev=str(state.get("rev", ""))[:7],
        state=run_state,
        params=params,
        metrics=metrics_entry.get("data") or {},
        error=str(error.get("msg", "")) if isinstance(error, dict) else str(error),
        variant=identify_variant(params),
        gan_quality=gan_entry.get("data") or {},
    )


def collect_results(
    exp_show: Sequence[dict],
    metrics_file: str = "metrics/eval.json",
    params_file: str = "params.yaml",
    include_baselines: bool = False,
    gan_report: str = "reports/gan_quality.json",
) -> list[ExperimentResult]:
    """Experiments (and optionally baselines) of a `dvc exp show --json` document.

    Args:
        exp_show: the parsed JSON: a list of baseline states (`rev`, `name`, `data`, `error`,
            `experiments`); each experiment range has `revs` (tip first), `executor`, `name`.
        metrics_file: which metrics file to read (the evaluate stage's).
        params_file: which params file to read.
        include_baselines: also return the commit rows, and the workspace row when it differs
            from every commit (uncommitted params or results); an unchanged workspace would only
            repeat its commit's row.
        gan_report: the synthesize stage's quality report (a DVC metrics file), for Table 3.
    """
    baselines: list[ExperimentResult] = []
    experiments: list[ExperimentResult] = []
    for baseline in exp_show:
        rev = str(baseline.get("rev", ""))
        name = baseline.get("name") or (rev if rev == "workspace" else rev[:7])
        baselines.append(_state_result(baseline, name, "done", params_file, metrics_file, gan_report))
        for exp_range in baseline.get("experiments") or []:
            revs = exp_range.get("revs") or []
            if not revs:
                continue
            tip = revs[0]
            executor = exp_range.get("executor") or {}
            state = executor.get("state") or "done"
            state = "done" if state == "success" else state
            name = exp_range.get("name") or tip.get("name") or str(tip.get("rev", ""))[:7]
            experiments.append(_state_result(tip, name, state, params_file, metrics_file, gan_report))
    if not include_baselines:
        return experiments
    commits = [(b.params, b.metrics) for b in baselines if b.name != "workspace"]
    shown = [b for b in baselines if b.name != "workspace" or (b.params, b.metrics) not in commits]
    return shown + experiments


def _cell(metrics: Mapping[str, Any], name: str) -> str:
    value = metrics.get(name)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    low, high = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
    if low is None or high is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _sort_key(r: ExperimentResult) -> tuple:
    return (r.variant if r.variant is not None else 99, str(r.param("clf.model", "")), r.name)


def render_markdown(
    results: Sequence[ExperimentResult],
    columns: Sequence[str] = DEFAULT_COLUMNS,
    primary: str = "macro_f1",
    paired_metrics: Sequence[str] = (),
) -> str:
    """One markdown table (value [CI low, CI high] per metric), a model x variant table of `primary`,
    and the paired comparisons of Tables 3-5 (`paired_metrics`, default `primary`)."""
    rows = sorted(results, key=_sort_key)
    ci = _ci_level(rows)
    lines = [
        "# Experiments (Yu et al. 2023, Tables 4-7)",
        "",
        f"Test-split metrics with {ci} patient-bootstrap intervals [low, high], from `dvc exp show`. "
        "Dataset variants: " + "; ".join(f"{n} {v.name}" for n, v in VARIANTS.items()) + ".",
        "",
        "| experiment | dataset | model | pretraining | state | " + " | ".join(columns) + " |",
        "|---" * (5 + len(columns)) + "|",
    ]
    for r in rows:
        dataset = f"{r.variant} {VARIANTS[r.variant].name}" if r.variant else "-"
        cells = [_cell(r.metrics, c) for c in columns]
        state = r.state if not r.error or r.state != "done" else "no metrics"
        lines.append(
            f"| {r.name} | {dataset} | {r.param('clf.model', '-')} | {r.param('clf.pretrain_source', '-')} "
            f"| {state} | " + " | ".join(cells) + " |"
        )
    metrics = dict.fromkeys(paired_metrics or (primary,))
    sections = [_pivot(rows, primary), *(t(rows, m) for m in metrics for t in (_table4, _table5)), _table3(rows)]
    blocks = ["\n".join(lines).rstrip(), *("\n".join(section).strip() for section in sections if section)]
    return "\n\n".join(blocks) + "\n"


def _ci_level(rows: Sequence[ExperimentResult]) -> str:
    levels = {r.param("evaluate.ci") for r in rows if r.param("evaluate.ci") is not None}
    return f"{round(100 * levels.pop())} %" if len(levels) == 1 else "95 %"


def _pivot(rows: Sequence[ExperimentResult], primary: str) -> list[str]:
    """Models down, dataset variants across, `primary` in the cells (the shape of Tables 4 and 6).

    With several pretraining sources among the rows, each (model, source) pair gets its own row.
    """
    done = [r for r in rows if r.variant is not None and r.metrics.get(primary) is not None]
    if not done:
        return []
    by_source = len({r.param("clf.pretrain_source") for r in done}) > 1

    def label(r: ExperimentResult) -> str:
        model = str(r.param("clf.model", "-"))
        return f"{model} ({r.param('clf.pretrain_source')})" if by_source else model

    variants = sorted({r.variant for r in done})
    lines = [
        f"## {primary} by model and dataset variant",
        "",
        "| model | " + " | ".join(f"{v} {VARIANTS[v].name}" for v in variants) + " |",
        "|---" * (1 + len(variants)) + "|",
    ]
    for row_label in sorted({label(r) for r in done}):
        cells = [
            " / ".join(_cell(r.metrics, primary) for r in done if r.variant == v and label(r) == row_label)
            for v in variants
        ]
        lines.append(f"| {row_label} | " + " | ".join(cells) + " |")
    return lines


# --------------------------------------------------------------------------- paired comparisons (Tables 3-5)

# What a cell of the grid sets. Every other param is its pairing: runs that agree on all the rest (the
# seeds, the budgets, the split) differ only in their axis, and are compared pair by pair.
AXIS_KEYS: frozenset[str] = frozenset(
    {*(key for v in VARIANTS.values() for key in v.overrides), "gan.synthesize.gated", "clf.pretrain_source", "clf.model"}
)
# Params that change how a run executes, not what it computes: never a reason to unpair two runs.
EXECUTION_KEYS: tuple[str, ...] = ("base.threads", "tracking.", "clf.device", "gan.train.device", "ingest.workers")


@dataclass(frozen=True)
class PairedDifference:
    """Mean, sd and 95 % t-interval of per-pair differences, and how many pairs came out higher."""

    n: int
    mean: float
    sd: float
    low: float
    high: float
    higher: int

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> PairedDifference:
        """Read back from a report's JSON, which also carries derived keys such as "verdict"."""
        return cls(**{f.name: raw[f.name] for f in fields(cls)})

    @property
    def verdict(self) -> str:
        if self.n < 2:
            return "one pair only: no claim either way"
        if self.low > 0:
            return "higher; the interval excludes 0"
        if self.high < 0:
            return "lower; the interval excludes 0"
        return "not told apart from seed noise (the interval includes 0)"

    def text(self) -> str:
        if self.n < 2:
            return f"{self.mean:+.3f} (1 pair)"
        return (f"{self.mean:+.3f} ± {self.sd:.3f} [{self.low:+.3f}, {self.high:+.3f}], "
                f"{self.higher} of {self.n} higher")


def paired_difference(differences: Sequence[float]) -> PairedDifference:
    """Summary of paired differences; the interval is Student's t with n - 1 degrees of freedom."""
    values = [float(d) for d in differences if d is not None and not math.isnan(d)]
    n = len(values)
    if n == 0:
        raise ValueError("no paired differences to summarise")
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if n > 1 else float("nan")
    half = float(student_t.ppf(0.975, n - 1)) * sd / math.sqrt(n) if n > 1 else float("nan")
    return PairedDifference(n, mean, sd, mean - half, mean + half, sum(v > 0 for v in values))


def dataset_label(result: ExperimentResult) -> str:
    """The Table 4 dataset of a run; a variant with synthetic images also says whether the gate was on."""
    if result.variant is None:
        return "-"
    variant = VARIANTS[result.variant]
    label = f"{variant.number} {variant.name}"
    if variant.overrides.get("gan.synthesize.count", 0) != 0:
        label += " (gated)" if result.param("gan.synthesize.gated", True) else " (ungated)"
    return label


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_flat(value, f"{prefix}{key}."))
    return {k.rstrip("."): v for k, v in out.items()}


def pairing_labels(results: Sequence[ExperimentResult], only: tuple[str, ...] = ("",)) -> list[str]:
    """Per run, the params outside the grid's axes in which the runs differ ("clf.seed=1"); equal labels pair.

    `only`: consider only params starting with one of these prefixes (Table 3: what a GAN depends on).
    """
    flats = [
        {k: json.dumps(v, sort_keys=True, default=str) for k, v in _flat(r.params).items()
         if k not in AXIS_KEYS and not k.startswith(EXECUTION_KEYS) and k.startswith(only)}
        for r in results
    ]
    keys = sorted({k for flat in flats for k in flat})
    varying = [k for k in keys if len({flat.get(k) for flat in flats}) > 1]
    return [", ".join(f"{k}={flat.get(k, 'default')}" for k in varying) or "same params" for flat in flats]


def _paired_table(
    rows: Sequence[ExperimentResult],
    metric: str,
    column_of: Callable[[ExperimentResult], str],
    block_of: Callable[[ExperimentResult], str],
    reference: Callable[[Sequence[str]], str],
) -> list[str]:
    """Pairs down, one axis across, `metric` [CI] in the cells; then mean ± sd and the paired differences."""
    done = [r for r in rows if r.state == "done" and isinstance(r.metrics.get(metric), int | float)]
    lines: list[str] = []
    blocks: dict[str, list[ExperimentResult]] = {}
    for r in done:
        blocks.setdefault(block_of(r), []).append(r)
    for block, members in blocks.items():
        labels = pairing_labels(members)
        columns = sorted({column_of(r) for r in members})
        if len(columns) < 2:
            continue
        ref = reference(columns)
        columns = [ref, *(c for c in columns if c != ref)]
        value: dict[tuple[str, str], ExperimentResult] = {}
        for r, label in zip(members, labels, strict=True):
            value.setdefault((label, column_of(r)), r)  # a repeated pair keeps its first run
        pairs = sorted(dict.fromkeys(labels))
        lines += [f"{block}:", "", "| pairing | " + " | ".join(columns) + " |", "|---" * (1 + len(columns)) + "|"]
        for label in pairs:
            cells = [_cell(value[(label, c)].metrics, metric) if (label, c) in value else "-" for c in columns]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        means = []
        for c in columns:
            vals = [float(value[(label, c)].metrics[metric]) for label in pairs if (label, c) in value]
            sd = f" ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else ""
            means.append(f"{sum(vals) / len(vals):.3f}{sd} (n={len(vals)})")
        lines.append("| mean ± sd | " + " | ".join(means) + " |")
        verdicts = []
        diffs_row = ["-"]
        for c in columns[1:]:
            shared = [label for label in pairs if (label, c) in value and (label, ref) in value]
            if not shared:
                diffs_row.append("no pairs")
                continue
            d = paired_difference(
                [float(value[(label, c)].metrics[metric]) - float(value[(label, ref)].metrics[metric]) for label in shared]
            )
            diffs_row.append(d.text())
            verdicts.append(f"- {c} vs {ref}: {metric} {d.text()}: {d.verdict}.")
        lines += [f"| paired difference vs {ref} | " + " | ".join(diffs_row) + " |", "", *verdicts, ""]
    return lines


def _model_and_source(r: ExperimentResult) -> str:
    return f"model {r.param('clf.model', '-')}, stage-1 pretraining {r.param('clf.pretrain_source', '-')}"


def _table4(rows: Sequence[ExperimentResult], metric: str) -> list[str]:
    """Table 4 (dataset variants), paired by seed, against variant 1 (the original images)."""
    body = _paired_table(
        [r for r in rows if r.variant is not None], metric, dataset_label, _model_and_source,
        lambda columns: next((c for c in columns if c.startswith("1 ")), columns[0]),
    )
    if not body:
        return []
    head = [f"## Table 4: dataset variants, {metric} paired by seed", "",
            "Each row is one pairing (the runs agree on every param outside the grid's axes); paired "
            "difference: mean ± sd [95 % t-interval], and how many pairs came out higher.", ""]
    return head + body


def _table5(rows: Sequence[ExperimentResult], metric: str) -> list[str]:
    """Table 5 (stage-1 pretraining source), paired by seed, against no pretraining."""
    body = _paired_table(
        [r for r in rows if r.param("clf.pretrain_source") is not None], metric,
        lambda r: str(r.param("clf.pretrain_source")),
        lambda r: f"model {r.param('clf.model', '-')}, dataset {dataset_label(r)}",
        lambda columns: "none" if "none" in columns else columns[0],
    )
    if not body:
        return []
    return [f"## Table 5: stage-1 pretraining, {metric} paired by seed", "", *body]


# The params a GAN training and its quality report depend on (a classifier's seed is not one of them).
GAN_INPUTS: tuple[str, ...] = ("gan.", "base.", "datasets.", "ingest.", "split.", "phantoms.")
GAN_COLUMNS: tuple[tuple[str, str], ...] = (
    ("mean_ssim_to_real", "SSIM to real"),
    ("mean_fidelity", "fidelity"),
    ("tstr_val_balanced_accuracy", "TSTR balanced accuracy"),
    ("diversity_excess", "diversity SSIM - real's"),
)


def gan_values(entry: Mapping[str, Any]) -> dict[str, float]:
    """The Table 3 values (`GAN_COLUMNS` and the admitted class count) of one architecture's report entry."""
    classes = [q for q in (entry.get("classes") or {}).values() if isinstance(q, dict)]
    excess = [q["diversity_ssim"] - q["real_diversity_ssim"] for q in classes
              if isinstance(q.get("diversity_ssim"), int | float) and isinstance(q.get("real_diversity_ssim"), int | float)]
    out = {key: float(entry[key]) for key, _ in GAN_COLUMNS if isinstance(entry.get(key), int | float)}
    if excess:
        out["diversity_excess"] = sum(excess) / len(excess)
    out["admitted"] = float(sum(bool(q.get("admitted")) for q in classes))
    return out


def _table3(rows: Sequence[ExperimentResult]) -> list[str]:
    """Table 3: the synthesize report of each distinct GAN training (by generator digest), per architecture."""
    runs: dict[tuple[str, ...], ExperimentResult] = {}
    for r in rows:
        archs = r.gan_quality.get("archs") or {}
        if r.state == "done" and archs:
            runs.setdefault(tuple(sorted(str(a.get("generator_sha256", "")) for a in archs.values())), r)
    if not runs:
        return []
    results = list(runs.values())
    labels = pairing_labels(results, only=GAN_INPUTS)
    # two trainings with the same params (their generators differ: e.g. another thread count) stay apart
    labels = [f"{label} ({r.name})" if labels.count(label) > 1 else label for r, label in zip(results, labels, strict=True)]
    lines = [
        "## Table 3: the generators, per GAN training",
        "",
        "From each distinct training's `reports/gan_quality.json`: mean SSIM of generated to real images, "
        "the gate's fidelity (its judge's recognition of the intended class), the balanced accuracy on real val "
        "images of a classifier trained on generated images alone (TSTR), and how much more alike a class's "
        "generated images are to each other than its real images are (diversity SSIM excess; 0 = as diverse "
        "as the real ones). judge: the gate's real-trained classifier's val accuracy (chance = 1 / classes).",
        "",
    ]
    trainings = [(label, r.gan_quality) for r, label in zip(results, labels, strict=True)]
    return lines + gan_comparison(trainings, "pairing")


def gan_comparison(trainings: Sequence[tuple[str, Mapping[str, Any]]], label_title: str) -> list[str]:
    """Table 3's rows (per training, per architecture) and the paired differences of the first two archs.

    Args:
        trainings: (label, quality report) per GAN training; the report as `synthesize` writes it.
        label_title: the header of the label column.
    """
    lines = [
        f"| {label_title} | judge | arch | " + " | ".join(title for _, title in GAN_COLUMNS) + " | classes admitted |",
        "|---" * (4 + len(GAN_COLUMNS)) + "|",
    ]
    values: dict[tuple[str, str], dict[str, float]] = {}
    for label, report in trainings:
        judge = (report.get("classifier") or {}).get("real_val_accuracy")
        judge_text = f"{judge:.3f}" if isinstance(judge, int | float) else "-"
        for arch, entry in report["archs"].items():
            v = values[(label, arch)] = gan_values(entry)
            cells = [f"{v[key]:.3f}" if key in v else "-" for key, _ in GAN_COLUMNS]
            lines.append(f"| {label} | {judge_text} | {arch} | " + " | ".join(cells) + f" | {int(v['admitted'])} |")
    names = list(dict.fromkeys(arch for _, report in trainings for arch in report["archs"]))
    if len(names) >= 2:
        first, second = names[0], names[1]
        labels = dict.fromkeys(label for label, _ in trainings)
        shared = [label for label in labels if (label, first) in values and (label, second) in values]
        lines += ["", f"Paired difference {first} - {second} over {len(shared)} GAN training(s):", ""]
        for key, title in GAN_COLUMNS:
            diffs = [values[(lb, first)][key] - values[(lb, second)][key] for lb in shared
                     if key in values[(lb, first)] and key in values[(lb, second)]]
            if diffs:
                d = paired_difference(diffs)
                lines.append(f"- {title}: {d.text()}: {d.verdict}.")
    return lines
