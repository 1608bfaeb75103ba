"""The original system's preprocessed prompts (a Megatron indexed dataset, common/prompts/indexed.py),
built here from scratch as MindSpeed-LLM's PPOAlpacaStyleInstructionHandler writes them: megatron-core's
own IndexedDatasetBuilder (int32, add_item + end_document per record, input_ids and attention_mask),
each record the Llama-3 rendering of one prompt tokenized the original's way (the text parts encoded
without special tokens, BOS put in front by id). Then read back, loaded for training, prepared, and
broken in every way the reader must name. Uses the real Llama 3 tokenizer."""

import os
import struct
import warnings

import numpy as np
import pytest
import torch

from common.prompts.dataset import load_prompt_dataset
from common.prompts.indexed import IDS, MASK, indexed_prefix, is_indexed_prefix, read_indexed
from common.prompts.prepared import open_table
from common.prompts.tokenizer import load_tokenizer, render_prompt_ids
from data.prepare import Settings, main, prepare

TOKENIZER_DIR = "assets/llama3_tokenizer"
SYSTEM_USER = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Describe the sea."}]
PROMPTS = [
    "The old lighthouse stood at the edge of the cliff,",
    "  Rain fell on the  city;\nthe streets were empty. 42 cats!  ",
    "\n\nstarts with newlines",
    "日本語のテキスト, emoji 🤖🚀 and e\u0301",
    "a <| b |> c <|start_header_id|",  # looks like a header, is plain text
    SYSTEM_USER,
    "x" * 300,  # the long one
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TOKENIZER_DIR)


def original_ids(tok, prompt) -> list[int]:
    """One record as the original writes it (seed-formats.md 2.2): its llama3 template's text, the
    string parts encoded with add_special_tokens=False, BOS inserted by id; no EOS."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    text = "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>" for m in messages)
    text += "<|start_header_id|>assistant<|end_header_id|>\n\n"
    return [tok.bos_token_id] + tok.encode(text, add_special_tokens=False)


def write_indexed(prefix, records, *, mask=True, dtype=np.int32, documents=None) -> str:
    """``records`` (id lists) as ``{prefix}_packed_input_ids_document.bin/.idx`` (+ attention_mask)."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    fields = (
        {"input_ids": records, "attention_mask": [[1] * len(r) for r in records]} if mask else {"input_ids": records}
    )
    for field, rows in fields.items():
        builder = IndexedDatasetBuilder(f"{prefix}_packed_{field}_document.bin", dtype=dtype)
        for row in rows:
            builder.add_item(torch.tensor(row, dtype=torch.int64))
            if documents is None:
                builder.end_document()
        if documents is not None:  # one document holding every sequence (pretraining-style)
            builder.end_document()
        builder.finalize(f"{prefix}_packed_{field}_document.idx")
    return str(prefix)


@pytest.fixture(scope="module")
def original(tmp_path_factory, tok):
    """``(prefix, stored ids)`` of a dataset laid out as ``./dataset/descriptiveness/descriptiveness``."""
    folder = tmp_path_factory.mktemp("dataset") / "descriptiveness"
    folder.mkdir()
    records = [original_ids(tok, p) for p in PROMPTS]
    return write_indexed(folder / "descriptiveness", records), records


def copy_of(original, tmp_path) -> str:
    prefix, records = original
    return write_indexed(tmp_path / "d", records)


def patch_idx(prefix, offset: int, data: bytes) -> None:
    with open(f"{prefix}{IDS}.idx", "r+b") as f:
        f.seek(offset)
        f.write(data)


# ----------------------------------------------------------------------------- reading


def test_read_gives_the_stored_ids_and_the_original_prompts(original, tok):
    prefix, records = original
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # this tokenizer's template is the original's: no warning
        ids, raw, info = read_indexed(prefix, tok)
    assert ids == records
    assert raw == PROMPTS  # strings as strings, the system + user prompt as its messages
    assert info == {
        "prefix": prefix,
        "documents": len(PROMPTS),
        "tokens": sum(map(len, records)),
        "max_length": max(map(len, records)),
        "dtype": "int32",
        "attention_mask_checked": True,
        "template_matches": True,
    }
    # and this project renders each recovered prompt to the very ids the original stored
    assert [render_prompt_ids(tok, p) for p in raw] == records


def test_every_name_of_the_dataset_is_the_same_prefix(original, tmp_path):
    prefix, _ = original
    for given in (
        prefix,
        prefix + IDS,
        prefix + IDS + ".bin",
        prefix + IDS + ".idx",
        prefix + MASK + ".idx",
    ):
        assert indexed_prefix(given) == prefix, given
    (tmp_path / "p.jsonl").write_text('{"prompt": "x"}\n')
    for other in (prefix + "_other", str(tmp_path / "p.jsonl"), str(tmp_path), os.path.dirname(prefix) + os.sep):
        assert not is_indexed_prefix(other), other


