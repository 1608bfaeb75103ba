"""Bad inputs a new user tries, each run for real, and the table of what each one prints.

    .venv/bin/python -m tools.bad_inputs --write-table docs/bad_inputs.md   # run every case, rewrite the table
    .venv/bin/python -m tools.bad_inputs --json results.json [--only ID ...]  # what tests/test_bad_inputs.py reads

``CASES`` is the one list: ``tests/test_bad_inputs.py`` checks every case against it (non-zero exit,
the expected fragment, no traceback, nothing created or changed) and ``docs/bad_inputs.md`` is
written from the same runs. Each case runs in a fresh work folder as its current directory.
``./run.sh``, ``python -m data.prepare``, ``tools.convert_checkpoint`` and ``tools.from_mindspeed`` cases run their
entry points in this one process (torch is imported once, not once per case: about 2 s of CPU
saved each), and each tokenizer folder is loaded once (``_tokenizer_loaded_once``: ~1.5 s a case); a case that would reach Ray's workers (the end of the driver's checks) stops there and
counts as not refused; the private Ray instance that starts during the checks is not started in-process. Cases whose command
is shell (``via="shell"``: run.sh's own checks, a read-only mount) run as real subprocesses.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "assets" / "llama3_tokenizer"
AR = "actor_rollout_ref.actor_rollout"
NO_CLUSTER = "127.0.0.1:9"  # the discard port: no Ray there


# ------------------------------------------------------------------------------- set-ups (work folder w)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def shards(w: Path) -> None:
    for i in range(2):
        _write(w / "shards" / f"part-{i:03d}.jsonl", json.dumps({"prompt": f"question {i}"}) + "\n")


def notes_dir(w: Path) -> None:
    _write(w / "X" / "notes.txt", "my notes\n")


def a_file(w: Path) -> None:
    _write(w / "f.txt", "a file\n")


def prompt_file(w: Path) -> None:
    _write(w / "p.jsonl", json.dumps({"prompt": "question"}) + "\n")


def reward_modules(w: Path) -> None:
    _write(
        w / "rw_missing_dep.py",
        "import nosuchpkg_for_rewards\n\ndef score(prompts, responses):\n    return [0.0] * len(responses)\n",
    )
    _write(w / "rw_syntax.py", "def score(prompts, responses):\n    return [0.0 for r in responses\n")
    _write(w / "rw_count.py", "def score(prompts, responses):\n    return [0.0] * (len(responses) - 1)\n")
    _write(w / "rw_ok.py", "def score(prompts, responses):\n    return [float(len(r)) for r in responses]\n")


def data_files(w: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    _write(w / "p.csv", "prompt\nhello\n")
    pq.write_table(pa.table({"text": ["hello"]}), w / "noprompt.parquet")
    _write(w / "empty_prompt.jsonl", json.dumps({"prompt": ""}) + "\n")
    (w / "empty_dir").mkdir()


def run_folders(w: Path) -> None:
    _write(w / "old_run" / "config.yaml", (ROOT / "recipes" / "tiny" / "config.yaml").read_text())
    (w / "not_a_run").mkdir()
    (w / "not_a_model").mkdir()
    (w / "empty").mkdir()


def mount_point(w: Path) -> None:
    (w / "ro").mkdir()


def indexed_dataset(w: Path) -> None:
    """The original system's preprocessed prompts (MindSpeed-LLM, PPOAlpacaStyleInstructionHandler):
    ``dataset/descriptiveness_packed_input_ids_document.bin/.idx``, written by megatron-core's builder."""
    import torch

    from common.util.quiet import filter_library_warnings

    filter_library_warnings()
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix = w / "dataset" / "descriptiveness_packed_input_ids_document"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    builder = IndexedDatasetBuilder(f"{prefix}.bin")  # int32, as the original writes it
    # <|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n
    builder.add_item(torch.tensor([128000, 128006, 882, 128007, 271, 9906, 128009, 128006, 78191, 128007, 271]))
    builder.end_document()
    builder.finalize(f"{prefix}.idx")


def indexed_missing_idx(w: Path) -> None:
    indexed_dataset(w)
    (w / "dataset" / "descriptiveness_packed_input_ids_document.idx").unlink()


