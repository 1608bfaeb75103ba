"""Throughput of prompt preparation vs a plain `datasets.map` + tokenizer baseline, same run, same input.

    .venv/bin/python bench/prepare_throughput.py                  # 100,000 prompts, 2 repeats
    .venv/bin/python bench/prepare_throughput.py --prompts 20000 --repeats 1

Input: real prompts from /work/shared/datasets (development and CI machines only): GSM8K questions
(train + test), Anthropic HH harmless-base dialogues cut before their last assistant turn
(multi-turn), MT-Bench first turns; shuffled with a fixed seed and repeated to --prompts rows,
written as one parquet file with a `prompt` column of {role, content} messages.

Contenders, each from a loaded tokenizer to a finished dataset on disk:
- `datasets.map`: `load_dataset("parquet")`, then a batched map that renders every row with
  `tok.apply_chat_template(..., tokenize=False, add_generation_prompt=True)` and batch-encodes the
  texts with `tok(texts, add_special_tokens=False)` (Rust, multi-threaded); fresh cache folder.
  Once with the default single process, once with `num_proc=2`.
- `data.prepare`: `prepare(...)` with 1 and with 2 worker processes.
Every contender's ids are checked equal to the baseline's. Each is run --repeats times,
interleaved; the best time counts (other jobs on the machine only ever make a run slower).
Numbers: prompts/s = rows / wall seconds; ratio = prompts/s over the plain baseline's; CPU seconds =
this process and its worker processes (user + system), which other jobs on the machine do not inflate.
"""

import argparse
import gzip
import hashlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common.prompts.prepared import open_table
from common.prompts.tokenizer import load_tokenizer
from data.prepare import Settings, prepare

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path("/work/shared/datasets")


def hh_prompt(dialogue: str) -> list[dict]:
    """'\\n\\nHuman: ...\\n\\nAssistant: ...' -> messages ending with the last human turn."""
    messages = []
    for part in dialogue.split("\n\nHuman: ")[1:]:
        human, _, assistant = part.partition("\n\nAssistant: ")
        messages.append({"role": "user", "content": human.strip() or "..."})
        messages.append({"role": "assistant", "content": assistant.strip() or "..."})
    return messages[:-1]


def real_prompts() -> list[list[dict]]:
    if not SHARED.is_dir():
        raise SystemExit(
            f"bench: {SHARED} not found; this benchmark reads the shared datasets of the development/CI machines"
        )
    pool = []
    for split in ("train", "test"):
        with open(SHARED / "gsm8k" / f"{split}.jsonl") as f:
            pool += [[{"role": "user", "content": json.loads(line)["question"]}] for line in f]
    with gzip.open(SHARED / "hh-rlhf" / "harmless-base-test.jsonl.gz", "rt") as f:
        pool += [hh_prompt(json.loads(line)["chosen"]) for line in f]
    with open(SHARED / "mt_bench" / "question.jsonl") as f:
        pool += [[{"role": "user", "content": json.loads(line)["turns"][0]}] for line in f]
    return [p for p in pool if p and p[-1]["role"] == "user"]


def write_input(path: str, n: int) -> None:
    pool = real_prompts()
    order = np.random.RandomState(0).permutation(len(pool))
    rows = [pool[order[i % len(pool)]] for i in range(n)]
    pq.write_table(pa.table({"prompt": rows}), path)


def run_baseline(tok, path: str, work: str, num_proc: int | None):
    from datasets import load_dataset

    def render(batch):
        texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in batch["prompt"]]
        return {"input_ids": tok(texts, add_special_tokens=False)["input_ids"]}

    ds = load_dataset("parquet", data_files=path, split="train", cache_dir=os.path.join(work, "hf_cache"))
    return ds.map(render, batched=True, num_proc=num_proc).data.column("input_ids")


def run_prepare(tok, path: str, work: str, workers: int) -> pa.ChunkedArray:
    out = os.path.join(work, "out")
    prepare([path], out, tok, Settings(), workers=workers, progress=False)
    return open_table(out).column("input_ids")


def ids_digest(column) -> tuple[str, int]:
    """sha256 of (lengths, values) of a list-of-ids column, and its token count (small to keep:
    100,000 id lists as Python objects would bloat every process forked afterwards)."""
    column = pa.chunked_array(column.chunks if hasattr(column, "chunks") else [column])
    flat = column.combine_chunks()
    lengths = np.diff(flat.offsets.to_numpy()).astype(np.int64)
    values = flat.values.to_numpy(zero_copy_only=False).astype(np.int64)
    return hashlib.sha256(lengths.tobytes() + values.tobytes()).hexdigest(), int(values.size)


def cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its reaped worker processes."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tokenizer", default=str(ROOT / "assets" / "llama3_tokenizer"))
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    # before anything imports `datasets` (its config reads the variable at import): run_baseline's
    # load_dataset, and the worker processes data.prepare starts, inherit it
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    t = time.perf_counter()
    tok = load_tokenizer(args.tokenizer)
    load_s = time.perf_counter() - t
    tmp = tempfile.mkdtemp(prefix="prepare_bench_")
    try:
        path = os.path.join(tmp, "prompts.parquet")
        write_input(path, args.prompts)
        prepare([path], os.path.join(tmp, "warm"), tok, progress=False)  # builds the tiktoken tables once (~1 s)

        contenders = {
            "datasets.map (baseline)": lambda work: run_baseline(tok, path, work, None),
            "datasets.map num_proc=2": lambda work: run_baseline(tok, path, work, 2),
            "data.prepare workers=1": lambda work: run_prepare(tok, path, work, 1),
            "data.prepare workers=2": lambda work: run_prepare(tok, path, work, 2),
        }
        times = {name: [] for name in contenders}
        cpu = {name: [] for name in contenders}
        reference = None
        for _ in range(args.repeats):
            for name, fn in contenders.items():
                work = tempfile.mkdtemp(dir=tmp)
                start, start_cpu = time.perf_counter(), cpu_seconds()
                ids = fn(work)
                times[name].append(time.perf_counter() - start)
                cpu[name].append(cpu_seconds() - start_cpu)
                digest, tokens = ids_digest(ids)
                if reference is None:
                    reference = digest
                elif digest != reference:
                    raise SystemExit(f"bench: {name} gives different ids than the baseline")
                del ids
                shutil.rmtree(work)
                print(
                    f"  {name}: {times[name][-1]:.2f} s, {cpu[name][-1]:.2f} CPU s, load {os.getloadavg()[0]:.1f}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    n = args.prompts
    base = n / min(times["datasets.map (baseline)"])
    lines = [
        f"{n:,} prompts ({tokens / n:.0f} tokens/prompt on average, {tokens:,} tokens), Llama 3 tokenizer, "
        f"{os.cpu_count()} cores, load average at end {os.getloadavg()[0]:.1f}; best of {args.repeats}; "
        f"tokenizer load {load_s:.1f} s not counted",
        "",
        "| method | seconds | prompts/s | vs baseline | CPU seconds | prompts per CPU-second |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    results = {}
    for name, ts in times.items():
        best = ts.index(min(ts))
        rate, cpu_s = n / ts[best], cpu[name][best]
        results[name] = {
            "seconds": ts[best],
            "all_seconds": ts,
            "cpu_seconds": cpu_s,
            "all_cpu_seconds": cpu[name],
            "prompts_per_s": rate,
            "ratio": rate / base,
        }
        lines.append(f"| {name} | {ts[best]:.2f} | {rate:,.0f} | {rate / base:.2f}x | {cpu_s:.1f} | {n / cpu_s:,.0f} |")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"prompts": n, "tokens": tokens, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