def test_attention_mask_files_are_optional(original, tok, tmp_path):
    _, records = original
    prefix = write_indexed(tmp_path / "d", records, mask=False)
    ids, raw, info = read_indexed(prefix, tok)
    assert ids == records and raw == PROMPTS and info["attention_mask_checked"] is False


def test_another_chat_template_warns_and_keeps_the_stored_ids(original, tmp_path):
    prefix, records = original
    tok = load_tokenizer(TOKENIZER_DIR)
    tok.chat_template = "{%- for m in messages -%}{{ m['role'] + ': ' + m['content'] + '\\n' }}{%- endfor -%}"
    with pytest.warns(UserWarning, match="renders document 0 differently from the stored ids"):
        ids, raw, info = read_indexed(prefix, tok)
    assert ids == records and raw == PROMPTS and info["template_matches"] is False
    # data.prepare records one template per dataset: it refuses, and says which one fits
    with pytest.raises(ValueError, match="document 0: the template 'tokenizer' renders .* pass --template llama3"):
        prepare([prefix], str(tmp_path / "o"), tok, progress=False)
    out = str(tmp_path / "llama3")
    prepare([prefix], out, tok, Settings(template="llama3"), progress=False)
    assert open_table(out).column("input_ids").to_pylist() == records


# ----------------------------------------------------------------------------- what training loads


def test_load_prompt_dataset_takes_the_prefix_and_drops_long_prompts(original, tok):
    prefix, records = original
    ids, raw, dropped = load_prompt_dataset(prefix, tok, max_prompt_length=10_000)
    assert (ids, raw, dropped) == (records, PROMPTS, 0)
    limit = max(len(r) for r in records[:-1])  # every prompt fits but the 300 x's
    ids, raw, dropped = load_prompt_dataset(prefix + IDS + ".idx", tok, max_prompt_length=limit)
    assert (ids, raw, dropped) == (records[:-1], PROMPTS[:-1], 1)
    with pytest.raises(ValueError, match="all 7 are longer than max_prompt_length=5"):
        load_prompt_dataset(prefix, tok, max_prompt_length=5)


def test_data_prepare_keeps_the_stored_ids(original, tok, tmp_path):
    prefix, records = original
    out = str(tmp_path / "prepared")
    manifest = prepare([prefix], out, tok, Settings(chunk_rows=3), progress=False)  # 3 chunks
    table = open_table(out)
    assert table.column("input_ids").to_pylist() == records
    assert table.column("source_row").to_pylist() == list(range(1, len(records) + 1))
    messages = table.column("messages").to_pylist()
    assert messages[5] == SYSTEM_USER and messages[0] == [{"role": "user", "content": PROMPTS[0]}]
    assert manifest["counts"]["prompts"] == len(records) and manifest["counts"]["dropped_too_long"] == 0
    (source,) = manifest["sources"]
    assert source["path"] == prefix and source["format"] == "megatron-indexed" and source["rows"] == len(records)
    assert [f["path"] for f in source["files"]] == [prefix + IDS + ".idx", prefix + IDS + ".bin"]
    # training reads the prepared folder and the prefix alike
    assert load_prompt_dataset(out, tok, 10_000) == load_prompt_dataset(prefix, tok, 10_000)
    limit = max(len(r) for r in records[:-1])
    again = str(tmp_path / "cut")
    manifest = prepare([prefix], again, tok, Settings(max_prompt_length=limit), progress=False)
    assert manifest["counts"]["dropped_too_long"] == 1
    assert open_table(again).column("input_ids").to_pylist() == records[:-1]


def test_data_prepare_command_line(original, tmp_path, capsys):
    prefix, records = original
    out = str(tmp_path / "o")
    argv = ["--input", prefix + IDS + ".bin", "--output", out, "--tokenizer", TOKENIZER_DIR, "--workers", "1"]
    assert main([*argv, "--no-progress"]) == 0, capsys.readouterr().err
    assert open_table(out).column("input_ids").to_pylist() == records
    bad = copy_of(original, tmp_path)
    os.remove(bad + IDS + ".idx")
    assert main(["--input", bad, "--output", str(tmp_path / "o2"), "--tokenizer", TOKENIZER_DIR]) == 2
    err = capsys.readouterr().err
    assert "d_packed_input_ids_document.idx is missing" in err and not os.path.exists(tmp_path / "o2")


# ----------------------------------------------------------------------------- bad inputs


def refused(prefix, tok, message, tmp_path):
    """The same error from read_indexed, load_prompt_dataset and data.prepare (which writes nothing)."""
    with pytest.raises(ValueError, match=message):
        read_indexed(prefix, tok)
    with pytest.raises(ValueError, match=message):
        load_prompt_dataset(prefix, tok, 10_000)
    out = tmp_path / "refused"
    with pytest.raises(ValueError, match=message):
        prepare([prefix], str(out), tok, progress=False)
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".refused")]


