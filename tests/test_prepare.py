"""data.prepare: every input shape, every bad input, the length policy, determinism, and what
training reads back (common.prompts.dataset.load_prompt_dataset). Uses the real Llama 3 tokenizer."""

import json
import os
import re
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.prompts.dataset import PromptStream, load_prompt_dataset, read_prompts
from common.prompts.messages import prompt_text
from common.prompts.prepared import IDS_FILE, MANIFEST_FILE, open_table
from common.prompts.tokenizer import LLAMA3_CHAT_TEMPLATE, load_tokenizer, render_prompt_ids
from data.encode import PromptEncoder, llama3_text
from data.prepare import Settings, main, prepare
from data.sources import KeyMap

TOKENIZER_DIR = "assets/llama3_tokenizer"
CHAT = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello?"}]
MULTI = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Tell me a joke."},
]
# Text that stresses tokenization: whitespace runs, newlines, digits, contractions, code, non-Latin
# scripts, emoji (multi-byte), combining marks, a lone "<|" that is not a special token.
TRICKY = [
    "Hello world",
    "  leading and trailing spaces  ",
    "\n\nstarts with newlines\n",
    "tabs\tand\r\nCRLF",
    "numbers 1234567 and 3.14159, 1e-9",
    "I'll say it's what they've done, DON'T",
    "def f(x):\n    return x ** 2  # square\n\n\n",
    "日本語のテキストです。",
    "Привет, мир!",
    "emoji 🤖🚀 ok",
    "e\u0301 combining",
    "a <| b |> c",
    "x" * 300,
    "   ",
    "a\u00a0b\u2009c",
    "مرحبا بالعالم",
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TOKENIZER_DIR)


def write_jsonl(path, objects):
    path.write_text("".join(json.dumps(o) + "\n" for o in objects))
    return str(path)


def write_parquet(path, columns):
    pq.write_table(pa.table(columns), str(path))
    return str(path)


def run(tok, tmp_path, inputs, name="out", **kw):
    settings = Settings(**{k: kw.pop(k) for k in list(kw) if k in Settings.__dataclass_fields__})
    out = str(tmp_path / name)
    manifest = prepare(inputs if isinstance(inputs, list) else [inputs], out, tok, settings, progress=False, **kw)
    return out, manifest


def rows(out):
    return open_table(out).to_pylist()


def error(path, message):
    return re.escape(str(path)) + ".*" + message


# ----------------------------------------------------------------------------- same ids as training


@pytest.mark.parametrize("engine", ["tiktoken", "hf"])
def test_ids_match_render_prompt_ids(tok, engine):
    prompts = [t for t in TRICKY if t.strip()] + [
        CHAT,
        MULTI,
        [{"role": "system", "content": ""}, {"role": "user", "content": "x"}],
    ]
    prompts += [[{"role": "system", "content": t}, {"role": "user", "content": t}] for t in TRICKY if t.strip()]
    encoder = PromptEncoder(tok, "tokenizer", engine)
    assert encoder.engine == engine
    from common.prompts.messages import normalize_prompt

    got = encoder.encode([normalize_prompt(p, "test") for p in prompts])
    assert got == [render_prompt_ids(tok, p) for p in prompts]


def test_llama3_string_template_equals_jinja(tok):
    from common.prompts.messages import normalize_prompt

    for p in [t for t in TRICKY if t.strip()] + [CHAT, MULTI]:
        messages = normalize_prompt(p, "test")
        jinja = tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, chat_template=LLAMA3_CHAT_TEMPLATE
        )
        assert llama3_text(messages) == jinja


