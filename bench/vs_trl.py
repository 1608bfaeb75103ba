"""Speed side by side with TRL 1.16 ``OnlineDPOTrainer``: the BENCH CONFIG on CPU, or llama32_1b's one_gpu overlay.

    .venv/bin/python bench/vs_trl.py                                  # MT-Bench first turns, 12 iterations
    .venv/bin/python bench/vs_trl.py --prompts other.jsonl --out bench_runs/other --report docs/bench_other.md
    .venv/bin/python bench/vs_trl.py --iters 4 --sides ours           # re-run one side; the other is reused
    .venv/bin/python bench/vs_trl.py --device cuda --iters 6          # on a GPU: the one_gpu workload
    .venv/bin/python bench/vs_trl.py --device cpu --workload one_gpu --scale toy --iters 4 --out /tmp/r  # its CPU rehearsal

Runs, one after the other on the same machine, TRL's trainer with real sampling (bench/trl_side.py)
and this project, on the same prompts in the same order (prompts whose rendering leaves no room for
the new tokens within the sequence length are left out on both sides), with the settings of one
workload (bench/workload.py):

- ``--workload bench`` (the default on CPU): the BENCH CONFIG (../shared/spec/bench.md), this project
  as ``./run.sh tiny --overlay bench`` (recipes/tiny/bench.yaml), on CPU only;
- ``--workload one_gpu`` (the default with ``--device cuda``): ``./run.sh llama32_1b --overlay one_gpu``
  (Llama-3.2-1B's shape, tied embeddings, llama3 RoPE scaling, random init, bf16 on a GPU, 4 prompts x
  2 samples, up to 256 new tokens within 512, every role on one device) without its checkpoints, and
  TRL on the same model shape, dtype, batch and sampling, all read from the recipe's config + overlay;
  ``--scale toy`` shrinks the model to bench/device_run.sh's toy size in fp32 (a CPU rehearsal).
  ``--ours-metrics``/``--ours-config`` take this project's side from a run of that overlay made
  already (bench/device_run.sh's loop, same GPU, same call) instead of running it again: its
  config.yaml must hold the workload's settings, its first --iters iterations are used.

``--device cuda`` on a machine where torch sees no GPU stops at once, naming what is missing. Each
side is its own process tree; the bench samples the resident memory of the whole tree (driver,
Ray's processes and every worker) and reports its peak, and the time from launch to the start of
the first iteration. On CPU it measures a 2048^3 fp32 matmul (2 threads) in the same run as the peak
for the GFLOP/s figures; on CUDA the peak is the GPU's dense bf16 datasheet figure
(common/device/backend.py), and TRL's process records the GPU's name and
``torch.cuda.max_memory_allocated`` (this project's metrics.jsonl records no GPU memory: left out).
Results of each side are kept in ``--out`` (``trl.json``, ``ours.json``) and reused by a later run
with the same workload, prompts and iteration count unless ``--fresh``, so an interrupted bench
resumes with the side that is missing.

Prints the tables and writes them to ``--report`` (default docs/bench.md for the BENCH CONFIG, else
``<out>/vs_trl.md``) with a bar chart (``--plot``, default: the report's path with .png), naming the
commit (ODPO_GIT_COMMIT when set, else git's HEAD and whether the tree had uncommitted changes).
Ratios are TRL's seconds / this project's (> 1: faster here); totals are over iterations 3-N.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import bench.workload as w
from bench.commit import git_commit

ROOT = Path(__file__).resolve().parents[1]

PHASES = ("generate", "reference", "reward", "train")
FIRST_TIMED = 3  # iterations 1-2 are warm-up
GIB = 1024**3


# ------------------------------------------------------------------------------------ measuring


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best of `repeats` fp32 n^3 matmuls on w.THREADS threads, in GFLOP/s."""
    import torch

    torch.set_num_threads(w.THREADS)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def tree_memory(root_pid: int, *, pss: bool) -> tuple[int, int]:
    """(RSS, PSS) in bytes summed over a process and all its descendants (Ray's raylet, GCS and
    workers are children of the driver that started Ray). RSS counts pages shared between processes
    (libraries, Ray's object store) once per process; PSS splits them. PSS walks every process's
    page tables (~10 ms of CPU per process per reading), so it is read only when ``pss`` (else 0)."""
    import psutil

    rss_sum = pss_sum = 0
    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    for proc in procs:
        try:
            info = proc.memory_full_info() if pss else proc.memory_info()
            rss_sum += info.rss
            pss_sum += getattr(info, "pss", info.rss) if pss else 0
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return rss_sum, pss_sum


