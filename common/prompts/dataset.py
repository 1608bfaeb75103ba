"""Prompt data: read it, check it, and hand it to the training loop in a repeatable order.

A prompt is either a plain string (one user turn) or a list of ``{"role", "content"}`` messages.
Every check here fails with a ValueError naming the file, the 1-based row and how to fix it,
because a bad row found at step 900 of a run costs far more than one found at load time.

This module stays free of tokenizers and models: ``common/prompts/tokenizer.py`` renders prompts to ids,
the recipe decides what to drop (``filter_long_prompts``) and feeds ``PromptStream``.
"""

import json
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common.prompts.indexed import is_indexed_prefix, read_indexed
from common.prompts.messages import normalize_prompt
from common.prompts.prepared import read_prepared
from common.prompts.tokenizer import render_prompt_ids
from common.util import jsonl

# ----------------------------------------------------------------------------- reading files


def read_prompts(path: str) -> list:
    """Read the ``prompt`` column of a ``.parquet``, ``.jsonl`` or ``.json`` file.

    Returns the prompts as given (strings or message lists), each checked by
    ``normalize_prompt`` so a bad row fails here, with its row number, not mid-run.
    """
    _check_file(path, "prompt file")
    if path.endswith(".parquet"):
        rows = _read_parquet_prompt_column(path)
    elif path.endswith(".jsonl") or path.endswith(".json"):
        rows = _read_json_prompt_column(path)
    else:
        raise ValueError(f"prompt file {path}: unknown file type; use .parquet, .jsonl or .json with a `prompt` column")
    if not rows:
        raise ValueError(f"prompt file {path}: it has zero rows; give at least one prompt")
    for row, prompt in enumerate(rows, start=1):
        if prompt is None:
            raise ValueError(f"{path} row {row}: the prompt is null; remove the row or give it text")
        normalize_prompt(prompt, f"{path} row {row}")
    return rows


def _check_file(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise ValueError(f"{what} {path}: file not found; check the path (relative paths start at {os.getcwd()})")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{what} {path}: the file is empty; give it at least one row")


def _read_parquet_prompt_column(path: str) -> list:
    try:
        columns = pq.read_schema(path).names
        if "prompt" not in columns:
            raise ValueError(
                f"prompt file {path}: no `prompt` column (columns: {', '.join(columns) or 'none'}); "
                "rename the column holding the prompts to `prompt`"
            )
        table = pq.read_table(path, columns=["prompt"])  # other columns may be large; skip them
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"prompt file {path}: not a readable parquet file ({e}); re-export it as parquet") from e
    return table.column("prompt").to_pylist()


def _read_json_prompt_column(path: str) -> list:
    """JSON lines (one object per line), or for ``.json`` also one array of objects."""
    objects = list(_json_objects(path))
    columns = set()
    for _, obj in objects:
        columns.update(obj)
    if objects and "prompt" not in columns:
        raise ValueError(
            f"prompt file {path}: no `prompt` column (columns: {', '.join(sorted(columns)) or 'none'}); "
            "rename the field holding the prompts to `prompt`"
        )
    rows = []
    for row, obj in objects:
        if "prompt" not in obj:
            raise ValueError(f"{path} row {row}: no `prompt` field (fields: {', '.join(obj)}); add one")
        rows.append(obj["prompt"])
    return rows


def _json_objects(path: str):
    """Yield ``(row, object)`` with 1-based rows; blank lines are skipped but still counted."""
    with open(path, "rb") as f:
        is_array = path.endswith(".json") and f.read(4096).lstrip().startswith(b"[")
    if is_array:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            array = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON ({e}); fix the file or write it as JSON lines") from e
        entries = enumerate(array, start=1)
    else:
        entries = jsonl.read(path)
    for row, obj in entries:
        if not isinstance(obj, dict):
            raise ValueError(
                f"{path} row {row}: expected a JSON object, got {type(obj).__name__}; "
                'write one {"prompt": ...} object per row'
            )
        yield row, obj