def test_other_chat_template_uses_jinja_and_hf_engine(tok, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hello"}])
    template = (
        "{%- for m in messages -%}{{ '[' + m['role'] + '] ' + m['content'] + '\\n' }}{%- endfor -%}{{ '[assistant] ' }}"
    )
    original = tok.chat_template
    tok.chat_template = template
    try:
        out, manifest = run(tok, tmp_path, path)
        assert manifest["template"]["text"] == template
        assert tok.decode(rows(out)[0]["input_ids"]) == "<|begin_of_text|>[user] Hello\n[assistant] "
        assert rows(out)[0]["input_ids"] == render_prompt_ids(tok, "Hello")
        assert PromptEncoder(tok, "tokenizer").engine == "hf"
        assert PromptEncoder(tok, "llama3").engine == "tiktoken"  # --template llama3 ignores the tokenizer's template
    finally:
        tok.chat_template = original


# ----------------------------------------------------------------------------- input shapes


def test_descriptiveness_parquet_round_trips_to_the_templated_text(tok, tmp_path):
    prompts = [
        "The old lighthouse stood at the edge of the cliff,",
        "She opened the door slowly and",
        "  Rain fell on the  city;\nthe streets were empty. 42 cats!",
    ]
    path = write_parquet(tmp_path / "descriptiveness.parquet", {"prompt": prompts})
    out, manifest = run(tok, tmp_path, path)
    expected = [
        f"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{p}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        for p in prompts
    ]
    got = [tok.decode(r["input_ids"], skip_special_tokens=False, clean_up_tokenization_spaces=False) for r in rows(out)]
    assert got == expected
    assert [r["input_ids"] for r in rows(out)] == [render_prompt_ids(tok, p) for p in prompts]
    assert manifest["counts"] == {
        "rows": 3,
        "prompts": 3,
        "dropped_too_long": 0,
        "truncated": 0,
        "tokens": sum(len(r["input_ids"]) for r in rows(out)),
        "max_length": max(len(r["input_ids"]) for r in rows(out)),
    }


def test_parquet_messages_column(tmp_path, tok):
    path = write_parquet(tmp_path / "m.parquet", {"prompt": [CHAT, MULTI]})
    out, _ = run(tok, tmp_path, path)
    assert [r["messages"] for r in rows(out)] == [CHAT, MULTI]
    assert [r["input_ids"] for r in rows(out)] == [render_prompt_ids(tok, CHAT), render_prompt_ids(tok, MULTI)]


def test_jsonl_mixed_strings_and_messages_with_blank_lines(tmp_path, tok):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "one"}) + "\n\n" + json.dumps({"prompt": CHAT}) + "\n")
    out, manifest = run(tok, tmp_path, str(path))
    assert [(r["source_row"], r["input_ids"]) for r in rows(out)] == [
        (1, render_prompt_ids(tok, "one")),
        (3, render_prompt_ids(tok, CHAT)),
    ]
    assert manifest["counts"]["rows"] == 2


def test_json_array_and_json_lines(tmp_path, tok):
    array = tmp_path / "a.json"
    array.write_text(json.dumps([{"prompt": "one"}, {"prompt": MULTI}]))
    lines = write_jsonl(tmp_path / "l.json", [{"prompt": "one"}, {"prompt": MULTI}])
    a, _ = run(tok, tmp_path, str(array), name="a")
    b, _ = run(tok, tmp_path, lines, name="b")
    assert (
        [r["input_ids"] for r in rows(a)]
        == [r["input_ids"] for r in rows(b)]
        == [render_prompt_ids(tok, "one"), render_prompt_ids(tok, MULTI)]
    )


def test_folder_of_shards_in_name_order(tmp_path, tok):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_parquet(shards / "part-001.parquet", {"prompt": ["b1", "b2"]})
    write_jsonl(shards / "part-000.jsonl", [{"prompt": "a1"}])
    (shards / "notes.txt").write_text("ignored")
    out, manifest = run(tok, tmp_path, str(shards))
    assert [s["path"] for s in manifest["sources"]] == [
        str(shards / "part-000.jsonl"),
        str(shards / "part-001.parquet"),
    ]
    assert [s["rows"] for s in manifest["sources"]] == [1, 2]
    got = [(r["source_file"], r["source_row"], r["messages"][0]["content"]) for r in rows(out)]
    assert got == [(0, 1, "a1"), (1, 1, "b1"), (1, 2, "b2")]