RSS_EVERY_S = 0.5  # cheap (/proc/PID/statm)
PSS_EVERY = (
    6  # RSS readings per PSS reading (every 3 s): PSS costs the machine CPU, more on the side with more processes
)


def run_side(cmd: list[str], log: Path, first_row: callable) -> dict:
    """Run `cmd`, sampling its process tree's memory; `first_row()` -> wall-clock start of
    iteration 1 once known (else None). Also returns the CPU seconds the sampling itself took
    (it shares the machine with the side it measures)."""
    launch = time.time()
    load_before = os.getloadavg()[0]
    peak_rss = peak_pss = 0
    first = None
    sampler_cpu = time.process_time()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        readings = 0
        while proc.poll() is None:
            rss, pss = tree_memory(proc.pid, pss=readings % PSS_EVERY == 0)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            readings += 1
            if first is None:
                first = first_row()
            time.sleep(RSS_EVERY_S)
    if proc.returncode != 0:
        tail = log.read_text()[-4000:]
        raise SystemExit(f"error: {' '.join(cmd[:4])} ... failed ({proc.returncode}); log {log}:\n{tail}")
    first = first or first_row()
    return {"peak_rss": peak_rss, "peak_pss": peak_pss, "launch_to_first_s": first - launch if first else None, "wall_s": time.time() - launch,
            "load_avg": [load_before, os.getloadavg()[0]], "sampler_cpu_s": time.process_time() - sampler_cpu}  # fmt: skip


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------ the two sides

# what run_trl keeps of TRL's rows besides the timings (the device's fields on CUDA only)
TRL_ROW_KEYS = ("prompt_lens", "response_lens", "device_name", "peak_flops", "peak_source", "gpu_max_allocated")


def trl_command(wl: w.Workload, prompts_file: Path, iters: int, rows_file: Path, workdir: Path) -> list[str]:
    """bench/trl_side.py's command line for the workload."""
    return [
        sys.executable, str(ROOT / "bench" / "trl_side.py"), "--prompts", str(prompts_file), "--iters", str(iters),
        "--out", str(rows_file), "--workdir", str(workdir), "--workload", wl.name, "--scale", wl.scale,
        "--device", wl.device,
    ]  # fmt: skip


def run_trl(out: Path, prompts_file: Path, iters: int, wl: w.Workload) -> dict:
    rows_file = out / "trl_rows.jsonl"
    rows_file.unlink(missing_ok=True)

    def first_row():
        rows = read_rows(rows_file)
        return rows[0]["begin"] if rows else None

    info = run_side(trl_command(wl, prompts_file, iters, rows_file, out), out / "trl.log", first_row)
    rows = read_rows(rows_file)
    return {**info, "rows": [{k: r[k] for k in r if k.startswith("timing/") or k in TRL_ROW_KEYS} for r in rows]}


def ours_command(wl: w.Workload, iters: int, prompts_file: Path, run_dir: Path, overrides: list[str] = ()) -> list[str]:
    """``./run.sh`` for the workload: its recipe, overlay and overrides, `iters` iterations on the
    prompts of `prompts_file`; the one_gpu overlay without its checkpoints (TRL's side saves none)."""
    no_checkpoints = [] if wl.name == "bench" else ["training.save_interval=0"]
    return [str(ROOT / "run.sh"), wl.recipe, "--overlay", wl.overlay, "--out", str(run_dir), *wl.overrides,
            f"training.train_iters={iters}", f"actor_rollout_ref.actor_rollout.data_path={prompts_file}",
            *no_checkpoints, *overrides]  # fmt: skip


def ours_rows(metrics_rows: list[dict], prompt_lens: list[int], wl: w.Workload) -> list[dict]:
    """The bench's rows of this project's metrics.jsonl rows: the timings (a step's checkpoint
    writing, ``timing/save``, taken out of ``timing/step``: TRL's side saves nothing), and the
    prompt and response lengths of every sequence (prompts in file order, ``prompts_per_iter`` per
    iteration, wrapping at the end of the file; the mean response length for each)."""
    rows = []
    per_iter = wl.prompts_per_iter * wl.samples
    for i, r in enumerate(metrics_rows):
        idx = [(i * wl.prompts_per_iter + k) % len(prompt_lens) for k in range(wl.prompts_per_iter)]
        timing = {k: r[k] for k in r if k.startswith("timing/")}
        timing["timing/step"] -= timing.get("timing/save", 0.0)
        rows.append(timing | {
            "prompt_lens": [prompt_lens[j] for j in idx for _ in range(wl.samples)],
            "response_lens": [r["rollout/response_tokens"] / per_iter] * per_iter,
        })  # fmt: skip
    return rows