def load_fixed_responses(path: str) -> dict[str, list[str]]:
    """Read stored responses (``{"prompt": str, "responses": [str, ...]}`` per line), keyed by
    prompt text (see ``prompt_text``). They replace generation in the accuracy-comparison mode,
    so every prompt needs at least two responses to form a pair."""
    _check_file(path, "fixed responses file")
    fixed: dict[str, list[str]] = {}
    first_row: dict[str, int] = {}
    for row, obj in jsonl.read(path):
        where = f"{path} row {row}"
        if not isinstance(obj, dict) or "prompt" not in obj or "responses" not in obj:
            raise ValueError(f'{where}: expected {{"prompt": <str>, "responses": [<str>, ...]}}, got {obj!r}')
        prompt, responses = obj["prompt"], obj["responses"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: `prompt` must be a non-empty string, got {prompt!r}")
        if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
            raise ValueError(f"{where}: `responses` must be a list of strings, got {responses!r}")
        if len(responses) < 2:
            raise ValueError(f"{where}: {len(responses)} response(s); give at least 2 so a pair can be formed")
        if prompt in fixed:
            raise ValueError(
                f"{where}: duplicate prompt (first at row {first_row[prompt]}); "
                "keep one line per prompt and put all its responses in it"
            )
        fixed[prompt] = responses
        first_row[prompt] = row
    if not fixed:
        raise ValueError(f"fixed responses file {path}: it has zero rows; give at least one line")
    return fixed


# ----------------------------------------------------------------------------- order for training


def filter_long_prompts(prompt_ids: list[list[int]], raw: list, max_len: int) -> tuple[list, list, int]:
    """Drop prompts whose rendered ids are longer than ``max_len``.

    Dropping (not truncating) because a truncated chat prompt loses its assistant header and
    the model would be asked to continue the user's text. Returns ``(ids, raw, n_dropped)``.
    """
    keep = [i for i, ids in enumerate(prompt_ids) if len(ids) <= max_len]
    if not keep:
        longest = min(len(ids) for ids in prompt_ids) if prompt_ids else 0
        raise ValueError(
            f"prompts: all {len(prompt_ids)} are longer than max_prompt_length={max_len} "
            f"(shortest is {longest} tokens); raise max_prompt_length or use shorter prompts"
        )
    return [prompt_ids[i] for i in keep], [raw[i] for i in keep], len(prompt_ids) - len(keep)


@dataclass
class PromptBatch:
    indices: list[int]  # positions in the lists given to PromptStream
    prompts: list  # raw prompts as given (str or messages)
    ids: list[list[int]]  # rendered prompt token ids


class PromptStream:
    """Endless, repeatable order of prompts for the training loop.

    ``shuffle=False`` walks the file order; ``shuffle=True`` walks a permutation per epoch drawn
    from ``seed + epoch`` (numpy's legacy RandomState, whose stream numpy keeps stable across
    versions). A batch may span the end of an epoch. ``state_dict`` holds just epoch and position,
    so a resumed run sees exactly the batches the uninterrupted run would have seen.
    """

    def __init__(self, prompt_ids: list[list[int]], raw: list, batch_size: int, *, shuffle: bool, seed: int):
        if len(prompt_ids) != len(raw):
            raise ValueError(
                f"PromptStream: {len(prompt_ids)} id lists but {len(raw)} raw prompts; "
                "pass the lists as returned by filter_long_prompts"
            )
        if not prompt_ids:
            raise ValueError("PromptStream: no prompts; give at least one prompt")
        if batch_size < 1:
            raise ValueError(f"PromptStream: batch_size={batch_size}; use a batch size of at least 1")
        if seed < 0:
            raise ValueError(f"PromptStream: seed={seed}; use a non-negative seed")
        self.prompt_ids, self.raw, self.batch_size = prompt_ids, raw, batch_size
        self.shuffle, self.seed = shuffle, seed
        self.epoch, self.position = 0, 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> list[int]:
        n = len(self.prompt_ids)
        if not self.shuffle:
            return list(range(n))
        return np.random.RandomState((self.seed + epoch) % 2**32).permutation(n).tolist()

    def next_batch(self) -> PromptBatch:
        indices = []
        while len(indices) < self.batch_size:
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._epoch_order(self.epoch)
            take = min(self.batch_size - len(indices), len(self._order) - self.position)
            indices += self._order[self.position : self.position + take]
            self.position += take
        return PromptBatch(indices, [self.raw[i] for i in indices], [self.prompt_ids[i] for i in indices])

    def batch_at(self, indices: list[int]) -> PromptBatch:
        """The batch of the prompts at ``indices`` (a batch drawn before a checkpoint, restored)."""
        return PromptBatch(list(indices), [self.raw[i] for i in indices], [self.prompt_ids[i] for i in indices])

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "num_prompts": len(self.prompt_ids),
            "shuffle": self.shuffle,
            "seed": self.seed,
        }

    def load_state_dict(self, d: dict) -> None:
        mine = self.state_dict()
        for key in ("num_prompts", "shuffle", "seed"):
            if d[key] != mine[key]:
                raise ValueError(
                    f"PromptStream.load_state_dict: saved {key}={d[key]!r} but this run has "
                    f"{mine[key]!r}; resume with the same prompts, shuffle and seed"
                )
        if not 0 <= d["position"] <= len(self.prompt_ids):
            raise ValueError(
                f"PromptStream.load_state_dict: position {d['position']} is outside "
                f"0..{len(self.prompt_ids)}; the saved state is corrupt"
            )
        self.epoch, self.position = d["epoch"], d["position"]
        self._order = self._epoch_order(self.epoch)


# ----------------------------------------------------------------------------- what training loads


def load_prompt_dataset(path: str, tok, max_prompt_length: int) -> tuple[list[list[int]], list, int]:
    """Prompts for training: ``(prompt ids, raw prompts for logging, number dropped as too long)``.

    ``path`` is a raw ``.parquet``/``.jsonl``/``.json`` file (read, checked, rendered with
    ``render_prompt_ids`` and filtered here), a folder written by ``python -m data.prepare``
    (ids memory-mapped from its Arrow file; refused if it was tokenized by another tokenizer), or
    the prefix of the original system's preprocessed prompts (MindSpeed-LLM's Megatron indexed
    dataset, ``<prefix>_packed_input_ids_document.bin/.idx``: ``common/prompts/indexed.py``; its ids
    are used as stored, the prompt text is decoded from them).
    Prompts longer than ``max_prompt_length`` are dropped; for a prepared folder the count
    includes the rows its preparation dropped. (The original cut an indexed prompt to its first
    ``max_prompt_length`` tokens, losing the assistant header; here it is dropped and counted.)
    """
    if is_indexed_prefix(path):  # before the folder test: the prefix may share its name with a folder
        ids, raw, _ = read_indexed(path, tok)
        return filter_long_prompts(ids, raw, max_prompt_length)

    if os.path.isdir(path):
        ids, raw, manifest = read_prepared(path, tok)
        ids, raw, dropped = filter_long_prompts(ids, raw, max_prompt_length)
        return ids, raw, dropped + manifest["counts"]["dropped_too_long"]

    raw = read_prompts(path)
    return filter_long_prompts([render_prompt_ids(tok, p) for p in raw], raw, max_prompt_length)
