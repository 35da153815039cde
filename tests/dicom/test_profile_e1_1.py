"""The PS3.15 Table E.1-1 data is what its generator makes from the machine-readable sources (issue 14, point 7)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bonescan.dicom import make_profile_e1_1, profile_e1_1


def test_committed_table_is_what_the_generator_makes_from_its_sources():
    pytest.importorskip("dicomanonymizer", reason="dev dependency dicom-anonymizer==2.1.0 holds the 2026c lists")
    assert Path(profile_e1_1.__file__).read_text() == make_profile_e1_1.generate(), (
        "profile_e1_1.py differs from its sources: run `python -m bonescan.dicom.make_profile_e1_1`"
    )


def test_every_row_of_the_2024e_source_is_in_the_table_with_all_its_codes():
    source = make_profile_e1_1.load_2024e()
    assert len(source) > 600
    for tag, row in source.items():
        committed = profile_e1_1.BY_TAG[tag]
        assert committed.basic == row.basic, row.name
        for field_name, code in row.options.items():
            assert getattr(committed, field_name) == code, (row.name, field_name)


def test_2024e_source_file_is_the_pinned_upstream_file(tmp_path):
    changed = tmp_path / "e1_1.json"
    rows = json.loads(make_profile_e1_1.SOURCE_2024E.read_text())
    rows[0]["basicProfile"] = "K"
    changed.write_text(json.dumps(rows))
    with pytest.raises(make_profile_e1_1.SourceError, match="pinned"):
        make_profile_e1_1.load_2024e(changed)


def test_sources_that_disagree_on_a_basic_code_stop_the_generation():
    pytest.importorskip("dicomanonymizer", reason="dev dependency dicom-anonymizer==2.1.0 holds the 2026c lists")
    rows_2024e = make_profile_e1_1.load_2024e()
    tag = next(iter(rows_2024e))
    rows_2024e[tag] = rows_2024e[tag]._replace(basic="K")
    with pytest.raises(make_profile_e1_1.SourceError, match="2024e says K"):
        make_profile_e1_1.merge(rows_2024e, make_profile_e1_1.load_2026c())


def test_rows_newer_than_2024e_get_the_modified_dates_code_by_their_kind():
    newer = {r.keyword: r for r in profile_e1_1.ROWS if r.tag not in make_profile_e1_1.load_2024e()}
    assert newer["EffectiveStartDateTime"].modified_dates == "C"
    assert newer["NameToUse"].modified_dates == "" and newer["NameToUse"].basic == "X"
    assert all(not r.retain_full_dates for r in newer.values())  # 2026c has no option columns