def test_map_keys_prompt_query_system(tmp_path, tok):
    keys = KeyMap.parse('{"prompt": "instruction", "query": "input", "system": "sys"}')
    table = {
        "instruction": ["Translate to French.", "Say hi.", "Add them."],
        "input": ["Good morning", "", None],
        "sys": ["You translate.", "", None],
        "output": ["Bonjour", "hi", "3"],
    }
    expected = [
        [
            {"role": "system", "content": "You translate."},
            {"role": "user", "content": "Translate to French.\nGood morning"},
        ],
        [{"role": "user", "content": "Say hi."}],  # empty query, empty system: no newline, no system turn
        [{"role": "user", "content": "Add them."}],
    ]
    p = write_parquet(tmp_path / "alpaca.parquet", table)
    j = write_jsonl(tmp_path / "alpaca.jsonl", [dict(zip(table, v)) for v in zip(*table.values())])
    for name, path in (("p", p), ("j", j)):
        out, manifest = run(tok, tmp_path, path, name=name, keys=keys)
        assert [r["messages"] for r in rows(out)] == expected
        assert [r["input_ids"] for r in rows(out)] == [render_prompt_ids(tok, m) for m in expected]
        assert manifest["settings"]["keys"] == {"prompt": "instruction", "query": "input", "system": "sys"}


def test_map_keys_rejects_unknown_and_bad_values():
    with pytest.raises(ValueError, match="unknown key.*response.*valid keys are prompt, query, system"):
        KeyMap.parse('{"prompt": "instruction", "response": "output"}')
    with pytest.raises(ValueError, match="not JSON"):
        KeyMap.parse("prompt=instruction")
    with pytest.raises(ValueError, match="map each key to a column name"):
        KeyMap.parse('{"prompt": 3}')


def test_system_column_with_messages_prompt(tmp_path, tok):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": MULTI, "sys": "Be brief."}, {"prompt": CHAT, "sys": "Other."}])
    with pytest.raises(ValueError, match=error(path, "row 2: both a system column value and a system message")):
        run(tok, tmp_path, path, keys=KeyMap(system="sys"))
    path = write_jsonl(tmp_path / "q.jsonl", [{"prompt": MULTI, "sys": "Be brief."}])
    out, _ = run(tok, tmp_path, path, name="ok", keys=KeyMap(system="sys"))
    assert rows(out)[0]["messages"] == [{"role": "system", "content": "Be brief."}, *MULTI]


# ----------------------------------------------------------------------------- over-long prompts


def test_too_long_drop_is_counted(tmp_path, tok):
    prompts = ["short", "word " * 100, "also short", "word " * 200]
    path = write_parquet(tmp_path / "p.parquet", {"prompt": prompts})
    out, manifest = run(tok, tmp_path, path, max_prompt_length=40)
    assert [r["messages"][0]["content"] for r in rows(out)] == ["short", "also short"]
    assert [r["source_row"] for r in rows(out)] == [1, 3]
    assert manifest["counts"]["dropped_too_long"] == 2 and manifest["counts"]["prompts"] == 2
    assert manifest["examples"]["dropped_too_long"][0].startswith(f"{path} row 2 (")


@pytest.mark.parametrize("engine", ["tiktoken", "hf"])
def test_truncate_left_keeps_the_assistant_header(tmp_path, tok, engine):
    long_text = "".join(f"Sentence number {i} is here. 日本 🤖 " for i in range(60))
    prompts = [long_text, [{"role": "system", "content": "Be kind."}, {"role": "user", "content": long_text}], "short"]
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in prompts])
    out, manifest = run(tok, tmp_path, path, max_prompt_length=50, too_long="truncate_left", engine=engine)
    got = rows(out)
    assert manifest["counts"]["truncated"] == 2 and manifest["counts"]["dropped_too_long"] == 0
    header = tok("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", add_special_tokens=False)["input_ids"]
    for r in got[:2]:
        ids, content = r["input_ids"], r["messages"][-1]["content"]
        assert 40 <= len(ids) <= 50 and ids[-len(header) :] == header and ids.count(tok.bos_token_id) == 1
        assert long_text.endswith(content) and len(content) < len(long_text)  # cut from the left only
        assert ids == render_prompt_ids(tok, r["messages"])
    assert got[1]["messages"][0] == {"role": "system", "content": "Be kind."}
    assert got[2]["messages"][0]["content"] == "short"


