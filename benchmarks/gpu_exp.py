"""The `-S` overrides of a short run of the papers' settings, one per line: `dvc exp run $(python ...)`.

`clf.preset` and `gan.preset` replace their keys with the papers' settings, 500 epochs included, and
a preset wins over keys set next to it (`ClassifierConfig._apply_preset`, `GanConfig._apply_preset`):
`-S clf.preset=yu2023 -S clf.finetune.epochs=2` still trains 500 epochs, and the yu2023 preset's
`pretrain_init: imagenet` cannot be switched off. So this spells the presets out as plain keys, read
from the project's own tables (`CLF_PRESETS`, `GAN_PAPER_PRESET`, so they cannot drift), with

* every `epochs` replaced by `--epochs` (and the GAN's `max_steps` left unset),
* `clf.pretrain_init=none` when the ImageNet weights of the model are not in the local torch cache
  (`--imagenet auto`, the default) - the GPU machine cannot download them,
* with `--tiny`, sizes that let the whole pipeline run in a few minutes on a 2-core CPU.

Usage: python benchmarks/gpu_exp.py [--clf-preset yu2023] [--epochs 2] [--imagenet auto|yes|no] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import logging

from bonescan.config import CLF_PRESETS, GAN_PAPER_PRESET

log = logging.getLogger(__name__)

# Whole pipeline in a few CPU minutes: fewer, smaller phantoms; brief quality judges; few resamples.
TINY = {
    "phantoms.patients": 12,
    "phantoms.chest_patients": 8,
    "phantoms.bone_size": [256, 64],
    "phantoms.chest_size": [64, 64],
    "base.image_size": [64, 32],  # the GAN trains at base.image_size under the paper preset
    "gan.model.base_channels": 8,  # the paper's width 32 takes ~12 s a step on a busy 2-core CPU
    "gan.model.z_dim": 16,
    "augment.factor": 1,
    "gan.quality.samples_per_class": 4,
    "gan.quality.classifier_epochs": 1,
    "gan.quality.classifier_members": 1,
    "evaluate.n_boot": 20,
    "evaluate.gradcam_per_class": 1,
}


def flatten(prefix: str, values: dict) -> dict[str, object]:
    """{"a": {"b": 1}} -> {"prefix.a.b": 1}."""
    out: dict[str, object] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}"
        out.update(flatten(name, value) if isinstance(value, dict) else {name: value})
    return out


def yaml_value(value: object) -> str:
    """How `dvc exp run -S key=value` reads `value` back (YAML): null, true, 0.0002, [64, 32], radam."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return json.dumps(list(value), separators=(",", ":"))
    return repr(value) if isinstance(value, float) else str(value)


def imagenet_available(model: str) -> bool:
    """Whether `model`'s ImageNet weights load from the local torch cache (nothing is downloaded)."""
    from bonescan.models import build

    try:
        build(model, 3, pretrained="imagenet")
    except FileNotFoundError as missing:
        log.warning("%s", missing)
        return False
    return True


def overrides(clf_preset: str, epochs: int, imagenet: str, tiny: bool) -> dict[str, object]:
    """The params of the short run, as dotted keys."""
    clf = flatten("clf", CLF_PRESETS[clf_preset])
    gan = flatten("gan", GAN_PAPER_PRESET)
    out: dict[str, object] = {"clf.preset": "none", "gan.preset": "demo", **clf, **gan}
    for key in out:
        if key.endswith(".epochs"):
            out[key] = epochs
    needs_imagenet = (
        out.get("clf.pretrain_init") == "imagenet" or out.get("clf.pretrain_source") == "imagenet"
    )
    if needs_imagenet and (
        imagenet == "no" or (imagenet == "auto" and not imagenet_available(str(out["clf.model"])))
    ):
        if out.get("clf.pretrain_source") == "imagenet":
            out["clf.pretrain_source"] = "source"
        out["clf.pretrain_init"] = "none"
    if tiny:
        out.update(TINY)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clf-preset", default="yu2023", choices=sorted(CLF_PRESETS))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--imagenet", default="auto", choices=("auto", "yes", "no"))
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    for key, value in overrides(args.clf_preset, args.epochs, args.imagenet, args.tiny).items():
        print(f"-S\n{key}={yaml_value(value)}")


if __name__ == "__main__":
    main()
