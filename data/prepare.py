"""Prepare prompts for training: .parquet/.jsonl/.json files -> a tokenized, memory-mapped dataset.

    python -m data.prepare --input prompts.parquet --tokenizer assets/llama3_tokenizer --output prepared/
    python -m data.prepare --input shards/ --tokenizer assets/llama3_tokenizer --output prepared/ \\
        --map-keys '{"prompt": "instruction", "query": "input", "system": "system"}' \\
        --max-prompt-length 256 --too-long truncate_left --workers 2

Each row becomes ``{role, content}`` messages (a string prompt is one user turn; ``query`` is
appended to it after a newline; a non-empty ``system`` becomes the first turn), is checked like
``common.prompts.dataset.normalize_prompt`` does, rendered with the chat template ready for the assistant
reply, and tokenized exactly as ``common.prompts.tokenizer.render_prompt_ids`` would. Prompts longer than
``--max-prompt-length`` are dropped or cut from the left of the last user message
(``--too-long``); the assistant header is never cut, and both counts go to the manifest.

The original system's preprocessed prompts (MindSpeed-LLM's Megatron indexed dataset, given by its
prefix: ``--input ./dataset/descriptiveness/descriptiveness``) are taken as they are: the stored ids
become ``input_ids`` unchanged and the messages are decoded from them (``common/prompts/indexed.py``);
each record must be what ``--template`` renders from its messages (``--template llama3`` for them).

Output (see ``common/prompts/prepared.py``): ``prompts.arrow`` + ``manifest.json``, written to a temporary
folder and renamed into place, so a failed run leaves nothing that looks complete. The same input
and settings give byte-identical output for any ``--workers``.
"""

import argparse
import gc
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import shutil
import sys
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from common.prompts.indexed import first_difference, indexed_files, is_indexed_prefix, records_messages
from common.prompts.messages import normalize_prompt
from common.prompts.prepared import (
    FORMAT,
    IDS_FILE,
    MANIFEST_FILE,
    MESSAGE_TYPE,
    SCHEMA,
    is_prepared,
    tokenizer_fingerprint,
)
from common.util import jsonl
from common.util.atomic_files import publish_dir, temp_dir, temp_path
from data.encode import ENGINES, TEMPLATES, PromptEncoder
from data.sources import Chunk, KeyMap, known_rows, read_chunks, resolve_inputs

TOO_LONG = ("drop", "truncate_left")
EXAMPLES = 20  # rows named in the manifest per skipped/truncated count


@dataclass(frozen=True)
class Settings:
    """Everything that decides the output (recorded in the manifest)."""

    keys: KeyMap = field(default_factory=KeyMap)
    template: str = "tokenizer"  # "tokenizer": the tokenizer's chat template; "llama3": LLAMA3_CHAT_TEMPLATE
    max_prompt_length: int | None = None
    too_long: str = "drop"
    chunk_rows: int = 4096

    def check(self) -> None:
        if self.template not in TEMPLATES:
            raise ValueError(f"--template {self.template!r}: use one of {', '.join(TEMPLATES)}")
        if self.too_long not in TOO_LONG:
            raise ValueError(f"--too-long {self.too_long!r}: use one of {', '.join(TOO_LONG)}")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ValueError(f"--max-prompt-length {self.max_prompt_length}: give a positive number of tokens")
        if self.chunk_rows < 1:
            raise ValueError(f"--chunk-rows {self.chunk_rows}: give at least 1")


# ----------------------------------------------------------------------------- one chunk (in a worker)

_STATE: tuple[PromptEncoder, Settings] | None = None


def _init_worker(encoder: PromptEncoder, settings: Settings, worker_process: bool) -> None:
    global _STATE
    if worker_process:
        # One process per core: keep the HF tokenizer from starting threads of its own.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        # A forked worker shares the parent's memory copy-on-write; the garbage collector would
        # write to every inherited object (a copy of the whole parent, slow) unless they are frozen.
        gc.freeze()
    _STATE = (encoder, settings)