def test_truncate_left_drops_when_the_rest_cannot_fit(tmp_path, tok):
    prompt = [{"role": "system", "content": "word " * 80}, {"role": "user", "content": "Hi"}]
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": prompt}, {"prompt": "ok"}])
    out, manifest = run(tok, tmp_path, path, max_prompt_length=30, too_long="truncate_left")
    assert manifest["counts"]["dropped_too_long"] == 1 and manifest["counts"]["truncated"] == 0
    assert len(rows(out)) == 1


def test_all_dropped_is_an_error_and_leaves_no_output(tmp_path, tok):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "word " * 50}])
    with pytest.raises(ValueError, match="all 1 prompts are longer than --max-prompt-length 10"):
        run(tok, tmp_path, path, max_prompt_length=10)
    assert sorted(os.listdir(tmp_path)) == ["p.jsonl"]


# ----------------------------------------------------------------------------- repeatable, streamed


def test_deterministic_for_any_worker_count(tmp_path, tok):
    prompts = [f"{t} #{i}" for i, t in enumerate(TRICKY * 20)]
    path = write_parquet(tmp_path / "p.parquet", {"prompt": prompts})
    outs = [
        run(tok, tmp_path, path, name=f"w{w}-{k}", workers=w, chunk_rows=37)[0] for w, k in ((1, 0), (2, 0), (2, 1))
    ]
    files = [
        (open(os.path.join(o, IDS_FILE), "rb").read(), open(os.path.join(o, MANIFEST_FILE), "rb").read()) for o in outs
    ]
    assert files[0] == files[1] == files[2]
    assert open_table(outs[0]).column("input_ids").num_chunks == -(-len(prompts) // 37)
    assert [r["input_ids"] for r in rows(outs[0])] == [render_prompt_ids(tok, p) for p in prompts]


def test_streams_a_file_in_chunks(tmp_path, tok):
    # JSON lines read in chunks of 64 rows: Python memory does not grow with the file (3x the rows,
    # about the same peak), and stays far below the file size.
    text = "The quick brown fox jumps over the lazy dog. " * 30
    peaks, sizes = [], []
    for n in (1000, 3000):
        path = write_jsonl(tmp_path / f"big{n}.jsonl", [{"prompt": f"{i}: {text}"} for i in range(n)])
        tracemalloc.start()
        try:
            _, manifest = run(tok, tmp_path, path, name=f"out{n}", chunk_rows=64)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert manifest["counts"]["prompts"] == n
        sizes.append(os.path.getsize(path))
    assert sizes[1] > 4_000_000 and peaks[1] < sizes[1] / 3 and peaks[1] < 1.3 * peaks[0], (peaks, sizes)


def test_existing_output_needs_overwrite(tmp_path, tok):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "one"}])
    out, _ = run(tok, tmp_path, path)
    with pytest.raises(ValueError, match="already exists; choose another --output or pass --overwrite"):
        run(tok, tmp_path, path)
    run(tok, tmp_path, path, overwrite=True)


# ----------------------------------------------------------------------------- bad input


def bad_parquet_utf8(path):
    import numpy as np

    offsets = pa.py_buffer(np.array([0, 2, 7], dtype=np.int32).tobytes())
    array = pa.Array.from_buffers(pa.string(), 2, [None, offsets, pa.py_buffer(b"okbad\xff\xfe")])
    pq.write_table(pa.table({"prompt": array}), str(path))
    return str(path)


