import json
import logging

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


def test_a_truncated_file_reads_as_missing_with_a_warning_naming_it(tmp_path, caplog):
    path = tmp_path / "split.json"
    path.write_text('{"train": 12, "va')
    with caplog.at_level(logging.WARNING):
        assert read_output_json(path) is None
    assert "split.json" in caplog.text


def test_json_that_is_not_an_object_reads_as_missing(tmp_path, caplog):
    path = tmp_path / "ingest.json"
    path.write_text("[1, 2]")
    with caplog.at_level(logging.WARNING):
        assert read_output_json(path) is None
    assert "list" in caplog.text


def test_undecodable_bytes_read_as_missing(tmp_path):
    path = tmp_path / "gan_quality.json"
    path.write_bytes(b"\xff\xfe{")
    assert read_output_json(path) is None
