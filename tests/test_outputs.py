import json
import logging

import pytest

from bonescan.outputs import read_output_json


def test_a_stage_output_is_read_as_its_json_object(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"macro_f1": 0.5}))
    assert read_output_json(path) == {"macro_f1": 0.5}


def test_no_file_or_no_path_reads_as_missing_without_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert read_output_json(tmp_path / "absent.json") is None
        assert read_output_json(None) is None
    assert not caplog.records


@pytest.mark.parametrize(
    ("name", "text", "said"),
    [("split.json", '{"train": 12, "va', "not valid JSON"), ("ingest.json", "[1, 2]", "JSON list")],
    ids=["truncated", "not-an-object"],
)
def test_a_broken_output_reads_as_missing_with_a_warning_naming_the_file(tmp_path, caplog, name, text, said):
    path = tmp_path / name
    path.write_text(text)
    with caplog.at_level(logging.WARNING):
        assert read_output_json(path) is None
    assert name in caplog.text and said in caplog.text


def test_undecodable_bytes_read_as_missing(tmp_path):
    path = tmp_path / "gan_quality.json"
    path.write_bytes(b"\xff\xfe{")
    assert read_output_json(path) is None
