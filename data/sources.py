"""Input files -> chunks of raw rows, streamed (a file larger than memory is never held whole).

The parent process only finds files, checks what can be checked up front (file exists, not empty,
parquet readable, mapped columns present with usable types) and cuts the input into chunks: a
parquet record batch, or a list of raw JSON lines (bytes). Decoding, JSON parsing and every
per-row check happen in the workers (``data.prepare``), so they run on all cores; row errors
still name the file and the 1-based row.
"""

import json
import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from common.prompts.indexed import indexed_prefix, is_indexed_prefix, open_indexed, read_records
from common.util import jsonl

SUFFIXES = (".parquet", ".jsonl", ".json")


@dataclass(frozen=True)
class KeyMap:
    """Which input column holds what (the original system's ``--map-keys``). ``query``, when set,
    is appended to a string prompt after a newline (Alpaca's instruction + input); ``system`` is
    a system turn put first when non-empty."""

    prompt: str = "prompt"
    query: str | None = None
    system: str | None = None

    @classmethod
    def parse(cls, text: str | None) -> "KeyMap":
        if not text:
            return cls()
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"--map-keys {text!r}: not JSON ({e.msg}); write it like "
                '\'{"prompt": "instruction", "query": "input", "system": "system"}\''
            ) from e
        if not isinstance(mapping, dict):
            raise ValueError(f'--map-keys {text!r}: give a JSON object like \'{{"prompt": "question"}}\'')
        unknown = sorted(set(mapping) - {"prompt", "query", "system"})
        if unknown:
            raise ValueError(
                f"--map-keys: unknown key(s) {', '.join(unknown)}; valid keys are prompt, query, "
                "system (responses are not used: the policy writes them)"
            )
        for key, column in mapping.items():
            if not isinstance(column, str) or not column:
                raise ValueError(f"--map-keys: {key} -> {column!r}; map each key to a column name (a non-empty string)")
        return cls(**mapping)

    def columns(self) -> dict[str, str]:
        """``{role in the prompt: column name}`` for the keys in use."""
        return {k: v for k, v in (("prompt", self.prompt), ("query", self.query), ("system", self.system)) if v}


@dataclass
class Chunk:
    file_index: int
    path: str
    first_row: int  # 1-based row number of the first payload entry in its file
    # "arrow" (a pyarrow RecordBatch), "lines" (list of bytes), "objects" (list of parsed JSON values),
    # "indexed" (token id lists of a Megatron indexed dataset: first_row is document index + 1)
    kind: str
    payload: object


def resolve_inputs(paths: list[str]) -> list[str]:
    """Files as given, and for a folder its .parquet/.jsonl/.json files in name order (the shards).
    A Megatron indexed dataset (``common/prompts/indexed.py``) is one input, named by its prefix."""
    files = []
    for path in paths:
        prefix = indexed_prefix(path)
        if prefix is not None:  # the original system's preprocessed prompts, named by their prefix
            open_indexed(prefix)  # the files' checks now, before the progress bar and any worker
            files.append(prefix)
        elif os.path.isdir(path):
            shards = sorted(
                os.path.join(path, n)
                for n in os.listdir(path)
                if n.endswith(SUFFIXES) and os.path.isfile(os.path.join(path, n))
            )
            if not shards:
                raise ValueError(
                    f"input folder {path}: no .parquet, .jsonl or .json files in it; point --input at the prompt files"
                )
            files += shards
        elif os.path.isfile(path):
            if not path.endswith(SUFFIXES):
                raise ValueError(f"input {path}: unknown file type; use .parquet, .jsonl or .json")
            files.append(path)
        else:
            raise ValueError(f"input {path}: file not found; check the path (relative paths start at {os.getcwd()})")
    return files


def known_rows(path: str) -> int | None:
    """Row count without reading the data (parquet footer), for the progress bar."""
    if not path.endswith(".parquet"):
        return None
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowException, OSError):
        return None  # read_chunks raises the clear error