def row_messages(prompt, query, system, where: str) -> list[dict]:
    """One input row -> checked messages (raises ValueError naming ``where``)."""
    if prompt is None:
        raise ValueError(f"{where}: the prompt is null; remove the row or give it text")
    for name, value in (("query", query), ("system", system)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{where}: the {name} value is a {type(value).__name__}; it must be a string (or null)")
    if query:
        if not isinstance(prompt, str):
            raise ValueError(
                f"{where}: a query value with a messages prompt; put the query text in the last "
                "user message, or map no query column"
            )
        prompt = prompt + "\n" + query
    if system:
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        elif (
            isinstance(prompt, (list, tuple))
            and prompt
            and isinstance(prompt[0], dict)
            and prompt[0].get("role") == "system"
        ):
            raise ValueError(f"{where}: both a system column value and a system message; keep one of them")
        if isinstance(prompt, (list, tuple)):
            prompt = [{"role": "system", "content": system}, *prompt]
    return normalize_prompt(prompt, where)


def _utf8_checked(array: pa.Array, chunk: Chunk, column: str) -> list:
    try:
        array.validate(full=True)
        return array.to_pylist()
    except (pa.ArrowInvalid, UnicodeDecodeError):
        for i in range(len(array)):
            try:
                array[i].as_py()
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"{chunk.path} row {chunk.first_row + i}: column `{column}` has invalid UTF-8 "
                    f"({e.reason} at byte {e.start}); re-encode the text as UTF-8"
                ) from e
        raise


def _rows(chunk: Chunk, keys: KeyMap, seen: dict):
    """Yield ``(row, prompt, query, system)``; ``seen`` records which optional JSON fields occur."""
    if chunk.kind == "arrow":
        cols = {k: _utf8_checked(chunk.payload.column(c), chunk, c) for k, c in keys.columns().items()}
        none = itertools.repeat(None)
        yield from zip(
            itertools.count(chunk.first_row), cols["prompt"], cols.get("query", none), cols.get("system", none)
        )
        return
    for i, item in enumerate(chunk.payload):
        row = chunk.first_row + i
        if chunk.kind == "lines":
            if not item.strip():
                continue
            item = jsonl.loads(item, f"{chunk.path} row {row}")
        if not isinstance(item, dict):
            raise ValueError(
                f"{chunk.path} row {row}: expected a JSON object, got {type(item).__name__}; "
                f'write one {{"{keys.prompt}": ...}} object per row'
            )
        if keys.prompt not in item:
            raise ValueError(
                f"{chunk.path} row {row}: no `{keys.prompt}` field (fields: {', '.join(item) or 'none'}); "
                "add it, or map the prompt field with --map-keys"
            )
        query = system = None
        if keys.query and keys.query in item:
            query, seen["query"] = item[keys.query], True
        if keys.system and keys.system in item:
            system, seen["system"] = item[keys.system], True
        yield row, item[keys.prompt], query, system


def _indexed_rows(chunk: Chunk, encoder: PromptEncoder) -> tuple[list, list, list, list]:
    """Records of the original's indexed dataset: the stored ids as they are, the messages decoded
    from them (``common/prompts/indexed.py``). Every record must be what this run's template renders
    from its messages, so the dataset is what its manifest says (and ``--too-long truncate_left``
    re-renders like the rest)."""
    ids, first = chunk.payload, chunk.first_row - 1
    messages = records_messages(ids, encoder.tok, chunk.path, first)
    where = [f"indexed dataset {chunk.path} document {first + i}" for i in range(len(ids))]
    for i, again in enumerate(encoder.encode(messages)):
        if again != ids[i]:
            raise ValueError(
                f"{where[i]}: the template {encoder.template_name!r} renders its decoded prompt to other ids than "
                f"the stored ones ({first_difference(ids[i], again)}); the original wrote the Llama-3 format: "
                "pass --template llama3, and --tokenizer the tokenizer the data was preprocessed with"
            )
    encoder.spot_check(messages, ids, where)
    return messages, ids, where, list(range(chunk.first_row, chunk.first_row + len(ids)))