def indexed_unknown_dtype(w: Path) -> None:
    indexed_dataset(w)
    with open(w / "dataset" / "descriptiveness_packed_input_ids_document.idx", "r+b") as f:
        f.seek(17)  # 9-byte magic, 8-byte version, then the dtype code (4 = int32)
        f.write(bytes([99]))


def mindspeed_config(w: Path, role_keys: str = "    model: tiny\n", model_file: bool = True) -> None:
    """The original's Hydra layout (configs/rlxf/<trainer>.yaml + model/tiny.yaml), cut to the keys a case needs."""
    if model_file:
        _write(w / "configs" / "rlxf" / "model" / "tiny.yaml", "tiny:\n  num_layers: 2\n")
    trainer = (
        "defaults:\n  - model:\n    - tiny\ntraining:\n  stage: ray_online_dpo\nactor_rollout_ref:\n  actor_rollout:\n"
    )
    _write(w / "configs" / "rlxf" / "online_dpo_trainer_tiny.yaml", trainer + role_keys)


def mindspeed_typo(w: Path) -> None:
    mindspeed_config(w, "    model: tiny\n    micro_batch_sise: 4\n")


def mindspeed_no_model_file(w: Path) -> None:
    mindspeed_config(w, model_file=False)


def hf_model(s: Path) -> None:
    """Shared (read-only for every case): a 2-layer, 4-head Llama in Hugging Face format."""
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    transformers.LlamaForCausalLM(cfg).save_pretrained(s / "hf")


# ----------------------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    id: str
    group: str  # "wrong" | "unclear" | "clear": the section of ../shared/reference/bad-inputs.md it comes from
    input: str  # what the user did, as the table shows it
    command: str  # shell words; {w} work folder, {s} shared folder (HF model at {s}/hf), {tok} tokenizer, {root}
    expect: str  # fragment the message must contain
    setup: Callable[[Path], None] | None = None
    via: str = "in-process"  # or "shell": a real subprocess (run.sh's own checks, a mount namespace)
    needs: str | None = None  # "mount": skipped where `unshare -m` is not allowed
    pending: str | None = None  # not handled by this part of the work: shown in the table, not run


def _r(*words: str) -> str:
    return "./run.sh tiny " + " ".join(words)