def read_chunks(path: str, file_index: int, keys: KeyMap, chunk_rows: int):
    """Yield the chunks of one file."""
    if is_indexed_prefix(path):
        yield from _indexed_chunks(path, file_index, chunk_rows)
        return
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path}: the file is empty; give it at least one row")
    if path.endswith(".parquet"):
        yield from _parquet_chunks(path, file_index, keys, chunk_rows)
    else:
        yield from _json_chunks(path, file_index, chunk_rows)


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_messages(t: pa.DataType) -> bool:
    return (
        (pa.types.is_list(t) or pa.types.is_large_list(t))
        and pa.types.is_struct(t.value_type)
        and {"role", "content"} <= {f.name for f in t.value_type}
    )


def check_parquet_schema(path: str, schema: pa.Schema, keys: KeyMap) -> None:
    names = schema.names
    for key, column in keys.columns().items():
        if column not in names:
            mapped = "" if key == column else f" (mapped from {key})"
            raise ValueError(
                f"{path}: no `{column}` column{mapped} (columns: {', '.join(names) or 'none'}); "
                f'rename the column or map it with --map-keys \'{{"{key}": "<column>"}}\''
            )
        t = schema.field(column).type
        if key == "prompt" and not (_is_text(t) or _is_messages(t)):
            raise ValueError(
                f"{path}: column `{column}` has type {t}; the prompt must be a string or a "
                "list of {role, content} structs"
            )
        if key != "prompt" and not (_is_text(t) or pa.types.is_null(t)):
            raise ValueError(f"{path}: column `{column}` ({key}) has type {t}; it must be a string column")


def _parquet_chunks(path, file_index, keys, chunk_rows):
    try:
        f = pq.ParquetFile(path)
        schema, num_rows = f.schema_arrow, f.metadata.num_rows
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: not a readable parquet file ({e}); re-export it as parquet") from e
    check_parquet_schema(path, schema, keys)
    if num_rows == 0:
        raise ValueError(f"{path}: it has zero rows; give at least one prompt")
    row = 1
    batches = f.iter_batches(batch_size=chunk_rows, columns=list(dict.fromkeys(keys.columns().values())))
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"{path}: unreadable parquet data near row {row} ({e}); re-export it as parquet") from e
        yield Chunk(file_index, path, row, "arrow", batch)
        row += batch.num_rows


def _json_chunks(path, file_index, chunk_rows):
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
        f.seek(0)
        if path.endswith(".json") and head.startswith(b"["):
            # One JSON array: it has to be parsed whole (use JSON lines for files larger than memory).
            data = f.read()
            try:
                array = json.loads(data.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}: invalid UTF-8 at byte {e.start}; re-encode the file as UTF-8") from e
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                    "fix the file or write it as JSON lines"
                ) from e
            if not array:
                raise ValueError(f"{path}: the JSON array has zero rows; give at least one prompt")
            for start in range(0, len(array), chunk_rows):
                yield Chunk(file_index, path, start + 1, "objects", array[start : start + chunk_rows])
            return
    lines, first_row, any_rows = [], 1, False
    for row, line in jsonl.iter_lines(path):  # split on b"\n" only; parsed in the workers (jsonl.loads)
        if not lines:
            first_row = row
        lines.append(line)
        if len(lines) == chunk_rows:
            any_rows = any_rows or any(x.strip() for x in lines)
            yield Chunk(file_index, path, first_row, "lines", lines)
            lines = []
    if lines:
        any_rows = any_rows or any(x.strip() for x in lines)
        yield Chunk(file_index, path, first_row, "lines", lines)
    if not any_rows:
        raise ValueError(f"{path}: it has zero rows (only blank lines); give at least one prompt")


def _indexed_chunks(prefix, file_index, chunk_rows):
    """The stored records, ``chunk_rows`` at a time, from megatron-core's memory-mapped reader; the
    files' checks (``open_indexed``) run here, the tokenizer's (vocabulary, format) in the workers."""
    ds, _ = open_indexed(prefix)
    for start in range(0, len(ds), chunk_rows):
        yield Chunk(file_index, prefix, start + 1, "indexed", read_records(ds, start, start + chunk_rows))