def run_ours(out: Path, prompts_file: Path, iters: int, prompt_lens: list[int], overrides: list[str], wl: w.Workload) -> dict:  # fmt: skip
    run_dir = out / "ours_run"
    shutil.rmtree(run_dir, ignore_errors=True)
    metrics = run_dir / "metrics.jsonl"
    seen = {}

    def first_row():  # metrics.jsonl gets iteration 1's row when it ends: start = then - its duration
        if "t" not in seen and metrics.is_file() and metrics.stat().st_size:
            seen["t"] = time.time() - read_rows(metrics)[0]["timing/step"]
        return seen.get("t")

    info = run_side(ours_command(wl, iters, prompts_file, run_dir, overrides), out / "ours.log", first_row)
    return {**info, "rows": ours_rows(read_rows(metrics), prompt_lens, wl)}


def workload_differences(cfg, wl: w.Workload) -> list[str]:
    """How a run's config (its config.yaml) differs from the workload's shared settings."""
    have, want = w.settings_from_config(cfg), wl.shared()
    return [f"{k}: {have[k]!r} (the workload: {want[k]!r})" for k in want if have.get(k) != want[k]]


def ours_from_run(metrics: Path, config: Path, wl: w.Workload, iters: int, prompts: list[str], tok) -> list[dict]:
    """This project's rows from a run made already (``--ours-metrics``/``--ours-config``): its
    first `iters` iterations, after checking that it ran the workload's settings on the same prompts."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(config)
    if diff := workload_differences(cfg, wl):
        raise SystemExit(f"error: {config}: not the {wl.name} workload's settings: " + "; ".join(diff))
    ran, lengths = w.fitting_prompts(
        w.read_prompts(cfg.actor_rollout_ref.actor_rollout.data_path), tok, wl.new_tokens, wl.max_length
    )
    if ran != prompts:
        raise SystemExit(
            f"error: {config}: its prompts ({cfg.actor_rollout_ref.actor_rollout.data_path}) are not the bench's"
        )
    rows = read_rows(metrics)[:iters]
    if len(rows) < iters:
        raise SystemExit(f"error: {metrics}: {len(rows)} iterations, fewer than --iters {iters}")
    return ours_rows(rows, lengths, wl)


# ------------------------------------------------------------------------------------ reporting


def summarize(side: dict, peak_flops: float | None, arch: dict) -> dict:
    """Totals and medians over iterations FIRST_TIMED-N of one side; model FLOP/s per phase (and
    their share of `peak_flops`, FLOP/s, when known); generated tokens/s."""
    rows = side["rows"][FIRST_TIMED - 1 :]
    s = {
        "step_total": sum(r["timing/step"] for r in rows),
        "step_median": statistics.median(r["timing/step"] for r in rows),
    }
    flops = {ph: 0.0 for ph in PHASES}
    for r in rows:
        for ph, f in w.phase_flops(r["prompt_lens"], r["response_lens"], arch).items():
            flops[ph] += f
    for ph in PHASES:
        secs = [r[f"timing/{ph}"] for r in rows]
        s[f"{ph}_median"], s[f"{ph}_total"] = statistics.median(secs), sum(secs)
        s[f"{ph}_flops"] = flops[ph] / sum(secs) if sum(secs) else float("nan")
        s[f"{ph}_peak_share"] = s[f"{ph}_flops"] / peak_flops if peak_flops else None
    tokens = sum(sum(r["response_lens"]) for r in rows)
    s["tokens_per_s"] = tokens / s["generate_total"]
    return s


def side_load(side: dict) -> str:
    return " / ".join(f"{x:.1f}" for x in side.get("load_avg") or []) or "not recorded"


def side_sampler(side: dict) -> str:
    return f"{side['sampler_cpu_s']:.1f} s" if side.get("sampler_cpu_s") is not None else "an unrecorded time"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def gib(n: int | None, missing: str = "not measured") -> str:
    return f"{n / GIB:.2f}" if n is not None else missing


def describe(wl: w.Workload) -> str:
    """One paragraph: what the one_gpu workload runs, and where its settings come from."""
    a = wl.arch
    rope = (
        f"llama3 RoPE scaling x{a['rope_scaling_factor']:g}" if a.get("rope_scaling_factor") else "RoPE without scaling"
    )
    size = "toy size" if wl.scale == "toy" else "full size"
    return (
        f"Workload: `./run.sh {wl.recipe} --overlay {wl.overlay} {' '.join(wl.overrides)}` (without checkpoints) and TRL "
        f"with the same settings, all read from `recipes/{wl.recipe}/config.yaml` + `{wl.overlay}.yaml` by the project's "
        f"config loader (bench/workload.py): the model at {size}: {a['num_layers']} layers, hidden {a['hidden_size']}, "
        f"FFN {a['ffn_hidden_size']}, {a['num_attention_heads']} heads / {a['num_query_groups']} KV heads, vocabulary "
        f"{a['vocab_size']}, {'tied' if a['tie_word_embeddings'] else 'untied'} embeddings, {rope}, random init; "
        f"{wl.dtype} on {wl.device} on both sides; {wl.prompts_per_iter} prompts x {wl.samples} samples, up to "
        f"{wl.new_tokens} new tokens within {wl.max_length}; temperature {wl.temperature:g}, top-k {wl.top_k} (0: off), "
        f"top-p {wl.top_p:g}, missing-EOS penalty {wl.missing_eos_penalty:g}; beta {wl.beta:g} ({wl.loss_type}), lr "
        f"{wl.lr:g} {wl.lr_schedule}, gradient clipping at {wl.max_grad_norm:g}."
    )


def device_sentence(meta: dict, trl: dict, ours: dict) -> str:
    """Where it ran: the CPU and its measured matmul peak and load, or the GPU and its datasheet peak."""
    n = len(trl["rows"])
    head = (
        f"Prompts: `{meta['prompts']}` ({meta['num_prompts']} prompts of {meta['prompt_len_min']}-{meta['prompt_len_max']} "
        f"tokens, mean {meta['prompt_len_mean']:.0f}); {n} iterations; "
    )
    sampling = (
        f"Memory was sampled every {RSS_EVERY_S} s (PSS every {RSS_EVERY_S * PSS_EVERY:.0f} s); the sampling itself took "
        f"{side_sampler(trl)} of CPU during TRL's side and {side_sampler(ours)} during this project's. "
    )
    if meta["device"] == "cpu":
        return head + (
            f"{meta['cpu']}, fp32 matmul peak {meta['peak_flops'] / 1e9:.0f} GFLOP/s (2048^3, {w.THREADS} threads, "
            f"measured in this run). 1-minute load average before / after each side: TRL {side_load(trl)}, this project "
            f"{side_load(ours)}, now {meta['load_avg']} (above {os.cpu_count()} the machine was shared and the times are "
            f"not comparable). " + sampling
        )
    peak = f"{meta['peak_flops'] / 1e12:.0f} TFLOP/s" if meta["peak_flops"] else "not known"
    return head + (
        f"GPU: {meta['gpu']} (torch.cuda.get_device_name in TRL's process), dense peak {peak} ({meta['peak_source']}); "
        f"host: {meta['cpu']}, 1-minute load average before / after each side: TRL {side_load(trl)}, this project "
        f"{side_load(ours)}. " + sampling
    )


def intro(meta: dict, trl: dict, ours: dict) -> list[str]:
    """The report's opening paragraphs."""
    wl = meta["workload"]
    lines = [] if wl.name == "bench" else [describe(wl), ""]
    return lines + [
        device_sentence(meta, trl, ours)
        + f"Commit: {meta['commit']}. Ratio = TRL seconds / this project's seconds (> 1: this project is faster).",
        "",
    ]


