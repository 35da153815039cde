"""Checkpoint files: atomic writes, weights_only loading, RNG round trips, run fingerprints."""

from __future__ import annotations

import datetime
import pickle

import pandas as pd
import pytest
import torch

from bonescan.checkpoint import (
    file_digest,
    fingerprint,
    load_checkpoint,
    restore_rng,
    rng_state,
    save_checkpoint,
)


def _rows(labels: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": [f"img{i}" for i in range(len(labels))],
            "label": labels,
            "split": "train",
            "path": [f"images/img{i}.png" for i in range(len(labels))],
            "patient_id": "ignored",  # not part of what a run trains on
        }
    )


def test_a_checkpoint_round_trips_through_weights_only_loading_and_leaves_no_temporary_file(tmp_path):
    state = {
        "model": {"w": torch.arange(4.0)},
        "history": [{"epoch": 1, "loss": 0.5}],
        "config": {"lr": 1e-3, "size": [32, 16], "name": None},
        "rng": rng_state(),
    }
    path = save_checkpoint(state, tmp_path / "deep" / "last.pt")
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["history"] == state["history"] and loaded["config"] == state["config"]
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_overwriting_replaces_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)
    save_checkpoint({"epoch": 2}, path)
    assert load_checkpoint(path)["epoch"] == 2


def test_loading_refuses_arbitrary_python_objects(tmp_path):
    path = tmp_path / "pickle.pt"
    torch.save({"when": datetime.date(2023, 1, 1)}, path)  # not a tensor or a plain type
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        load_checkpoint(path)


def test_a_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_checkpoint(tmp_path / "absent.pt")


def test_restoring_the_rng_state_replays_the_same_random_numbers():
    torch.manual_seed(0)
    state = rng_state()
    first = torch.rand(5)
    torch.rand(3)
    restore_rng(state)
    assert torch.equal(torch.rand(5), first)


def test_fingerprint_changes_with_the_training_rows_and_nothing_else():
    base = fingerprint([_rows(["a", "b"])])
    assert fingerprint([_rows(["a", "b"])]) == base
    other_patients = _rows(["a", "b"]).assign(patient_id="other")
    assert fingerprint([other_patients]) == base
    assert fingerprint([_rows(["a", "a"])]) != base  # a label changed
    assert fingerprint([_rows(["a", "b", "b"])]) != base  # a row added
    assert fingerprint([_rows(["a", "b"]).iloc[::-1]]) != base  # order matters (batches differ)
    assert fingerprint([_rows(["a", "b"])], {"init": "x"}) != base


def test_file_digest_identifies_the_bytes(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"weights")
    b.write_bytes(b"weights")
    assert file_digest(a) == file_digest(b)
    b.write_bytes(b"weightz")
    assert file_digest(a) != file_digest(b)