BAD_JSONL = [
    ([{"prompt": "ok"}, {"text": "x"}], "row 2: no `prompt` field \\(fields: text\\)"),
    ([{"prompt": "ok"}, {"prompt": 5}], "row 2: the prompt is a int"),
    ([{"prompt": "ok"}, {"prompt": "  "}], "row 2: the prompt is empty"),
    ([{"prompt": None}], "row 1: the prompt is null"),
    ([{"prompt": [{"role": "user", "content": ""}]}], "row 1: message 1 \\(user\\) has empty content"),
    ([{"prompt": [{"role": "bot", "content": "x"}]}], "row 1: message 1 has role 'bot'"),
    (
        [{"prompt": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}],
        "row 1: the last message is from 'assistant'",
    ),
    ([{"prompt": "say <|eot_id|> now"}], "row 1: the prompt contains the special token <\\|eot_id\\|>"),
    ([{"prompt": "x", "input": 3}], "row 1: the query value is a int"),
    ([["prompt", "x"]], "row 1: expected a JSON object, got list"),
]


@pytest.mark.parametrize("objects,message", BAD_JSONL)
def test_bad_jsonl_rows_name_file_and_row(tmp_path, tok, objects, message):
    path = write_jsonl(tmp_path / "bad.jsonl", objects)
    keys = KeyMap(query="input") if any("input" in o for o in objects if isinstance(o, dict)) else KeyMap()
    with pytest.raises(ValueError, match=error(path, message)):
        run(tok, tmp_path, path, keys=keys)
    assert not (tmp_path / "out").exists()


def test_invalid_utf8_jsonl(tmp_path, tok):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"prompt": "fine"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=error(path, "row 2: invalid UTF-8")):
        run(tok, tmp_path, str(path))


