"""JSON Lines: split on "\n" only, so U+2028, U+2029 and U+0085 inside strings are valid data."""

import json

import pytest

from common.prompts.dataset import load_fixed_responses, read_prompts
from common.util import jsonl

SEPARATORS = "a\u2028b\u2029c\u0085d"


def test_reader_keeps_unicode_line_separators_inside_strings(tmp_path):
    path = tmp_path / "p.jsonl"
    # written raw (ensure_ascii=False), as other tools write them
    path.write_text(
        json.dumps({"prompt": SEPARATORS}, ensure_ascii=False) + "\n\n" + json.dumps({"prompt": "x"}) + "\r\n",
        encoding="utf-8",
    )
    assert SEPARATORS.splitlines() != [SEPARATORS]  # what str.splitlines would have broken
    assert list(jsonl.read(path)) == [(1, {"prompt": SEPARATORS}), (3, {"prompt": "x"})]
    assert read_prompts(str(path)) == [SEPARATORS, "x"]


def test_writer_escapes_them_and_round_trips(tmp_path):
    path = tmp_path / "w.jsonl"
    rows = [{"text": SEPARATORS, "ü": "é"}, {"n": 1}]
    jsonl.write(path, rows)
    raw = path.read_text(encoding="utf-8")
    assert "\u2028" not in raw and "\u0085" not in raw and "é" in raw  # readable, yet safe for splitlines readers
    assert raw.splitlines() == raw.split("\n")[:-1]
    assert jsonl.read_all(path) == rows
    appender = jsonl.Appender(path)
    appender.write([{"more": "\u2029"}])
    appender.close()
    assert jsonl.read_all(path) == [*rows, {"more": "\u2029"}]


def test_fixed_responses_with_separators(tmp_path):
    path = tmp_path / "fixed.jsonl"
    path.write_text(
        json.dumps({"prompt": SEPARATORS, "responses": ["r\u20281", "r\u00852"]}, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    assert load_fixed_responses(str(path)) == {SEPARATORS: ["r\u20281", "r\u00852"]}


def test_errors_name_file_and_row(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl row 2: invalid JSON"):
        jsonl.read_all(path)
    path.write_bytes(b'{"a": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl row 1: invalid UTF-8"):
        jsonl.read_all(path)
