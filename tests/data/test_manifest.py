"""Specification of the manifest schema and its readers/writers."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from bonescan.data.manifest import (
    MANIFEST_COLUMNS,
    ManifestError,
    ManifestRow,
    ManifestWriter,
    empty_manifest,
    read_manifest,
    validate_manifest,
    write_manifest,
)


def rows(n: int = 3) -> list[ManifestRow]:
    return [
        ManifestRow(
            f"img{i}",
            f"pat{i // 2}",
            f"st{i // 2}",
            "anterior" if i % 2 else "posterior",
            "healthy",
            source="dicom:NM",
            path=f"data/processed/images/img{i}.png",
        )
        for i in range(n)
    ]


def frame(n: int = 3) -> pd.DataFrame:
    return pd.DataFrame([dataclasses.asdict(r) for r in rows(n)])


def test_columns_are_the_design_columns_in_order():
    assert MANIFEST_COLUMNS == (
        "image_id",
        "patient_id",
        "study_id",
        "view",
        "label",
        "split",
        "synthetic",
        "source",
        "path",
    )
    assert tuple(f.name for f in dataclasses.fields(ManifestRow)) == MANIFEST_COLUMNS


def test_write_then_read_round_trips_with_empty_split_and_boolean_synthetic(tmp_path):
    path = write_manifest(frame(), tmp_path / "sub" / "manifest.csv")
    assert path.read_text().splitlines()[0] == ",".join(MANIFEST_COLUMNS)
    assert path.read_text().splitlines()[1].endswith(",,false,dicom:NM,data/processed/images/img0.png")
    back = read_manifest(path)
    assert list(back.columns) == list(MANIFEST_COLUMNS)
    assert back["synthetic"].dtype == bool and not back["synthetic"].any()
    assert (back["split"] == "").all()
    pd.testing.assert_frame_equal(back, validate_manifest(frame()))


def test_plain_pandas_reads_synthetic_as_bool(tmp_path):
    path = write_manifest(frame(), tmp_path / "manifest.csv")
    assert pd.read_csv(path)["synthetic"].dtype == bool


def test_read_rejects_missing_or_unknown_columns(tmp_path):
    path = tmp_path / "m.csv"
    frame().drop(columns=["study_id"]).assign(extra=1).to_csv(path, index=False)
    with pytest.raises(ManifestError, match=r"missing \['study_id'\], unknown \['extra'\]"):
        read_manifest(path)


def test_columns_out_of_order_are_put_in_canonical_order():
    shuffled = frame()[list(reversed(MANIFEST_COLUMNS))]
    assert list(validate_manifest(shuffled).columns) == list(MANIFEST_COLUMNS)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("patient_id", "", "empty patient_id"),
        ("view", "lateral", "unknown view"),
        ("split", "holdout", "unknown split"),
        ("synthetic", "maybe", "synthetic must be true/false"),
    ],
)
def test_invalid_values_are_rejected(column, value, message):
    df = frame().astype({column: object})
    df.loc[1, column] = value
    with pytest.raises(ManifestError, match=message):
        validate_manifest(df)


def test_duplicate_image_ids_are_rejected():
    df = frame()
    df.loc[2, "image_id"] = "img0"
    with pytest.raises(ManifestError, match="'img0' appears more than once"):
        validate_manifest(df)


def test_missing_manifest_names_the_stage_to_run(tmp_path):
    with pytest.raises(ManifestError, match="bonescan ingest"):
        read_manifest(tmp_path / "nope.csv")


def test_streaming_writer_publishes_only_on_success(tmp_path):
    path = tmp_path / "manifest.csv"
    write_manifest(frame(1), path)
    with pytest.raises(RuntimeError), ManifestWriter(path) as writer:
        writer.write_many(rows(3))
        raise RuntimeError("crash mid-run")
    assert len(read_manifest(path)) == 1  # the previous manifest survives a crashed run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.csv"]  # no temp file left
    with ManifestWriter(path) as writer:
        writer.write_many(rows(3))
    assert writer.rows == 3 and len(read_manifest(path)) == 3


def test_empty_manifest_has_the_schema():
    df = empty_manifest()
    assert list(df.columns) == list(MANIFEST_COLUMNS) and len(df) == 0