def test_invalid_json_line(tmp_path, tok):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "fine"}\n{"prompt": "unterminated}\n')
    with pytest.raises(ValueError, match=error(path, "row 2: invalid JSON")):
        run(tok, tmp_path, str(path))


def test_invalid_utf8_parquet(tmp_path, tok):
    path = bad_parquet_utf8(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=error(path, "row 2: column `prompt` has invalid UTF-8")):
        run(tok, tmp_path, path)


def test_parquet_missing_column_and_wrong_types(tmp_path, tok):
    path = write_parquet(tmp_path / "a.parquet", {"text": ["x"]})
    with pytest.raises(ValueError, match=error(path, "no `prompt` column \\(columns: text\\)")):
        run(tok, tmp_path, path)
    with pytest.raises(ValueError, match=error(path, "no `question` column \\(mapped from prompt\\)")):
        run(tok, tmp_path, path, keys=KeyMap(prompt="question"))
    path = write_parquet(tmp_path / "b.parquet", {"prompt": [1, 2]})
    with pytest.raises(ValueError, match=error(path, "column `prompt` has type int64; the prompt must be a string")):
        run(tok, tmp_path, path)
    path = write_parquet(tmp_path / "c.parquet", {"prompt": ["x"], "sys": [[1]]})
    with pytest.raises(ValueError, match=error(path, "column `sys` \\(system\\) has type list<")):
        run(tok, tmp_path, path, keys=KeyMap(system="sys"))


def test_parquet_bad_rows(tmp_path, tok):
    path = write_parquet(tmp_path / "p.parquet", {"prompt": ["ok", None]})
    with pytest.raises(ValueError, match=error(path, "row 2: the prompt is null")):
        run(tok, tmp_path, path)
    path = write_parquet(tmp_path / "q.parquet", {"prompt": ["ok", "ok", ""]})
    with pytest.raises(ValueError, match=error(path, "row 3: the prompt is empty")):
        run(tok, tmp_path, path, chunk_rows=2)  # row numbers count across chunks


def test_empty_files(tmp_path, tok):
    for name in ("empty.jsonl", "empty.parquet", "empty.json"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(ValueError, match=error(tmp_path / name, "the file is empty")):
            run(tok, tmp_path, str(tmp_path / name))
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n")
    with pytest.raises(ValueError, match=error(blank, "zero rows")):
        run(tok, tmp_path, str(blank))
    zero = tmp_path / "zero.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), str(zero))
    with pytest.raises(ValueError, match=error(zero, "zero rows")):
        run(tok, tmp_path, str(zero))
    array = tmp_path / "array.json"
    array.write_text("[]")
    with pytest.raises(ValueError, match=error(array, "zero rows")):
        run(tok, tmp_path, str(array))


def test_unreadable_parquet(tmp_path, tok):
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"this is not parquet at all" * 10)
    with pytest.raises(ValueError, match=error(garbage, "not a readable parquet file")):
        run(tok, tmp_path, str(garbage))
    good = write_parquet(tmp_path / "good.parquet", {"prompt": ["hello"] * 100})
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(open(good, "rb").read()[:-30])
    with pytest.raises(ValueError, match=error(cut, "not a readable parquet file")):
        run(tok, tmp_path, str(cut))


def test_bad_paths_and_mapped_json_field_never_seen(tmp_path, tok):
    with pytest.raises(ValueError, match=error(tmp_path / "missing.jsonl", "file not found")):
        run(tok, tmp_path, str(tmp_path / "missing.jsonl"))
    (tmp_path / "p.csv").write_text("prompt\nx\n")
    with pytest.raises(ValueError, match="unknown file type"):
        run(tok, tmp_path, str(tmp_path / "p.csv"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="no .parquet, .jsonl or .json files"):
        run(tok, tmp_path, str(tmp_path / "empty_dir"))
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x", "system": "y"}])
    with pytest.raises(ValueError, match=error(path, "no row has a `sytem` field \\(mapped from system\\)")):
        run(tok, tmp_path, path, keys=KeyMap(system="sytem"))


# ----------------------------------------------------------------------------- what training reads


def test_load_prompt_dataset_raw_and_prepared_agree(tmp_path, tok):
    raw_path = "data/prompts/tiny_prompts.jsonl"
    out, _ = run(tok, tmp_path, raw_path, workers=2)
    ids_raw, prompts_raw, dropped_raw = load_prompt_dataset(raw_path, tok, 30)
    ids_prep, prompts_prep, dropped_prep = load_prompt_dataset(out, tok, 30)
    assert dropped_raw == dropped_prep > 0
    assert ids_prep == ids_raw
    assert [prompt_text(p) for p in prompts_prep] == [prompt_text(p) for p in prompts_raw]
    # the raw path is exactly what the recipe did before
    raw = read_prompts(raw_path)
    assert ids_raw == [ids for ids in (render_prompt_ids(tok, p) for p in raw) if len(ids) <= 30]


def test_load_prompt_dataset_counts_rows_dropped_at_preparation(tmp_path, tok):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "word " * n} for n in (1, 10, 30, 60)])
    out, manifest = run(tok, tmp_path, path, max_prompt_length=50)
    assert manifest["counts"]["dropped_too_long"] == 1
    ids, raw, dropped = load_prompt_dataset(out, tok, 30)
    assert raw == ["word ", "word " * 10] and dropped == 2