def flops_row(ph: str, t: dict, o: dict, unit: str, scale: float) -> str:
    """One phase's model FLOP/s on both sides (in `unit`: FLOP/s / `scale`), with the share of the
    peak where known (to 0.1 % against a GPU's datasheet peak, where small shares are the rule)."""
    pct = ".0%" if unit == "GFLOP/s" else ".1%"

    def cell(s: dict) -> str:
        share = f" ({s[f'{ph}_peak_share']:{pct}})" if s[f"{ph}_peak_share"] is not None else ""
        return f"{s[f'{ph}_flops'] / scale:.1f}{share}"

    return f"| {ph}: {unit} (share of peak) | {cell(t)} | {cell(o)} | {ratio(o[f'{ph}_flops'], t[f'{ph}_flops'])} |"


def main_table(trl: dict, ours: dict, t: dict, o: dict, meta: dict) -> list[str]:
    """Totals, per-phase seconds and FLOP/s, tokens/s, memory and start-up, TRL beside this project."""
    n = len(trl["rows"])
    lines = [
        f"| iterations {FIRST_TIMED}-{n} | TRL 1.16 | this project | ratio |",
        "|---|---:|---:|---:|",
        f"| **total seconds** | {t['step_total']:.1f} | {o['step_total']:.1f} | **{ratio(t['step_total'], o['step_total'])}** |",
    ]
    lines += [f"| {ph}: total seconds | {t[f'{ph}_total']:.2f} | {o[f'{ph}_total']:.2f} | {ratio(t[f'{ph}_total'], o[f'{ph}_total'])} |"
              for ph in PHASES]  # fmt: skip
    lines.append(f"| median seconds per iteration | {t['step_median']:.2f} | {o['step_median']:.2f} | {ratio(t['step_median'], o['step_median'])} |")  # fmt: skip
    for ph in PHASES:
        worst = min(
            tr[f"timing/{ph}"] / max(orow[f"timing/{ph}"], 1e-9)
            for tr, orow in zip(trl["rows"][FIRST_TIMED - 1 :], ours["rows"][FIRST_TIMED - 1 :])
        )
        lines.append(f"| {ph}: median s (worst iteration's ratio) | {t[f'{ph}_median']:.3f} | {o[f'{ph}_median']:.3f} | "
                     f"{ratio(t[f'{ph}_median'], o[f'{ph}_median'])} ({worst:.2f}x) |")  # fmt: skip
    unit, scale = ("GFLOP/s", 1e9) if meta["device"] == "cpu" else ("TFLOP/s", 1e12)
    lines += [flops_row(ph, t, o, unit, scale) for ph in PHASES]
    lines += [
        f"| generated tokens/s | {t['tokens_per_s']:.0f} | {o['tokens_per_s']:.0f} | {ratio(o['tokens_per_s'], t['tokens_per_s'])} |",
        f"| peak memory, RSS summed over all processes (GiB) | {gib(trl.get('peak_rss'))} | {gib(ours.get('peak_rss'))} | {ratio(trl.get('peak_rss'), ours.get('peak_rss'))} |",
        f"| peak memory, PSS summed (shared pages split; GiB) | {gib(trl.get('peak_pss'))} | {gib(ours.get('peak_pss'))} | {ratio(trl.get('peak_pss'), ours.get('peak_pss'))} |",
    ]  # fmt: skip
    if meta["device"] == "cuda":
        lines.append(f"| peak GPU memory, torch.cuda.max_memory_allocated (GiB) | {gib(trl['rows'][-1].get('gpu_max_allocated'))} "
                     "| not recorded | - |")  # fmt: skip
    first_t, first_o = trl.get("launch_to_first_s"), ours.get("launch_to_first_s")
    lines.append(f"| launch to first iteration (s) | {'-' if first_t is None else f'{first_t:.1f}'} | "
                 f"{'-' if first_o is None else f'{first_o:.1f}'} | {ratio(first_t, first_o)} |")  # fmt: skip
    return lines