CASES = [
    # --- wrong: user files destroyed (now refused, files intact) --------------------------------------
    Case(
        "prepare_output_is_input",
        "wrong",
        "`data.prepare --input DIR --output DIR --overwrite`",
        "python -m data.prepare --input {w}/shards --output {w}/shards --overwrite --tokenizer {tok}",
        "is, contains or lies inside the input",
        shards,
    ),
    Case(
        "convert_out_not_checkpoint",
        "wrong",
        "`convert_checkpoint hf-to-mcore --out X`, X an existing folder that is not a checkpoint",
        "python -m tools.convert_checkpoint hf-to-mcore --hf {s}/hf --out {w}/X",
        "is not only a checkpoint of this project",
        notes_dir,
    ),
    Case(
        "convert_out_is_hf",
        "wrong",
        "`convert_checkpoint hf-to-mcore --out` equal to `--hf`",
        "python -m tools.convert_checkpoint hf-to-mcore --hf {s}/hf --out {s}/hf",
        "is, contains or lies inside --hf",
    ),
    # --- unclear before ------------------------------------------------------------------------------
    Case(
        "actor_pool_0",
        "unclear",
        "`resource_pool.actor_rollout=0`",
        _r("resource_pool.actor_rollout=0"),
        "resource_pool.actor_rollout=0: must be >= 1",
    ),
    Case(
        "actor_pool_neg",
        "unclear",
        "`resource_pool.actor_rollout=-2`",
        _r("resource_pool.actor_rollout=-2"),
        "resource_pool.actor_rollout=-2: must be >= 1",
    ),
    Case(
        "nodes_other_ray",
        "unclear",
        "`--nodes 2` while another private Ray instance runs on the machine",
        _r("--nodes 2"),
        "",
        pending="needs a live Ray instance: run by tests/test_run_endings.py (test_nodes_without_cluster_says_how_to_start_one): "
        '"no Ray cluster found; start one with `ray start --head ...` or set RAY_ADDRESS", no run folder',
    ),
    Case(
        "nodes_no_ray",
        "unclear",
        "`--nodes 2`, no Ray running",
        _r("--nodes 2"),
        "",
        pending="run by tests/test_run_endings.py (test_nodes_without_cluster_says_how_to_start_one, "
        'test_nodes_with_dead_ray_address): "no Ray cluster found; ..." / "RAY_ADDRESS=...: nothing answers at ...", no run folder',
    ),
    Case("out_proc", "unclear", "`--out /proc/x`", _r("--out /proc/odpo_x"), "cannot create --out /proc/odpo_x"),
    Case("out_sys", "unclear", "`--out /sys/x`", _r("--out /sys/odpo_x"), "cannot create --out /sys/odpo_x"),
    Case(
        "out_read_only",
        "unclear",
        "`--out` on a read-only mount",
        "unshare -m sh -c 'mount -t tmpfs -o ro,size=1m tmpfs {w}/ro && exec {root}/run.sh tiny --out {w}/ro/x'",
        "Read-only file system",
        mount_point,
        via="shell",
        needs="mount",
    ),
    Case(
        "out_under_file",
        "unclear",
        "`--out` under a regular file",
        _r("--out {w}/f.txt/run"),
        "is a file, not a folder; pick a writable path",
        a_file,
    ),
    Case("out_is_file", "unclear", "`--out` that is a file", _r("--out {w}/f.txt"), "is a file, not a folder", a_file),
    Case(
        "reward_missing_dep",
        "unclear",
        "reward module that imports a missing dependency",
        _r("reward.function=rw_missing_dep:score"),
        "rw_missing_dep.py failed: No module named 'nosuchpkg_for_rewards'; install it",
        reward_modules,
    ),
    Case(
        "reward_syntax",
        "unclear",
        "reward module with a SyntaxError",
        _r("reward.function=rw_syntax:score"),
        "rw_syntax.py line 2: SyntaxError",
        reward_modules,
    ),
    Case(
        "reward_count",
        "unclear",
        "reward function returning one score fewer than responses",
        _r("reward.function=rw_count:score"),
        "called on a dummy pair before the run, returned 1 scores for 2 responses",
        reward_modules,
    ),
    Case(
        "reward_retries_negative",
        "unclear",
        "`reward.function_retries=-1`",
        _r("reward.function=rw_ok:score reward.function_retries=-1"),
        "reward.function_retries=-1: must be >= 0",
        reward_modules,
    ),
    Case(
        "disk_too_small",
        "unclear",
        "run folder on a disk without room for one checkpoint",
        "unshare -m sh -c 'mount -t tmpfs -o size=20m tmpfs {w}/ro && exec {root}/run.sh tiny --out {w}/ro/x training.save_interval=2'",
        "one checkpoint of this actor takes about 95 MiB: free space, or pass --out on a larger disk",
        mount_point,
        via="shell",
        needs="mount",
    ),
    Case(
        "tokenizer_hub_id",
        "unclear",
        "`training.tokenizer_name_or_path=meta-llama/...` (a Hub id)",
        _r("training.tokenizer_name_or_path=meta-llama/Llama-3.2-1B-Instruct"),
        "a local folder is required (Hub ids are not downloaded); download it first",
    ),
    Case(
        "data_raw_shards",
        "unclear",
        "`AR.data_path=` a folder of raw jsonl shards",
        _r(f"{AR}.data_path={{w}}/shards"),
        "--output {w}/shards_prepared",
        shards,
    ),
    Case(
        "prepare_output_input_file",
        "unclear",
        "`data.prepare --output` = an input file",
        "python -m data.prepare --input {w}/p.jsonl --output {w}/p.jsonl --tokenizer {tok}",
        "--output must be a folder, not an input file",
        prompt_file,
    ),
    Case(
        "convert_missing_hf",
        "unclear",
        "`convert_checkpoint hf-to-mcore`, missing `--hf` folder",
        "python -m tools.convert_checkpoint hf-to-mcore --hf {w}/missing --out {w}/o",
        "convert_checkpoint: error: HF model",
    ),
    Case(
        "convert_tp3",
        "unclear",
        "`hf-to-mcore --tp 3` on a 4-head model",
        "python -m tools.convert_checkpoint hf-to-mcore --hf {s}/hf --out {w}/o --tp 3",
        "convert_checkpoint: error: layout: TP=3 must divide",
    ),
    Case(
        "convert_pp3",
        "unclear",
        "`hf-to-mcore --pp 3` on a 2-layer model",
        "python -m tools.convert_checkpoint hf-to-mcore --hf {s}/hf --out {w}/o --pp 3",
        "convert_checkpoint: error: layout: PP=3 must divide",
    ),
    Case(
        "convert_empty_ckpt",
        "unclear",
        "`mcore-to-hf` on an empty folder",
        "python -m tools.convert_checkpoint mcore-to-hf --ckpt {w}/empty --out {w}/o",
        "convert_checkpoint: error: checkpoint",
        run_folders,
    ),
    Case(
        "convert_hf_as_ckpt",
        "unclear",
        "`mcore-to-hf` on a HF folder",
        "python -m tools.convert_checkpoint mcore-to-hf --ckpt {s}/hf --out {w}/o",
        "is a Hugging Face model folder",
    ),
    Case("lr_negative", "unclear", "`AR.lr=-1`", _r(f"{AR}.lr=-1"), "lr=-1.0: must be > 0"),
    Case(
        "train_mbs_0",
        "unclear",
        "`training.micro_batch_size=0`",
        _r("training.micro_batch_size=0"),
        "training.micro_batch_size=0: must be >= 1",
    ),
    Case(
        "actor_mbs_0",
        "unclear",
        "`AR.micro_batch_size=0`",
        _r(f"{AR}.micro_batch_size=0"),
        "micro_batch_size=0: must be >= 1",
    ),
    Case(
        "heads_0",
        "unclear",
        "`model.num_attention_heads=0`",
        _r("model.num_attention_heads=0"),
        "model.num_attention_heads=0: must be >= 1",
    ),
    # --- clear before: kept clear ---------------------------------------------------------------------
    Case(
        "misspelled_key",
        "clear",
        "misspelled key",
        _r("training.train_iter=5"),
        "nearest valid keys: training.train_iters",
    ),
    Case(
        "iters_negative", "clear", "negative iterations", _r("training.train_iters=-3"), "train_iters=-3: must be > 0"
    ),
    Case("iters_zero", "clear", "zero iterations", _r("training.train_iters=0"), "train_iters=0: must be > 0"),
    Case("loss_type", "clear", "unknown loss type", _r("algorithm.loss_type=hinge"), "not one of sigmoid, ipo"),
    Case("beta_zero", "clear", "beta <= 0", _r("algorithm.beta=0"), "algorithm.beta=0.0: must be > 0"),
    Case("temperature_zero", "clear", "temperature <= 0", _r(f"{AR}.temperature=0"), "temperature=0.0: must be > 0"),
    Case("top_p", "clear", "top_p > 1", _r(f"{AR}.top_p=1.5"), "top_p=1.5: must be in (0, 1]"),
    Case(
        "one_sample",
        "clear",
        "n_samples_per_prompt = 1",
        _r(f"{AR}.n_samples_per_prompt=1"),
        "at least 2 responses per prompt",
    ),
    Case(
        "batch_mini",
        "clear",
        "batch not divisible by mini-batch",
        _r("training.global_batch_size=6"),
        "not a multiple of",
    ),
    Case(
        "batch_dp",
        "clear",
        "batch not divisible by DP size",
        _r("resource_pool.ref=3"),
        "not divisible by the data-parallel size 3",
    ),
    Case(
        "tp_heads",
        "clear",
        "TP not dividing heads",
        _r(f"{AR}.tensor_model_parallel_size=4", "resource_pool.actor_rollout=4"),
        "TP=4 must divide",
    ),
    Case(
        "devices_tp_pp",
        "clear",
        "devices not a multiple of TP x PP",
        _r("resource_pool.actor_rollout=3"),
        "is not a positive multiple of TP x PP",
    ),
    Case(
        "seq_length",
        "clear",
        "seq_length < max_prompt_length",
        _r("training.seq_length=32"),
        "must be < training.seq_length=32",
    ),
    Case("unknown_overlay", "clear", "unknown overlay", _r("--overlay nope"), "--overlay nope: no tiny/nope.yaml"),
    Case("nodes_zero", "clear", "`--nodes 0`", _r("--nodes 0"), "--nodes must be >= 1"),
    Case("nodes_word", "clear", "`--nodes two`", _r("--nodes two"), "invalid int value: 'two'"),
    Case(
        "out_existing_run",
        "clear",
        "`--out` an existing run",
        _r("--out {w}/old_run"),
        "folder exists and is not empty",
        run_folders,
    ),
    Case(
        "resume_missing",
        "clear",
        "`--resume` a folder that is no run",
        "./run.sh tiny --resume {w}/not_a_run",
        "no config.yaml there",
        run_folders,
    ),
    Case(
        "resume_no_ckpt",
        "clear",
        "`--resume` a run without checkpoints",
        "./run.sh tiny --resume {w}/old_run",
        "set training.save_interval",
        run_folders,
    ),
    Case(
        "resume_with_out",
        "clear",
        "`--resume` with `--out`",
        "./run.sh tiny --resume {w}/old_run --out {w}/o",
        "drop --out",
        run_folders,
    ),
    Case(
        "reward_module_missing",
        "clear",
        "missing reward module",
        _r("reward.function=no_such_module:score"),
        "no module 'no_such_module'",
    ),
    Case(
        "reward_attr_missing",
        "clear",
        "missing reward attribute",
        _r("reward.function=rw_ok:nope"),
        "has no callable 'nope'",
        reward_modules,
    ),
    Case(
        "device_npu", "clear", "`device=npu` on CPU", _r("training.device=npu"), "device: 'npu' requested but torch_npu"
    ),
    Case("device_cuda", "clear", "`device=cuda` on CPU", _r("training.device=cuda"), "device: 'cuda' requested"),
    Case("device_gpu", "clear", "`device=gpu`", _r("training.device=gpu"), "not one of auto, cpu, cuda, npu"),
    Case("dtype_bf16", "clear", "`dtype=bf16` on CPU", _r("training.dtype=bf16"), "use training.dtype=fp32"),
    Case("load_missing", "clear", "missing `load=` path", _r(f"{AR}.load={{w}}/nothing"), "not found"),
    Case(
        "load_not_model",
        "clear",
        "`load=` a folder that is no model",
        _r(f"{AR}.load={{w}}/not_a_model"),
        "no config.json",
        run_folders,
    ),
    Case(
        "tokenizer_missing",
        "clear",
        "missing tokenizer",
        _r("training.tokenizer_name_or_path={w}/nothing"),
        "not found",
    ),
    Case("data_csv", "clear", "`.csv` data", _r(f"{AR}.data_path={{w}}/p.csv"), "unknown file type", data_files),
    Case(
        "parquet_no_prompt",
        "clear",
        "parquet without a prompt column",
        _r(f"{AR}.data_path={{w}}/noprompt.parquet"),
        "no `prompt` column",
        data_files,
    ),
    Case(
        "empty_prompt",
        "clear",
        "an empty prompt",
        _r(f"{AR}.data_path={{w}}/empty_prompt.jsonl"),
        "row 1: the prompt is empty",
        data_files,
    ),
    Case(
        "prompts_too_long",
        "clear",
        "all prompts too long",
        _r(f"{AR}.max_prompt_length=2"),
        "are longer than max_prompt_length=2",
    ),
    Case(
        "empty_data_folder",
        "clear",
        "an empty data folder",
        _r(f"{AR}.data_path={{w}}/empty_dir"),
        "not a dataset written by data.prepare",
        data_files,
    ),
    Case(
        "prepare_no_tokenizer",
        "clear",
        "data.prepare without `--tokenizer`",
        "python -m data.prepare --input {w}/p.jsonl --output {w}/o",
        "the following arguments are required: --tokenizer",
        prompt_file,
    ),
    Case(
        "prepare_existing_output",
        "clear",
        "data.prepare into an existing output folder",
        "python -m data.prepare --input {w}/p.jsonl --output {w}/X --tokenizer {tok}",
        "already exists",
        lambda w: (prompt_file(w), notes_dir(w)),
    ),
    Case(
        "prepare_map_keys",
        "clear",
        "bad `--map-keys`",
        'python -m data.prepare --input {w}/p.jsonl --output {w}/o --tokenizer {tok} --map-keys \'{{"answer": "x"}}\'',
        "unknown key(s) answer",
        prompt_file,
    ),
    Case("seed_negative", "clear", "a negative seed", _r("training.seed=-1"), "seed=-1"),
    Case("unknown_recipe", "clear", "an unknown recipe", "./run.sh nope", "unknown recipe 'nope'", via="shell"),
    Case(
        "value_wrong_type",
        "clear",
        "a value of the wrong type",
        _r("training.train_iters=abc"),
        "could not be converted to Integer",
    ),
    Case(
        "overlay_bad_yaml",
        "clear",
        "an overlay that is not valid YAML",
        _r("--overlay {w}/bad.yaml"),
        "bad.yaml: not valid YAML",
        lambda w: _write(w / "bad.yaml", "training:\n  train_iters: [1\n"),
    ),
    Case("override_no_equals", "clear", "an override without `=`", _r("training.train_iters"), "not key=value"),
    # --- the original system's preprocessed prompts (issue 28), clear from the start -----------------
    Case(
        "indexed_missing_idx",
        "clear",
        "data.prepare on a MindSpeed indexed dataset prefix whose `.idx` is missing",
        "python -m data.prepare --input {w}/dataset/descriptiveness --output {w}/o --tokenizer {tok}",
        "descriptiveness_packed_input_ids_document.idx is missing",
        indexed_missing_idx,
    ),
    Case(
        "indexed_unknown_dtype",
        "clear",
        "data.prepare on a MindSpeed indexed dataset whose `.idx` has an unknown dtype code",
        "python -m data.prepare --input {w}/dataset/descriptiveness --output {w}/o --tokenizer {tok}",
        "version 1, dtype code 99",
        indexed_unknown_dtype,
    ),
    Case(
        "indexed_run_missing_idx",
        "clear",
        "`data_path` = a MindSpeed indexed dataset prefix whose `.idx` is missing",
        _r(f"{AR}.data_path={{w}}/dataset/descriptiveness"),
        "descriptiveness_packed_input_ids_document.idx is missing",
        indexed_missing_idx,
    ),
    # --- the original system's configs (issue 28: tools.from_mindspeed) ------------------------------
    Case(
        "mindspeed_config_typo",
        "clear",
        "a MindSpeed config with a key that none of its configs has (`micro_batch_sise`)",
        "python -m tools.from_mindspeed {w}/configs/rlxf/online_dpo_trainer_tiny.yaml --out {w}/mine.yaml",
        "micro_batch_sise: no such key in MindSpeed-LLM's rlxf configs (nearest: micro_batch_size",
        mindspeed_typo,
    ),
    Case(
        "mindspeed_config_no_model_file",
        "clear",
        "a MindSpeed config whose `defaults` model file is not beside it",
        "python -m tools.from_mindspeed {w}/configs/rlxf/online_dpo_trainer_tiny.yaml --out {w}/mine.yaml",
        "tiny.yaml",
        mindspeed_no_model_file,
    ),
]