def process_chunk(chunk: Chunk) -> tuple[pa.RecordBatch, dict]:
    """Check, render, tokenize and apply the length policy to one chunk -> output rows + counts."""
    encoder, settings = _STATE
    seen = {"query": False, "system": False}
    if chunk.kind == "indexed":
        messages, ids, where, rows = _indexed_rows(chunk, encoder)
    else:
        messages, where, rows = [], [], []
        for row, prompt, query, system in _rows(chunk, settings.keys, seen):
            w = f"{chunk.path} row {row}"
            m = row_messages(prompt, query, system, w)
            special = encoder.special_token_in(m)
            if special:
                raise ValueError(
                    f"{w}: the prompt contains the special token {special}; remove it from the prompt text"
                )
            messages.append(m)
            where.append(w)
            rows.append(row)
        ids = encoder.encode(messages)
        encoder.spot_check(messages, ids, where)

    stats = {
        "file_index": chunk.file_index,
        "rows": len(rows),
        "dropped_too_long": 0,
        "truncated": 0,
        "dropped_examples": [],
        "truncated_examples": [],
        "seen": seen,
    }
    limit = settings.max_prompt_length
    if limit is not None:
        keep = []
        for i, x in enumerate(ids):
            if len(x) <= limit:
                keep.append(i)
                continue
            cut = encoder.truncate_left(messages[i], limit) if settings.too_long == "truncate_left" else None
            if cut is None:
                stats["dropped_too_long"] += 1
                stats["dropped_examples"].append(f"{where[i]} ({len(x)} tokens)")
            else:
                messages[i], ids[i] = cut
                stats["truncated"] += 1
                stats["truncated_examples"].append(f"{where[i]} ({len(x)} -> {len(ids[i])} tokens)")
                keep.append(i)
        if len(keep) < len(ids):
            messages, ids, rows = [messages[i] for i in keep], [ids[i] for i in keep], [rows[i] for i in keep]
        for k in ("dropped_examples", "truncated_examples"):
            stats[k] = stats[k][:EXAMPLES]

    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    offsets = np.zeros(len(ids) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(offsets[-1]))
    batch = pa.RecordBatch.from_arrays(
        [
            pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)),
            pa.array(messages, type=MESSAGE_TYPE),
            pa.array(np.full(len(ids), chunk.file_index, dtype=np.int32)),
            pa.array(np.asarray(rows, dtype=np.int64)),
        ],
        schema=SCHEMA,
    )
    stats["prompts"], stats["tokens"] = len(ids), int(lengths.sum())
    stats["max_length"] = int(lengths.max()) if len(ids) else 0
    return batch, stats


# ----------------------------------------------------------------------------- the whole run (parent)