def iteration_table(trl: dict, ours: dict) -> list[str]:
    """Every iteration's step and phase seconds, both sides."""
    lines = [
        "Per iteration (seconds; prompt tokens = mean over the iteration's sequences):",
        "",
        "| it | prompt tok | TRL step | ours step | ratio | "
        + " | ".join(f"TRL {ph} | ours {ph}" for ph in PHASES)
        + " |",
        "|---:|---:|---:|---:|---:|" + "---:|" * (2 * len(PHASES)),
    ]
    for i, (tr, orow) in enumerate(zip(trl["rows"], ours["rows"]), start=1):
        cells = " | ".join(f"{tr[f'timing/{ph}']:.2f} | {orow[f'timing/{ph}']:.2f}" for ph in PHASES)
        lines.append(f"| {i} | {statistics.mean(tr['prompt_lens']):.0f} | {tr['timing/step']:.2f} | {orow['timing/step']:.2f} | "
                     f"{ratio(tr['timing/step'], orow['timing/step'])} | {cells} |")  # fmt: skip
    return lines


FLOPS_NOTE = (
    "GFLOP/s count the same model FLOPs on both sides: the trunk over every token, the output layer only where a "
    "token is sampled or a log-prob is needed (backward = 2x forward); work beyond that (e.g. logits at prompt "
    "positions) shows as a lower figure, work skipped as a higher one: this project's reward model runs each "
    "prompt once and its last layer at the score positions only (`common/reward/forward.py`, ~40 % fewer FLOPs "
    "on this workload), so its reward GFLOP/s are above what its matmuls run at. TRL's `train` is its step minus "
    "generation, reference and reward: the policy's forward, backward and optimizer step, as this project's `train`."
)