# ----------------------------------------------------------------------------------------- running


class ReachedRay(Exception):
    """Raised where the driver's checks end: the case was not refused before Ray's workers."""


def _snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if "__pycache__" not in p.parts:
                st = p.lstat()
                out[str(p)] = (st.st_size, st.st_mtime_ns) if p.is_file() else (0, 0)
    return out


def _words(case: Case, w: Path, s: Path) -> list[str]:
    return shlex.split(case.command.format(w=w, s=s, tok=TOKENIZER, root=ROOT))


_TOKENIZERS: dict[tuple[str, int], object] = {}


def _tokenizer_loaded_once(path):
    """``load_tokenizer``, each folder read once in this process (the cases' subject is the refusal,
    not the tokenizer's ~1.5 s load); a folder that fails to load fails every time, as it would."""
    file = Path(path) / "tokenizer.json"
    key = (str(file.resolve()), file.stat().st_mtime_ns if file.is_file() else -1)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = _REAL_LOAD_TOKENIZER(path)
    return _TOKENIZERS[key]


def _load_tokenizers_once() -> None:
    """Give the entry points ``_tokenizer_loaded_once`` (data.prepare imports it inside ``main``)."""
    global _REAL_LOAD_TOKENIZER
    import common.prompts.tokenizer
    import common.reward.tokenize
    import common.run.session

    if common.prompts.tokenizer.load_tokenizer is not _tokenizer_loaded_once:
        _REAL_LOAD_TOKENIZER = common.prompts.tokenizer.load_tokenizer
        for module in (common.prompts.tokenizer, common.run.session, common.reward.tokenize):
            module.load_tokenizer = _tokenizer_loaded_once


