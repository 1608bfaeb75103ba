"""Reading prompt files, fixed responses, and the order prompts reach the training loop."""

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.prompts.dataset import PromptStream, filter_long_prompts, load_fixed_responses, read_prompts
from common.prompts.messages import prompt_text

CHAT = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello?"}]


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def write_jsonl(path, objects):
    return write_lines(path, [json.dumps(o) for o in objects])


def error(path, message):
    """Match an error that names ``path`` (and usually a row) and says ``message``."""
    return re.escape(str(path)) + ".*" + message


# ----------------------------------------------------------------------------- read_prompts


def test_parquet_string_column(tmp_path):
    path = str(tmp_path / "p.parquet")
    pq.write_table(pa.table({"prompt": ["a cat", "a dog"], "other": [1, 2]}), path)
    assert read_prompts(path) == ["a cat", "a dog"]


def test_parquet_messages_column(tmp_path):
    path = str(tmp_path / "p.parquet")
    pq.write_table(pa.table({"prompt": [CHAT, [{"role": "user", "content": "Hi"}]]}), path)
    assert read_prompts(path) == [CHAT, [{"role": "user", "content": "Hi"}]]


def test_jsonl_mixed(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "one"}, {"prompt": CHAT}])
    assert read_prompts(path) == ["one", CHAT]


def test_json_lines_and_json_array(tmp_path):
    lines = write_jsonl(tmp_path / "lines.json", [{"prompt": "one"}, {"prompt": "two"}])
    array = tmp_path / "array.json"
    array.write_text(json.dumps([{"prompt": "one"}, {"prompt": "two"}]))
    assert read_prompts(lines) == read_prompts(str(array)) == ["one", "two"]


def test_shipped_tiny_prompts():
    prompts = read_prompts("data/prompts/tiny_prompts.jsonl")
    assert len(prompts) == 64 and len({json.dumps(p) for p in prompts}) == 64
    assert sum(isinstance(p, list) for p in prompts) == 4


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"prompt": "ok"}', '{"prompt": "ok", '], "row 2: invalid JSON"),
        (['{"prompt": "ok"}', '{"text": "no prompt"}'], "row 2: no `prompt` field"),
        (['{"text": "a"}'], r"no `prompt` column \(columns: text\)"),
        (['{"prompt": "ok"}', '{"prompt": 5}'], "row 2: the prompt is a int"),
        (['{"prompt": "   "}'], "row 1: the prompt is empty"),
        (['{"prompt": null}'], "row 1: the prompt is null"),
        (['{"prompt": []}'], "row 1: the prompt has no messages"),
        (['{"prompt": [{"role": "user"}]}'], "row 1: message 1 is"),
        (['{"prompt": [{"role": "bot", "content": "x"}]}'], "row 1: message 1 has role 'bot'"),
        (['{"prompt": [{"role": "user", "content": ""}]}'], r"row 1: message 1 \(user\) has empty content"),
        (
            ['{"prompt": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}'],
            "row 1: the last message is from 'assistant'",
        ),
        (["", "   "], "zero rows"),
        (["[1, 2]"], "row 1: expected a JSON object"),
    ],
)
def test_jsonl_errors_name_file_row_and_problem(tmp_path, lines, message):
    path = write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(ValueError, match=error(path, message)):
        read_prompts(path)


def test_missing_empty_and_unknown_files(tmp_path):
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(ValueError, match=error(missing, "file not found")):
        read_prompts(str(missing))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match=error(empty, "the file is empty")):
        read_prompts(str(empty))
    csv = tmp_path / "p.csv"
    csv.write_text("prompt\nhi\n")
    with pytest.raises(ValueError, match=error(csv, "unknown file type; use .parquet, .jsonl or .json")):
        read_prompts(str(csv))


def test_parquet_errors(tmp_path):
    no_column = str(tmp_path / "cols.parquet")
    pq.write_table(pa.table({"question": ["a"], "answer": ["b"]}), no_column)
    with pytest.raises(ValueError, match=error(no_column, r"no `prompt` column \(columns: question, answer\)")):
        read_prompts(no_column)
    zero = str(tmp_path / "zero.parquet")
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), zero)
    with pytest.raises(ValueError, match=error(zero, "zero rows")):
        read_prompts(zero)
    wrong_type = str(tmp_path / "ints.parquet")
    pq.write_table(pa.table({"prompt": ["fine", None]}), wrong_type)
    with pytest.raises(ValueError, match=error(wrong_type, "row 2: the prompt is null")):
        read_prompts(wrong_type)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"this is not parquet at all")
    with pytest.raises(ValueError, match=error(garbage, "not a readable parquet file")):
        read_prompts(str(garbage))