def differences(wl: w.Workload) -> str:
    """How the two sides differ beyond the workload's shared settings."""
    text = (
        "This project's step leaves out checkpoint writing (`timing/save`; TRL's side saves nothing). "
        f"Both sides build their models in {wl.dtype}"
    )
    if wl.dtype == "bf16":
        text += (
            ": TRL's AdamW steps the bf16 weights themselves (`bf16=True`: autocast), this project keeps fp32 main "
            "weights and Adam moments (Megatron's optimizer)"
        )
    if wl.device == "cuda":
        text += (
            ". TRL's phase timers synchronize the GPU where each phase starts and ends; this project's phases end "
            "when their results are back from the workers"
        )
    return text + "."


def notes(meta: dict) -> list[str]:
    """What the figures count, and how the two sides differ beyond the shared settings."""
    wl = meta["workload"]
    lines = ["", FLOPS_NOTE if meta["device"] == "cpu" else FLOPS_NOTE.replace("GFLOP/s", "TFLOP/s")]
    if wl.name == "bench":
        return lines
    lines.append("\n" + differences(wl))
    if meta["device"] == "cuda":
        lines.append(
            "\nPeak GPU memory: TRL's is its process's `torch.cuda.max_memory_allocated` after the models were built "
            "(policy, reference copy, reward model, AdamW state, activations); this project's metrics.jsonl records no "
            "GPU memory figure, so it is left out (bench/device_check.py reports each role's peak)."
        )
    if meta.get("ours_from"):
        lines.append(
            f"\nThis project's side is the run of `{meta['ours_from']}` (its first {len(meta['trl_rows'])} iterations; "
            "its config.yaml holds the same settings and prompts: checked), not run again here (bench/device_run.sh: "
            "the loop part of the same call, on the same device): its host memory and start-up were not measured."
        )
    return lines


def report(trl: dict, ours: dict, meta: dict) -> str:
    arch = meta["workload"].arch
    t, o = summarize(trl, meta["peak_flops"], arch), summarize(ours, meta["peak_flops"], arch)
    lines = intro(meta, trl, ours) + main_table(trl, ours, t, o, meta) + [""] + iteration_table(trl, ours)
    return "\n".join(lines + notes({**meta, "trl_rows": trl["rows"]}))