def _in_process(words: list[str]) -> tuple[int, str]:
    """Run an entry point as ``python`` would: (exit status, stdout + stderr)."""
    _load_tokenizers_once()
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            if words[0] == "./run.sh":
                from common.run import session

                session.start_ray = _reached_ray  # a case that gets this far was not refused in time
                session.BackgroundRay = _NoBackgroundRay  # nor one that waits for the private instance
                session.open_session(ROOT / "recipes" / words[1], words[2:])
                rc = 0
            elif words[:3] == ["python", "-m", "data.prepare"]:
                from data.prepare import main

                rc = main(words[3:])
            elif words[:3] == ["python", "-m", "tools.convert_checkpoint"]:
                from tools.convert_checkpoint import main

                rc = main(words[3:])
            elif words[:3] == ["python", "-m", "tools.from_mindspeed"]:
                from tools.from_mindspeed import main

                rc = main(words[3:])
            else:
                raise ValueError(f"bad_inputs: no in-process entry point for {words[:3]}")
        except SystemExit as e:
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
                rc = 1
            else:
                rc = e.code or 0
        except KeyboardInterrupt:
            raise
        except BaseException:  # noqa: BLE001 - what a user would see: the traceback is the finding
            traceback.print_exc()
            rc = 1
    return rc, out.getvalue()