def test_load_prompt_dataset_refuses_another_tokenizer(tmp_path, tok):
    out, _ = run(tok, tmp_path, write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x"}]))
    manifest_path = os.path.join(out, MANIFEST_FILE)
    manifest = json.load(open(manifest_path))
    manifest["tokenizer"].update(sha256="0" * 64, name_or_path="some/other-tokenizer")
    json.dump(manifest, open(manifest_path, "w"))
    with pytest.raises(
        ValueError,
        match=f"prepared dataset {re.escape(out)}: tokenized with tokenizer 'some/other-tokenizer'.*"
        "prepare the prompts again",
    ):
        load_prompt_dataset(out, tok, 100)


def test_load_prompt_dataset_folder_without_manifest(tmp_path, tok):
    with pytest.raises(ValueError, match="no manifest.json there, not a dataset written by data.prepare"):
        load_prompt_dataset(str(tmp_path), tok, 100)


def test_folder_of_raw_shards_suggests_a_different_output(tmp_path, tok):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_jsonl(shards / "part-000.jsonl", [{"prompt": "a"}])
    with pytest.raises(ValueError, match="a folder of raw prompt files") as e:
        load_prompt_dataset(str(shards), tok, 100)
    suggested = str(e.value).split("--output ")[1].split("`")[0]
    assert suggested == f"{shards}_prepared"  # never the raw folder itself: preparing into it would replace the shards


def test_prompt_stream_over_prepared_dataset_resumes(tmp_path, tok):
    out, _ = run(tok, tmp_path, "data/prompts/tiny_prompts.jsonl")
    ids, raw, _ = load_prompt_dataset(out, tok, 256)
    a = PromptStream(ids, raw, 5, shuffle=True, seed=3)
    for _ in range(20):  # past the first epoch
        a.next_batch()
    b = PromptStream(ids, raw, 5, shuffle=True, seed=3)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert [a.next_batch().indices for _ in range(3)] == [b.next_batch().indices for _ in range(3)]


def test_command_line(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"instruction": "Hi", "input": "there"}])
    out = tmp_path / "out"
    argv = [
        "--input",
        path,
        "--tokenizer",
        TOKENIZER_DIR,
        "--output",
        str(out),
        "--no-progress",
        "--workers",
        "1",
        "--map-keys",
        '{"prompt": "instruction", "query": "input"}',
        "--max-prompt-length",
        "64",
    ]
    assert main(argv) == 0
    manifest = json.load(open(out / MANIFEST_FILE))
    assert manifest["settings"]["max_prompt_length"] == 64 and manifest["counts"]["prompts"] == 1
    assert main(argv) == 2  # exists: a clear error, exit code 2


# ----------------------------------------------------------------------------- never destroys user files


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _cli(tmp_path, inputs, output, *extra):
    return main(
        [
            "--input",
            *map(str, inputs),
            "--tokenizer",
            TOKENIZER_DIR,
            "--output",
            str(output),
            "--no-progress",
            "--workers",
            "1",
            *extra,
        ]
    )


def test_output_equal_to_input_folder_is_refused_even_with_overwrite(tmp_path, capsys):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_jsonl(shards / "part-000.jsonl", [{"prompt": "a"}])
    (shards / "notes.txt").write_text("mine")
    before = _snapshot(shards)
    for output in (shards, shards / "inner", tmp_path):  # is, lies inside, contains the input
        assert _cli(tmp_path, [shards], output, "--overwrite") == 2
        assert "is, contains or lies inside the input" in capsys.readouterr().err
    assert _snapshot(shards) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]


def test_output_equal_to_an_input_file_is_refused(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    write_jsonl(path, [{"prompt": "a"}])
    before = path.read_bytes()
    for extra in ((), ("--overwrite",)):
        assert _cli(tmp_path, [path], path, *extra) == 2
        assert "--output must be a folder, not an input file" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_overwrite_replaces_only_a_prepared_dataset(tmp_path, capsys):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}])
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert _cli(tmp_path, [path], mine, "--overwrite") == 2
    assert "not only a dataset written by data.prepare" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep me" and sorted(os.listdir(mine)) == ["notes.txt"]
    out = tmp_path / "out"
    assert _cli(tmp_path, [path], out) == 0
    (out / "notes.txt").write_text("added later")
    assert _cli(tmp_path, [path], out, "--overwrite") == 2  # a prepared dataset holding a user's file
    assert (out / "notes.txt").read_text() == "added later"
    (out / "notes.txt").unlink()
    assert _cli(tmp_path, [path], out, "--overwrite") == 0  # its own output: replaced