def plot(trl: dict, ours: dict, path: Path, title: str, arch: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax_it, ax_ph) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    n = len(trl["rows"])
    x = np.arange(1, n + 1)
    colors = {"generate": "tab:blue", "reference": "tab:orange", "reward": "tab:green", "train": "tab:red"}
    for offset, side, hatch, name in ((-0.2, trl, "//", "TRL"), (0.2, ours, "", "this project")):
        bottom = np.zeros(n)
        for ph in PHASES:
            vals = np.array([r[f"timing/{ph}"] for r in side["rows"]])
            ax_it.bar(x + offset, vals, 0.38, bottom=bottom, color=colors[ph], hatch=hatch, edgecolor="white",
                      label=f"{name}: {ph}")  # fmt: skip
            bottom += vals
    ax_it.set(
        xlabel="iteration (left bar TRL, hatched; right bar this project)",
        ylabel="seconds",
        title=f"per iteration: {title}",
    )
    ax_it.set_xticks(x)
    ax_it.legend(fontsize=7, ncol=2)
    t, o = summarize(trl, None, arch), summarize(ours, None, arch)
    xp = np.arange(len(PHASES) + 1)
    labels = [*PHASES, "step"]
    ax_ph.bar(xp - 0.2, [t[f"{k}_median"] for k in labels], 0.38, label="TRL 1.16", color="gray")
    ax_ph.bar(xp + 0.2, [o[f"{k}_median"] for k in labels], 0.38, label="this project", color="tab:purple")
    for i, k in enumerate(labels):
        ax_ph.text(
            xp[i] + 0.2,
            o[f"{k}_median"],
            ratio(t[f"{k}_median"], o[f"{k}_median"]),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax_ph.set_xticks(xp, labels)
    ax_ph.set(ylabel="seconds", title=f"median over iterations {FIRST_TIMED}-{n}")
    ax_ph.legend(fontsize=8)
    for ax in (ax_it, ax_ph):
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{os.cpu_count()} cores"


def commit_line() -> str:
    """The commit that ran, as the report says it (``bench.commit.git_commit``)."""
    c = git_commit()
    if c["commit"] is None:
        return "unknown (no git repository here and no ODPO_GIT_COMMIT)"
    if c["dirty"] is None:
        return f"{c['commit']} (ODPO_GIT_COMMIT; the tree's state is the caller's to vouch for)"
    return c["commit"] + (" + uncommitted changes (dirty tree)" if c["dirty"] else " (clean tree)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=Path, default=None,
                   help="JSONL: MT-Bench rows ('turns') or {'prompt': text} (default: the workload's: MT-Bench "
                        f"first turns ({w.DEFAULT_PROMPTS}) for bench, the overlay's data_path for one_gpu)")  # fmt: skip
    p.add_argument("--iters", type=int, default=12)
    p.add_argument("--device", choices=w.DEVICES, default="cpu",
                   help="where both sides run (default: %(default)s); cuda stops at once on a machine without a GPU")  # fmt: skip
    p.add_argument("--workload", choices=w.WORKLOADS, default=None,
                   help="bench (the BENCH CONFIG, CPU only; the default on cpu) or one_gpu (llama32_1b --overlay one_gpu; "
                        "the default on cuda)")  # fmt: skip
    p.add_argument("--scale", choices=w.SCALES, default="full",
                   help="one_gpu only: full (the recipe's model) or toy (2 layers, hidden 64, fp32: a rehearsal)")  # fmt: skip
    p.add_argument(
        "--sides",
        nargs="+",
        default=None,
        choices=["trl", "ours"],
        help="run exactly these sides, reuse the other's result from --out (default: run each side that has no result there)",
    )
    p.add_argument(
        "--out", type=Path, default=None,
        help="folder of both sides' results (default: bench_runs/<prompts file stem>, with the workload's name unless bench)",
    )  # fmt: skip
    p.add_argument(
        "--fresh", action="store_true", help="without --sides: re-run both sides even when --out has their results"
    )
    p.add_argument("--ours-metrics", type=Path, default=None,
                   help="this project's side from this metrics.jsonl of a run of the workload made already (with --ours-config)")  # fmt: skip
    p.add_argument(
        "--ours-config", type=Path, default=None, help="that run's config.yaml (checked against the workload)"
    )
    p.add_argument("--report", type=Path, default=None,
                   help="markdown report (default: docs/bench.md for bench, else <out>/vs_trl.md)")  # fmt: skip
    p.add_argument("--plot", type=Path, default=None, help="bar chart (default: the report's path with .png)")
    p.add_argument("overrides", nargs="*", help="extra key=value overrides for this project's side")
    return p


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, w.Workload]:
    """The arguments and the workload they name; usage errors (exit 2) and a missing GPU stop here,
    before anything is run or written."""
    p = parser()
    args = p.parse_args(argv)
    if args.iters < FIRST_TIMED:
        p.error(f"--iters must be >= {FIRST_TIMED} (iterations 1-{FIRST_TIMED - 1} are warm-up)")
    if (args.ours_metrics is None) != (args.ours_config is None):
        p.error("--ours-metrics and --ours-config go together (a run's metrics.jsonl and its config.yaml)")
    if args.ours_metrics is not None and "ours" in (args.sides or []):
        p.error("--ours-metrics takes this project's side from a run made already: leave 'ours' out of --sides")
    w.check_device(args.device)
    name = args.workload or ("bench" if args.device == "cpu" else "one_gpu")
    try:
        wl = w.workload(name, args.scale, args.device)
    except ValueError as e:
        p.error(str(e))
    return args, wl


def collect(args, wl: w.Workload, out: Path, key: dict, prompts_file: Path, lengths: list[int]) -> dict:
    """Both sides' results: run each side asked for (or missing from --out), reuse the others."""
    results, missing = {}, []
    for side in ("trl",) if args.ours_metrics else ("trl", "ours"):
        stored = out / f"{side}.json"
        have = json.loads(stored.read_text()) if stored.is_file() else None
        if have is not None and have["key"] != key:
            have = None  # measured with other prompts, iterations or overrides
        if side not in (args.sides or []) and (have is not None and not args.fresh or args.sides):
            if have is None:  # the requested side still runs (and is kept); no report without both
                missing.append(side)
                continue
            results[side] = have
            print(f"{side}: reusing {stored}", flush=True)
            continue
        print(f"{side}: running {args.iters} iterations (log {out / (side + '.log')}) ...", flush=True)
        side_peak = matmul_peak_gflops() if wl.device == "cpu" else None  # right before the side: its load
        if side == "trl":
            res = run_trl(out, prompts_file, args.iters, wl)
        else:
            res = run_ours(out, prompts_file, args.iters, lengths, args.overrides, wl)
        res["key"], res["commit"] = key, commit_line()
        if side_peak is not None:
            res["peak_gflops"] = side_peak
        stored.write_text(json.dumps(res))
        results[side] = res
        print(f"{side}: {res['wall_s']:.0f} s", flush=True)
    if missing:
        raise SystemExit(
            f"error: no result of {missing[0]} with these settings in {out} (no report written); run it with --sides {missing[0]}"
        )
    return results