@pytest.mark.parametrize("missing", [".idx", ".bin"])
def test_half_a_pair(original, tok, tmp_path, missing):
    prefix = copy_of(original, tmp_path)
    os.remove(prefix + IDS + missing)
    other = ".bin" if missing == ".idx" else ".idx"
    refused(prefix, tok, f"d{IDS}{other} is there but d{IDS}{missing} is missing; .* copy the missing file", tmp_path)


@pytest.mark.parametrize(
    "offset, data, found",
    [
        (0, b"NOTIDX\x00\x00\x00", r"magic b'NOTIDX\\x00\\x00\\x00'"),
        (9, struct.pack("<Q", 2), "version 2"),
        (17, bytes([99]), "dtype code 99"),
    ],
    ids=["magic", "version", "dtype"],
)
def test_an_index_megatron_cannot_read(original, tok, tmp_path, offset, data, found):
    prefix = copy_of(original, tmp_path)
    patch_idx(prefix, offset, data)
    refused(
        prefix, tok, f"megatron-core's IndexedDataset cannot read it .*found .*{found}.*supported: .*4 int32", tmp_path
    )


def test_float_values(original, tok, tmp_path):
    prefix = write_indexed(tmp_path / "d", original[1], dtype=np.float32)
    refused(prefix, tok, "holds float32 values; token ids must be integers", tmp_path)


def test_empty_dataset(tok, tmp_path):
    prefix = write_indexed(tmp_path / "d", [])
    refused(prefix, tok, r"input_ids_document.bin is empty \(no records\)", tmp_path)


def test_ids_outside_the_vocabulary(original, tok, tmp_path):
    records = [list(r) for r in original[1]]
    records[2][3] = len(tok) + 5
    records[4][1] = -1
    prefix = write_indexed(tmp_path / "d", records)
    refused(
        prefix, tok, f"document 2: token id {len(tok) + 5} is outside the tokenizer's vocabulary .*2 of 7", tmp_path
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r[1:], "document 1: it starts with '<\\|start_header_id\\|>' instead of <\\|begin_of_text\\|>"),
        (lambda r: r[:-4], "document 1: it ends without the assistant header"),  # the original's truncation
        (lambda r: r[:20], "document 1: its last turn \\('user', token 1\\) has no <\\|eot_id\\|>"),
        (lambda r: r + [271], "document 1: its last turn \\('assistant'.* is not the bare assistant header"),
    ],
    ids=["no_bos", "no_assistant_header", "cut_in_the_prompt", "text_after_the_header"],
)
def test_records_not_in_the_llama3_format(original, tok, tmp_path, change, message):
    records = [list(r) for r in original[1]]
    records[1] = change(records[1])
    prefix = write_indexed(tmp_path / "d", records)
    refused(prefix, tok, message + ".*expected a record in the Llama-3 format", tmp_path)


def test_ids_another_tokenizer_made(original, tok, tmp_path):
    """Text split into tokens this tokenizer would not choose: the ids decode, but not back."""
    records = [list(r) for r in original[1]]
    head, tail = records[0][:4], records[0][-5:]  # BOS + user header; <|eot_id|> + assistant header
    body = [tok.convert_tokens_to_ids(t) for t in ("ĊĊ", "T", "he")] + tok.encode(" sea", add_special_tokens=False)
    records[0] = head + body + tail
    prefix = write_indexed(tmp_path / "d", records)
    with pytest.raises(ValueError, match="document 0: its text '\\\\n\\\\nThe sea' does not encode back"):
        read_indexed(prefix, tok)
    with pytest.raises(
        ValueError, match="document 0: the template 'tokenizer' renders its decoded prompt to other ids"
    ):
        prepare([prefix], str(tmp_path / "o"), tok, progress=False)


def test_attention_mask_of_other_lengths(original, tok, tmp_path):
    prefix = copy_of(original, tmp_path)
    other = write_indexed(tmp_path / "o", original[1][:-1])
    for ext in (".bin", ".idx"):
        os.replace(other + MASK + ext, prefix + MASK + ext)
    refused(prefix, tok, "the attention_mask files hold 6 records whose lengths differ from the 7", tmp_path)


def test_bin_cut_short(original, tok, tmp_path):
    prefix = copy_of(original, tmp_path)
    size = os.path.getsize(prefix + IDS + ".bin")
    os.truncate(prefix + IDS + ".bin", size - 4)
    refused(prefix, tok, f"has {size - 4} bytes but its .idx describes {size}", tmp_path)


def test_several_sequences_per_document(original, tok, tmp_path):
    prefix = write_indexed(tmp_path / "d", original[1], documents="one")
    refused(prefix, tok, "1 documents hold 7 sequences; .* one prompt per document", tmp_path)
