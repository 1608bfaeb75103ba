"""The prepared prompt dataset on disk (written by ``python -m data.prepare``), and its reader.

A prepared dataset is a directory holding two files:

- ``prompts.arrow``: an Arrow IPC file (uncompressed, so it is memory-mapped, not read) with one
  row per prompt: ``input_ids`` (list<int32>, the rendered prompt ready for the assistant reply),
  ``messages`` (list<struct<role, content>>, exactly what was rendered, after any truncation),
  ``source_file`` (index into the manifest's ``sources``) and ``source_row`` (1-based row there).
- ``manifest.json``: format, sources (path, bytes, sha256, rows), tokenizer fingerprint, template,
  settings and counts. It holds no timestamps, so the same input and settings give the same bytes.
"""

import hashlib
import json
import os

import pyarrow as pa

FORMAT = "online-dpo-prompts/1"
IDS_FILE = "prompts.arrow"
MANIFEST_FILE = "manifest.json"

MESSAGE_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("messages", MESSAGE_TYPE),
        ("source_file", pa.int32()),
        ("source_row", pa.int64()),
    ]
)


def tokenizer_fingerprint(tok) -> dict:
    """What decides the ids: the fast tokenizer's full serialization (vocab, merges, pre-tokenizer,
    added tokens), hashed, plus BOS/EOS. Two tokenizers with the same sha256 give the same ids."""
    cached = getattr(tok, "_prompt_fingerprint", None)
    if cached is None or cached[0] != len(tok):  # hashing 9 MB of JSON: once per tokenizer object
        cached = (len(tok), hashlib.sha256(tok.backend_tokenizer.to_str().encode("utf-8")).hexdigest())
        tok._prompt_fingerprint = cached
    return {
        "name_or_path": str(getattr(tok, "name_or_path", "")),
        "sha256": cached[1],
        "vocab_size": len(tok),
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
    }


def is_prepared(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, MANIFEST_FILE))


def read_manifest(path: str) -> dict:
    manifest_path = os.path.join(path, MANIFEST_FILE)
    if not os.path.isfile(manifest_path):
        # a different --output: preparing into the folder of the raw files would replace them
        new = os.path.normpath(path) + "_prepared"
        raw = sorted(n for n in os.listdir(path) if n.endswith((".parquet", ".jsonl", ".json")))
        what = (
            f"a folder of raw prompt files ({', '.join(raw[:3])}{', ...' if len(raw) > 3 else ''})"
            if raw
            else f"no {MANIFEST_FILE} there"
        )
        raise ValueError(
            f"prepared dataset {path}: {what}, not a dataset written by data.prepare; prepare it into a "
            f"new folder with `python -m data.prepare --input {path} --tokenizer <dir> --output {new}` "
            f"and set data_path={new}, or point data_path at one .parquet/.jsonl/.json prompt file"
        )
    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise ValueError(
            f"prepared dataset {path}: format {manifest.get('format')!r}, this code reads "
            f"{FORMAT!r}; prepare it again with `python -m data.prepare`"
        )
    return manifest


def open_table(path: str) -> pa.Table:
    """The prompt table, memory-mapped: columns are read from the page cache on access."""
    source = pa.memory_map(os.path.join(path, IDS_FILE), "r")
    return pa.ipc.open_file(source).read_all()


def ids_as_lists(column: pa.ChunkedArray) -> list[list[int]]:
    """list<int32> column -> Python lists, through numpy (several times faster than to_pylist)."""
    out: list[list[int]] = []
    for chunk in column.chunks:
        offsets = chunk.offsets.to_numpy()
        values = chunk.values.to_numpy(zero_copy_only=False).tolist()
        out += [values[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
    return out


def raw_prompts(column: pa.ChunkedArray) -> list:
    """Stored messages -> prompts as ``read_prompts`` gives them: a lone user turn becomes its
    string, anything else stays a messages list (``prompt_text`` works on both)."""
    out = []
    for messages in column.to_pylist():
        if len(messages) == 1 and messages[0]["role"] == "user":
            out.append(messages[0]["content"])
        else:
            out.append(messages)
    return out


def read_prepared(path: str, tok) -> tuple[list[list[int]], list, dict]:
    """Read a prepared dataset for training: ``(ids, raw prompts, manifest)``.

    Refuses a dataset tokenized by a different tokenizer than ``tok``: its ids would be
    silently wrong for the model.
    """
    manifest = read_manifest(path)
    mine = tokenizer_fingerprint(tok)
    theirs = manifest["tokenizer"]
    if mine["sha256"] != theirs["sha256"] or mine["bos_token_id"] != theirs["bos_token_id"]:
        raise ValueError(
            f"prepared dataset {path}: tokenized with tokenizer {theirs['name_or_path']!r} "
            f"(sha256 {theirs['sha256'][:12]}), but training uses {mine['name_or_path']!r} "
            f"(sha256 {mine['sha256'][:12]}); prepare the prompts again with "
            f"`python -m data.prepare --tokenizer {mine['name_or_path']} ...` or use the matching tokenizer"
        )
    table = open_table(path)
    if table.num_rows != manifest["counts"]["prompts"]:
        raise ValueError(
            f"prepared dataset {path}: {IDS_FILE} has {table.num_rows} rows but the manifest "
            f"says {manifest['counts']['prompts']}; the dataset is damaged, prepare it again"
        )
    return ids_as_lists(table.column("input_ids")), raw_prompts(table.column("messages")), manifest