def device_meta(wl: w.Workload, peak_gflops: float | None, results: dict) -> dict:
    """The report's device fields: on CPU the best measured matmul peak (the least disturbed by
    other load), on CUDA what TRL's process recorded of the GPU."""
    meta = {"device": wl.device, "cpu": cpu_name(), "load_avg": " ".join(f"{x:.1f}" for x in os.getloadavg())}
    if wl.device == "cpu":
        peak = max([peak_gflops, matmul_peak_gflops(), *(r.get("peak_gflops", 0.0) for r in results.values())])
        return meta | {"peak_flops": peak * 1e9}
    last = results["trl"]["rows"][-1]
    return meta | {"gpu": last.get("device_name", "unknown"), "peak_flops": last.get("peak_flops"),
                   "peak_source": last.get("peak_source", "not recorded")}  # fmt: skip


def commit_text(results: dict) -> str:
    """The commit of both sides, or of each when they differ (a side reused from an earlier bench)."""
    now = commit_line()
    trl, ours = (results[s].get("commit", now) for s in ("trl", "ours"))
    return trl if trl == ours else f"TRL's side {trl}, this project's {ours}"


def title(wl: w.Workload) -> str:
    if wl.name == "bench":
        return "# Speed: this project vs TRL 1.16 OnlineDPOTrainer on the BENCH CONFIG"
    return (f"# Speed: this project vs TRL 1.16 OnlineDPOTrainer on {wl.recipe} --overlay {wl.overlay} "
            f"({wl.scale} size, {wl.dtype}, {wl.device})")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args, wl = parse_args(argv)
    prompts_path = args.prompts or Path(wl.prompts)
    default_out = (
        ROOT / "bench_runs" / (prompts_path.stem if wl.name == "bench" else f"{wl.name}_{wl.scale}_{wl.device}")
    )
    out = (args.out or default_out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report_path = args.report or (ROOT / "docs" / "bench.md" if wl.name == "bench" else out / "vs_trl.md")
    plot_path = args.plot or report_path.with_suffix(".png")

    from common.prompts.tokenizer import load_tokenizer

    tok = load_tokenizer(wl.tokenizer)
    prompts, lengths = w.fitting_prompts(w.read_prompts(prompts_path), tok, wl.new_tokens, wl.max_length)
    if len(prompts) < wl.prompts_per_iter:
        raise SystemExit(
            f"error: {prompts_path}: {len(prompts)} prompts fit in {wl.max_length - wl.new_tokens} tokens; need >= {wl.prompts_per_iter}"
        )
    prompts_file = out / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in prompts))
    key = {"prompts": [len(prompts), sum(lengths)], "iters": args.iters, "overrides": args.overrides}
    if wl.name != "bench":
        key["workload"] = [wl.name, wl.scale, wl.device]

    peak = matmul_peak_gflops() if wl.device == "cpu" else None
    print(f"workload {wl.name} ({wl.scale}, {wl.dtype}, {wl.device}); {len(prompts)} prompts, "
          f"{min(lengths)}-{max(lengths)} tokens" + (f"; fp32 matmul peak: {peak:.0f} GFLOP/s" if peak else ""), flush=True)  # fmt: skip
    results = collect(args, wl, out, key, prompts_file, lengths)
    if args.ours_metrics:
        rows = ours_from_run(args.ours_metrics, args.ours_config, wl, args.iters, prompts, tok)
        results["ours"] = {"rows": rows, "commit": results["trl"].get("commit")}
    meta = {
        "prompts": str(prompts_path), "num_prompts": len(prompts), "prompt_len_min": min(lengths),
        "prompt_len_max": max(lengths), "prompt_len_mean": statistics.mean(lengths), "workload": wl,
        "commit": commit_text(results), "ours_from": args.ours_metrics, **device_meta(wl, peak, results),
    }  # fmt: skip
    text = report(results["trl"], results["ours"], meta)
    plot(results["trl"], results["ours"], plot_path, prompts_path.name, wl.arch)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    rel_plot = os.path.relpath(plot_path, report_path.parent)
    command = " ".join(sys.argv[1:] if argv is None else argv)
    report_path.write_text(
        f"{title(wl)}\n\nWritten by `.venv/bin/python bench/vs_trl.py {command}`.\n\n{text}\n\n"
        f"![per-iteration and per-phase seconds]({rel_plot})\n"
    )
    print("\n" + text + f"\n\nwrote {report_path} and {plot_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