def _reached_ray(*_args, **_kwargs):
    raise ReachedRay("reached Ray: this input was not refused by the driver's checks")


class _NoBackgroundRay:
    """``session.BackgroundRay`` for in-process cases: starts nothing; the checks' end raises."""

    def __init__(self, *_args, **_kwargs):
        pass

    def then(self, _fn) -> None:  # the roles' processes would start here: nothing is started
        pass

    def settle(self) -> None:
        pass

    def wait(self) -> None:
        _reached_ray()

    def cancel(self) -> None:
        pass


def can_mount() -> bool:
    return (
        shutil.which("unshare") is not None
        and subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0
    )


def run_case(case: Case, w: Path, s: Path) -> dict:
    """Run one case with ``w`` (a new, empty folder) as the current directory."""
    if case.setup:
        case.setup(w)
    before = _snapshot(w, s)
    words = _words(case, w, s)
    start = time.monotonic()
    if case.via == "shell":
        words = [str(ROOT / "run.sh"), *words[1:]] if words[0] == "./run.sh" else words
        proc = subprocess.run(
            words,
            cwd=w,
            capture_output=True,
            text=True,
            timeout=300,
            # a cluster address where none listens: no private instance starts beside the checks (a
            # refused run would wait ~5 s for it to start and stop); a case not refused fails to reach it
            env={**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"), "RAY_ADDRESS": NO_CLUSTER},
        )
        rc, output = proc.returncode, proc.stdout + proc.stderr
    else:
        cwd = os.getcwd()
        os.chdir(w)
        importlib.invalidate_caches()  # reward modules written just now
        try:
            rc, output = _in_process(words)
        finally:
            os.chdir(cwd)
    seconds = time.monotonic() - start
    after = _snapshot(w, s)
    changed = sorted(set(before) ^ set(after) | {k for k in before.keys() & after.keys() if before[k] != after[k]})
    return {
        "id": case.id,
        "rc": rc,
        "output": output,
        "seconds": round(seconds, 2),
        "changed": [c.replace(str(w), "{w}").replace(str(s), "{s}") for c in changed],
        "w": str(w),
        "s": str(s),
    }


def run_all(cases: list[Case], root: Path) -> dict[str, dict]:
    s = root / "shared"
    s.mkdir(parents=True, exist_ok=True)
    if not (s / "hf").is_dir():
        hf_model(s)
    sys.dont_write_bytecode = True  # reward modules imported from a work folder leave no __pycache__
    mount = can_mount()
    results = {}
    for case in cases:
        if case.pending or (case.needs == "mount" and not mount):
            continue
        w = root / case.id
        w.mkdir()
        results[case.id] = run_case(case, w, s)
    return results


# ----------------------------------------------------------------------------------------- the table


def message(result: dict) -> str:
    """The user's message: from the first line naming an error, paths made generic."""
    lines = [line for line in result["output"].splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if "error" in line.lower()), 0)
    text = "\n".join(lines[start:])
    return text.replace(result["w"], "$W").replace(result["s"], "$S").replace(str(ROOT), "<checkout>")