def _ordered_map(fn, items, workers: int, initargs: tuple):
    """``map(fn, items)`` over ``workers`` processes, in input order, with at most 2 chunks per
    worker in flight (the input is streamed, never queued whole)."""
    if workers == 1:
        _init_worker(*initargs, worker_process=False)
        yield from map(fn, items)
        return
    # fork shares the tokenizer with the workers for free; elsewhere it is pickled once per worker
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(*initargs, True)) as pool:
        pending = deque()
        for item in items:
            pending.append(pool.apply_async(fn, (item,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _source(path: str) -> dict:
    """The manifest's record of one input; an indexed dataset's is of its two input_ids files."""
    if not is_indexed_prefix(path):
        return {"path": path, "bytes": os.path.getsize(path), "sha256": _sha256(path), "rows": 0}
    files = [{"path": f, "bytes": os.path.getsize(f), "sha256": _sha256(f)} for f in indexed_files(path)]
    return {"path": path, "format": "megatron-indexed", "files": files, "rows": 0}


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def check_output(output: str, inputs: list[str], files: list[str], overwrite: bool) -> None:
    """``--output`` never touches what the user gave: it is not, does not contain and does not lie
    inside an input, and ``--overwrite`` replaces only a dataset this command wrote."""
    out = os.path.realpath(output)
    for f in files:
        if os.path.realpath(f) == out:
            raise ValueError(
                f"--output {output}: is the input file {f}; --output must be a folder, not an input file; "
                "pick a new folder for the prepared dataset"
            )
    for given in inputs:
        real = os.path.realpath(given)
        if _inside(out, real) or _inside(real, out):
            suggestion = os.path.join(
                os.path.dirname(real.rstrip(os.sep)), os.path.basename(real.rstrip(os.sep)) + "_prepared"
            )
            raise ValueError(
                f"--output {output}: is, contains or lies inside the input {given}, whose files would be "
                f"replaced; write the prepared dataset to a different folder, e.g. --output {suggestion}"
            )
    if not os.path.lexists(output):
        return
    if not os.path.isdir(output):
        raise ValueError(f"--output {output}: is a file; --output must be a folder; pick a new folder")
    if not overwrite:
        raise ValueError(f"output {output}: already exists; choose another --output or pass --overwrite")
    found = sorted(os.listdir(output))
    if not is_prepared(output) or set(found) - {IDS_FILE, MANIFEST_FILE}:
        others = [n for n in found if n not in (IDS_FILE, MANIFEST_FILE)]
        raise ValueError(
            f"--output {output}: exists and is not only a dataset written by data.prepare "
            f"({'no ' + MANIFEST_FILE if not is_prepared(output) else 'also holds ' + ', '.join(others[:5])}); "
            "--overwrite replaces only a prepared dataset; pick a new folder"
        )


def prepare(
    inputs: list[str],
    output: str,
    tok,
    settings: Settings = Settings(),
    *,
    engine: str = "auto",
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Prepare ``inputs`` (files or folders of shards) into the dataset folder ``output``; returns the manifest."""
    settings.check()
    output = output.rstrip(os.sep) or output
    if workers < 1:
        raise ValueError(f"--workers {workers}: give at least 1")
    files = resolve_inputs(inputs)
    check_output(output, inputs, files, overwrite)
    encoder = PromptEncoder(tok, settings.template, engine)
    sources = [_source(p) for p in files]

    counts = {"rows": 0, "prompts": 0, "dropped_too_long": 0, "truncated": 0, "tokens": 0, "max_length": 0}
    examples = {"dropped_too_long": [], "truncated": []}
    seen = [{"query": False, "system": False} for _ in files]
    totals = [known_rows(p) for p in files]
    try:
        tmp = str(temp_dir(output))  # renamed to --output once complete (common/util/atomic_files.py)
    except OSError as e:
        raise ValueError(
            f"--output {output}: cannot create {temp_path(output)}: {e.strerror}; pick a writable folder"
        ) from None
    done = False
    try:
        from tqdm import tqdm

        chunks = itertools.chain.from_iterable(
            read_chunks(p, i, settings.keys, settings.chunk_rows) for i, p in enumerate(files)
        )
        bar = tqdm(
            total=None if None in totals else sum(totals),
            unit=" prompts",
            disable=not progress,
            file=sys.stderr,
            mininterval=0.5,
            desc="prepare",
        )
        with pa.ipc.new_file(os.path.join(tmp, IDS_FILE), SCHEMA) as writer:
            for batch, stats in _ordered_map(process_chunk, chunks, workers, (encoder, settings)):
                writer.write_batch(batch)
                i = stats["file_index"]
                sources[i]["rows"] += stats["rows"]
                for k in ("query", "system"):
                    seen[i][k] |= stats["seen"][k]
                counts["rows"] += stats["rows"]
                for k in ("prompts", "dropped_too_long", "truncated", "tokens"):
                    counts[k] += stats[k]
                counts["max_length"] = max(counts["max_length"], stats["max_length"])
                examples["dropped_too_long"] += stats["dropped_examples"]
                examples["truncated"] += stats["truncated_examples"]
                bar.update(stats["rows"])
        bar.close()
        for source, file_seen in zip(sources, seen):
            if source["rows"] == 0:
                raise ValueError(f"{source['path']}: it has zero rows; give at least one prompt")
            for key in ("query", "system"):
                column = getattr(settings.keys, key)
                if column and not source["path"].endswith(".parquet") and not file_seen[key]:
                    raise ValueError(
                        f"{source['path']}: no row has a `{column}` field (mapped from {key}); "
                        "fix --map-keys or the file"
                    )
        if counts["prompts"] == 0:
            raise ValueError(
                f"all {counts['rows']} prompts are longer than --max-prompt-length "
                f"{settings.max_prompt_length}; raise it or use --too-long truncate_left"
            )
        manifest = {
            "format": FORMAT,
            "sources": sources,
            "tokenizer": tokenizer_fingerprint(tok),
            "template": {
                "name": settings.template,
                "sha256": hashlib.sha256(encoder.template_text.encode()).hexdigest(),
                "text": encoder.template_text,
            },
            "settings": {**asdict(settings), "keys": settings.keys.columns()},
            "counts": counts,
            "examples": {k: v[:EXAMPLES] for k, v in examples.items()},
        }
        with open(os.path.join(tmp, MANIFEST_FILE), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, ensure_ascii=False)
            f.write("\n")
        publish_dir(
            Path(tmp), output, lambda _: check_output(output, inputs, files, overwrite)
        )  # checked again before a replace
        done = True
        return manifest
    finally:
        if not done:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m data.prepare", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--input",
        nargs="+",
        required=True,
        help=".parquet/.jsonl/.json files, folders of shards, or the prefix of MindSpeed-LLM preprocessed prompts",
    )
    p.add_argument("--output", required=True, help="dataset folder to write (prompts.arrow + manifest.json)")
    p.add_argument("--tokenizer", required=True, help="Hugging Face fast-tokenizer directory")
    p.add_argument(
        "--map-keys",
        default=None,
        help='JSON {"prompt": col, "query": col, "system": col}; default {"prompt": "prompt"}',
    )
    p.add_argument(
        "--template",
        choices=TEMPLATES,
        default="tokenizer",
        help="tokenizer: the tokenizer's chat template (what training renders); llama3: the built-in Llama-3 template",
    )
    p.add_argument("--max-prompt-length", type=int, default=None, help="longest prompt in tokens (default: no limit)")
    p.add_argument(
        "--too-long",
        choices=TOO_LONG,
        default="drop",
        help="over-long prompts: drop them, or cut the last user message from the left (default drop)",
    )
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    p.add_argument("--chunk-rows", type=int, default=Settings.chunk_rows, help="rows per chunk / record batch")
    p.add_argument(
        "--engine", choices=ENGINES, default="auto", help="tokenizing engine (same ids; auto picks the fastest)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    from common.prompts.tokenizer import load_tokenizer

    try:
        settings = Settings(
            KeyMap.parse(args.map_keys), args.template, args.max_prompt_length, args.too_long, args.chunk_rows
        )
        tok = load_tokenizer(args.tokenizer)
        manifest = prepare(
            args.input,
            args.output,
            tok,
            settings,
            engine=args.engine,
            workers=args.workers,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except ValueError as e:
        print(f"data.prepare: error: {e}", file=sys.stderr)
        return 2
    c = manifest["counts"]
    print(
        f"{args.output}: {c['prompts']} prompts from {c['rows']} rows in {len(manifest['sources'])} file(s); "
        f"{c['dropped_too_long']} dropped as too long, {c['truncated']} truncated; "
        f"{c['tokens']} tokens, longest {c['max_length']}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