def test_prompt_text():
    assert prompt_text("plain") == "plain"
    chat = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "last"},
    ]
    assert prompt_text(chat) == "last"


# ----------------------------------------------------------------------------- fixed responses


def test_fixed_responses(tmp_path):
    path = write_jsonl(
        tmp_path / "fixed.jsonl",
        [{"prompt": "p1", "responses": ["a", "b"]}, {"prompt": "p2", "responses": ["c", "d", "e"]}],
    )
    assert load_fixed_responses(path) == {"p1": ["a", "b"], "p2": ["c", "d", "e"]}


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"prompt": "p", "responses": ["a"]}'], "row 1: 1 response"),
        (
            ['{"prompt": "p", "responses": ["a", "b"]}', '{"prompt": "p", "responses": ["c", "d"]}'],
            r"row 2: duplicate prompt \(first at row 1\)",
        ),
        (['{"prompt": "p", "responses": ["a", "b"]}', '{"prompt": "q"'], "row 2: invalid JSON"),
        (['{"prompt": "p"}'], "row 1: expected"),
        (['{"prompt": "p", "responses": "ab"}'], "row 1: `responses` must be a list of strings"),
        (['{"prompt": "", "responses": ["a", "b"]}'], "row 1: `prompt` must be a non-empty string"),
        (["", ""], "zero rows"),
    ],
)
def test_fixed_responses_errors(tmp_path, lines, message):
    path = write_lines(tmp_path / "fixed.jsonl", lines)
    with pytest.raises(ValueError, match=error(path, message)):
        load_fixed_responses(path)


# ----------------------------------------------------------------------------- order


def stream(n=5, batch_size=2, shuffle=False, seed=0):
    ids = [[i] * (i + 1) for i in range(n)]
    return PromptStream(ids, [f"p{i}" for i in range(n)], batch_size, shuffle=shuffle, seed=seed)


def test_file_order_wraps_around():
    s = stream()
    batches = [s.next_batch() for _ in range(4)]
    assert [b.indices for b in batches] == [[0, 1], [2, 3], [4, 0], [1, 2]]
    assert batches[2].prompts == ["p4", "p0"] and batches[2].ids == [[4] * 5, [0]]


def test_shuffled_epochs_are_seeded_permutations():
    s = stream(n=6, batch_size=3, shuffle=True, seed=7)
    flat = [i for _ in range(6) for i in s.next_batch().indices]  # three epochs
    epochs = [flat[0:6], flat[6:12], flat[12:18]]
    assert all(sorted(e) == list(range(6)) for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1  # each epoch has its own order (seed + epoch)
    again = stream(n=6, batch_size=3, shuffle=True, seed=7)
    assert [i for _ in range(6) for i in again.next_batch().indices] == flat
    other = stream(n=6, batch_size=3, shuffle=True, seed=8)
    assert [i for _ in range(6) for i in other.next_batch().indices] != flat


@pytest.mark.parametrize("shuffle", [False, True])
def test_state_dict_resume_gives_identical_batches(shuffle):
    s = stream(n=7, batch_size=3, shuffle=shuffle, seed=3)
    for _ in range(4):  # 12 prompts: into the second epoch
        s.next_batch()
    state = json.loads(json.dumps(s.state_dict()))  # survives a round trip through a checkpoint file
    expected = [s.next_batch().indices for _ in range(6)]
    resumed = stream(n=7, batch_size=3, shuffle=shuffle, seed=3)
    resumed.load_state_dict(state)
    assert [resumed.next_batch().indices for _ in range(6)] == expected


def test_resume_with_other_data_is_refused():
    state = stream(n=5).state_dict()
    with pytest.raises(ValueError, match="saved num_prompts=5 but this run has 6"):
        stream(n=6).load_state_dict(state)


def test_stream_argument_errors():
    with pytest.raises(ValueError, match="batch_size=0"):
        stream(batch_size=0)
    with pytest.raises(ValueError, match="no prompts"):
        PromptStream([], [], 2, shuffle=False, seed=0)
    with pytest.raises(ValueError, match="2 id lists but 1 raw prompts"):
        PromptStream([[1], [2]], ["a"], 2, shuffle=False, seed=0)


def test_filter_long_prompts():
    ids, raw, dropped = filter_long_prompts([[1], [1, 2, 3], [1, 2]], ["a", "b", "c"], max_len=2)
    assert (ids, raw, dropped) == ([[1], [1, 2]], ["a", "c"], 1)
    with pytest.raises(ValueError, match="all 1 are longer than max_prompt_length=1"):
        filter_long_prompts([[1, 2]], ["a"], max_len=1)