def table(results: dict[str, dict]) -> str:
    head = [
        "# Bad inputs and what they print",
        "",
        "Written by `.venv/bin/python -m tools.bad_inputs --write-table docs/bad_inputs.md` from real runs of",
        "every case in `tools/bad_inputs.py` (`CASES`); `tests/test_bad_inputs.py` runs the same cases and checks",
        "that each exits non-zero with its expected message, without a traceback, before any Ray worker, and creates or",
        "changes no file. `$W` is the case's work folder (its current directory), `$S` a shared folder holding a",
        "2-layer, 4-head Hugging Face Llama (`$S/hf`). AR = `actor_rollout_ref.actor_rollout`. The rows follow",
        "`../shared/reference/bad-inputs.md` (sections: wrong, unclear, clear).",
        "",
        "| group | input | command | exit | seconds | message |",
        "|---|---|---|---:|---:|---|",
    ]
    rows = []
    for case in CASES:
        command = (
            "`"
            + case.command.replace("{w}", "$W")
            .replace("{s}", "$S")
            .replace("{tok}", "assets/llama3_tokenizer")
            .replace("{root}", "<checkout>")
            .replace("{{", "{")
            .replace("}}", "}")
            .replace("|", "\\|")
            + "`"
        )
        r = results.get(case.id)
        if case.pending:
            cells = ["", "", f"pending: {case.pending}"]
        elif r is None:
            cells = ["", "", "not run here (needs `unshare -m`)"]
        else:
            msg = message(r).replace("|", "\\|").replace("\n", "<br>")
            cells = [str(r["rc"]), f"{r['seconds']:.1f}", msg]
        rows.append(f"| {case.group} | {case.input} | {command} | " + " | ".join(cells) + " |")
    return "\n".join(head + rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bad_inputs", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", metavar="ID", help="run only these case ids")
    p.add_argument("--json", help="write the results (rc, output, seconds, files changed) here")
    p.add_argument("--write-table", metavar="MD", help="rewrite the markdown table (every case must be run)")
    args = p.parse_args(argv)
    ids = {c.id for c in CASES}
    unknown = sorted(set(args.only or ()) - ids)
    if unknown:
        p.error(f"unknown case id(s) {', '.join(unknown)}; ids: {', '.join(sorted(ids))}")
    if args.write_table and args.only:
        p.error("--write-table needs every case; drop --only")
    cases = [c for c in CASES if not args.only or c.id in args.only]
    with tempfile.TemporaryDirectory(prefix="bad_inputs-") as tmp:
        results = run_all(cases, Path(tmp))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if args.write_table:
        Path(args.write_table).write_text(table(results))
    for r in results.values():
        print(
            f"{r['id']:28s} rc={r['rc']} {r['seconds']:6.1f}s {message(r).splitlines()[0][:90] if message(r) else ''}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
