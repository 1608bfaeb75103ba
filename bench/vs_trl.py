"""Speed side by side with TRL 1.16 ``OnlineDPOTrainer`` on the BENCH CONFIG (../shared/spec/bench.md).

    .venv/bin/python bench/vs_trl.py                                  # MT-Bench first turns, 12 iterations
    .venv/bin/python bench/vs_trl.py --prompts other.jsonl --out bench_runs/other --report docs/bench_other.md
    .venv/bin/python bench/vs_trl.py --iters 4 --sides ours           # re-run one side; the other is reused

Runs, one after the other on the same machine, TRL's trainer with real sampling (bench/trl_side.py)
and this project (``./run.sh tiny --overlay bench``, recipes/tiny/bench.yaml), on the same prompts in
the same order (prompts whose rendering leaves no room for 64 new tokens within 512 are left out on
both sides). Each side is its own process tree; the bench samples the resident memory of the whole
tree (driver, Ray's processes and every worker) and reports its peak, and the time from launch to
the start of the first iteration. It measures a 2048^3 fp32 matmul (2 threads) in the same run as
the peak for the GFLOP/s figures. Results of each side are kept in ``--out`` (``trl.json``,
``ours.json``) and reused by a later run with the same prompts and iteration count unless
``--fresh``, so an interrupted bench resumes with the side that is missing.

Prints the tables and writes them to ``--report`` (default docs/bench.md) with a bar chart
(``--plot``, default docs/bench.png). Ratios are TRL's seconds / this project's (> 1: faster here).
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

ROOT = Path(__file__).resolve().parents[1]

PHASES = ("generate", "reference", "reward", "train")
FIRST_TIMED = 3  # iterations 1-2 are warm-up


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


def run_trl(out: Path, prompts_file: Path, iters: int) -> dict:
    rows_file = out / "trl_rows.jsonl"
    rows_file.unlink(missing_ok=True)

    def first_row():
        rows = read_rows(rows_file)
        return rows[0]["begin"] if rows else None

    cmd = [
        sys.executable,
        str(ROOT / "bench" / "trl_side.py"),
        "--prompts",
        str(prompts_file),
        "--iters",
        str(iters),
        "--out",
        str(rows_file),
        "--workdir",
        str(out),
    ]
    info = run_side(cmd, out / "trl.log", first_row)
    rows = read_rows(rows_file)
    return {
        **info,
        "rows": [
            {k: r[k] for k in r if k.startswith("timing/")}
            | {"prompt_lens": r["prompt_lens"], "response_lens": r["response_lens"]}
            for r in rows
        ],
    }


def run_ours(out: Path, prompts_file: Path, iters: int, prompt_lens: list[int], overrides: list[str]) -> dict:
    run_dir = out / "ours_run"
    shutil.rmtree(run_dir, ignore_errors=True)
    metrics = run_dir / "metrics.jsonl"
    seen = {}

    def first_row():  # metrics.jsonl gets iteration 1's row when it ends: start = then - its duration
        if "t" not in seen and metrics.is_file() and metrics.stat().st_size:
            seen["t"] = time.time() - read_rows(metrics)[0]["timing/step"]
        return seen.get("t")

    cmd = [str(ROOT / "run.sh"), "tiny", "--overlay", "bench", "--out", str(run_dir), f"training.train_iters={iters}",
           f"actor_rollout_ref.actor_rollout.data_path={prompts_file}", *overrides]  # fmt: skip
    info = run_side(cmd, out / "ours.log", first_row)
    rows = []
    for i, r in enumerate(read_rows(metrics)):
        # prompts in file order, PROMPTS_PER_ITER per iteration, wrapping at the end of the file
        idx = [(i * w.PROMPTS_PER_ITER + k) % len(prompt_lens) for k in range(w.PROMPTS_PER_ITER)]
        per_seq = r["rollout/response_tokens"] / (w.PROMPTS_PER_ITER * w.SAMPLES)
        rows.append({k: r[k] for k in r if k.startswith("timing/")} | {
            "prompt_lens": [prompt_lens[j] for j in idx for _ in range(w.SAMPLES)],
            "response_lens": [per_seq] * (w.PROMPTS_PER_ITER * w.SAMPLES),
        })  # fmt: skip
    return {**info, "rows": rows}


# ------------------------------------------------------------------------------------ reporting


def summarize(side: dict, peak_gflops: float) -> dict:
    rows = side["rows"][FIRST_TIMED - 1 :]
    s = {
        "step_total": sum(r["timing/step"] for r in rows),
        "step_median": statistics.median(r["timing/step"] for r in rows),
    }
    flops = {ph: 0.0 for ph in PHASES}
    for r in rows:
        for ph, f in w.phase_flops(r["prompt_lens"], r["response_lens"]).items():
            flops[ph] += f
    for ph in PHASES:
        secs = [r[f"timing/{ph}"] for r in rows]
        s[f"{ph}_median"], s[f"{ph}_total"] = statistics.median(secs), sum(secs)
        s[f"{ph}_gflops"] = flops[ph] / sum(secs) / 1e9 if sum(secs) else float("nan")
        s[f"{ph}_peak_share"] = s[f"{ph}_gflops"] / peak_gflops
    tokens = sum(sum(r["response_lens"]) for r in rows)
    s["tokens_per_s"] = tokens / s["generate_total"]
    return s


def side_load(side: dict) -> str:
    return " / ".join(f"{x:.1f}" for x in side.get("load_avg", [])) or "not recorded"


def side_sampler(side: dict) -> str:
    return f"{side['sampler_cpu_s']:.1f}" if "sampler_cpu_s" in side else "(not recorded)"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def report(trl: dict, ours: dict, meta: dict) -> str:
    n = len(trl["rows"])
    t, o = summarize(trl, meta["peak_gflops"]), summarize(ours, meta["peak_gflops"])
    gb = 1024**3
    lines = [
        f"Prompts: `{meta['prompts']}` ({meta['num_prompts']} prompts of {meta['prompt_len_min']}-{meta['prompt_len_max']} tokens, "
        f"mean {meta['prompt_len_mean']:.0f}); {n} iterations; {meta['cpu']}, fp32 matmul peak "
        f"{meta['peak_gflops']:.0f} GFLOP/s (2048^3, {w.THREADS} threads, measured in this run). 1-minute load average "
        f"before / after each side: TRL {side_load(trl)}, this project {side_load(ours)}, now {meta['load_avg']} "
        f"(above {os.cpu_count()} the machine was shared and the times are not comparable). Memory was sampled every "
        f"{RSS_EVERY_S} s (PSS every {RSS_EVERY_S * PSS_EVERY:.0f} s); the sampling itself took {side_sampler(trl)} s of CPU during TRL's side "
        f"and {side_sampler(ours)} s during this project's. "
        "Ratio = TRL seconds / this project's seconds (> 1: this project is faster).",
        "",
        f"| iterations {FIRST_TIMED}-{n} | TRL 1.16 | this project | ratio |",
        "|---|---:|---:|---:|",
        f"| **total seconds** | {t['step_total']:.1f} | {o['step_total']:.1f} | **{ratio(t['step_total'], o['step_total'])}** |",
        f"| median seconds per iteration | {t['step_median']:.2f} | {o['step_median']:.2f} | {ratio(t['step_median'], o['step_median'])} |",
    ]
    for ph in PHASES:
        worst = min(
            tr[f"timing/{ph}"] / max(orow[f"timing/{ph}"], 1e-9)
            for tr, orow in zip(trl["rows"][FIRST_TIMED - 1 :], ours["rows"][FIRST_TIMED - 1 :])
        )
        lines.append(f"| {ph}: median s (worst iteration's ratio) | {t[f'{ph}_median']:.3f} | {o[f'{ph}_median']:.3f} | "
                     f"{ratio(t[f'{ph}_median'], o[f'{ph}_median'])} ({worst:.2f}x) |")  # fmt: skip
    for ph in PHASES:
        lines.append(f"| {ph}: GFLOP/s (share of peak) | {t[f'{ph}_gflops']:.1f} ({t[f'{ph}_peak_share']:.0%}) | "
                     f"{o[f'{ph}_gflops']:.1f} ({o[f'{ph}_peak_share']:.0%}) | {ratio(o[f'{ph}_gflops'], t[f'{ph}_gflops'])} |")  # fmt: skip
    lines += [
        f"| generated tokens/s | {t['tokens_per_s']:.0f} | {o['tokens_per_s']:.0f} | {ratio(o['tokens_per_s'], t['tokens_per_s'])} |",
        f"| peak memory, RSS summed over all processes (GiB) | {trl['peak_rss'] / gb:.2f} | {ours['peak_rss'] / gb:.2f} | {ratio(trl['peak_rss'], ours['peak_rss'])} |",
        f"| peak memory, PSS summed (shared pages split; GiB) | {trl['peak_pss'] / gb:.2f} | {ours['peak_pss'] / gb:.2f} | {ratio(trl['peak_pss'], ours['peak_pss'])} |",
        f"| launch to first iteration (s) | {trl['launch_to_first_s']:.1f} | {ours['launch_to_first_s']:.1f} | {ratio(trl['launch_to_first_s'], ours['launch_to_first_s'])} |",
        "",
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
    lines += [
        "",
        "GFLOP/s count the same model FLOPs on both sides: the trunk over every token, the output layer only where a "
        "token is sampled or a log-prob is needed (backward = 2x forward); work beyond that (e.g. logits at prompt "
        "positions) shows as a lower figure, work skipped as a higher one: this project's reward model runs each "
        "prompt once and its last layer at the score positions only (`common/reward/forward.py`, ~40 % fewer FLOPs "
        "on this workload), so its reward GFLOP/s are above what its matmuls run at. TRL's `train` is its step minus "
        "generation, reference and reward: the policy's forward, backward and optimizer step, as this project's `train`.",
    ]
    return "\n".join(lines)


def plot(trl: dict, ours: dict, path: Path, title: str) -> None:
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
    t, o = summarize(trl, 1.0), summarize(ours, 1.0)
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--prompts",
        type=Path,
        default=w.DEFAULT_PROMPTS,
        help="JSONL: MT-Bench rows ('turns') or {'prompt': text} (default: %(default)s)",
    )
    p.add_argument("--iters", type=int, default=12)
    p.add_argument(
        "--sides",
        nargs="+",
        default=None,
        choices=["trl", "ours"],
        help="run exactly these sides, reuse the other's result from --out (default: run each side that has no result there)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="folder of both sides' results (default: bench_runs/<prompts file stem>)"
    )
    p.add_argument(
        "--fresh", action="store_true", help="without --sides: re-run both sides even when --out has their results"
    )
    p.add_argument("--report", type=Path, default=ROOT / "docs" / "bench.md")
    p.add_argument("--plot", type=Path, default=None, help="bar chart (default: the report's path with .png)")
    p.add_argument("overrides", nargs="*", help="extra key=value overrides for this project's side")
    args = p.parse_args()
    if args.iters < FIRST_TIMED:
        p.error(f"--iters must be >= {FIRST_TIMED} (iterations 1-{FIRST_TIMED - 1} are warm-up)")
    out = (args.out or ROOT / "bench_runs" / args.prompts.stem).resolve()
    out.mkdir(parents=True, exist_ok=True)
    plot_path = args.plot or args.report.with_suffix(".png")

    from common.prompts.tokenizer import load_tokenizer

    prompts, lengths = w.fitting_prompts(w.read_prompts(args.prompts), load_tokenizer(str(w.TOKENIZER)))
    if len(prompts) < w.PROMPTS_PER_ITER:
        raise SystemExit(
            f"error: {args.prompts}: {len(prompts)} prompts fit in {w.MAX_LENGTH - w.NEW_TOKENS} tokens; need >= {w.PROMPTS_PER_ITER}"
        )
    prompts_file = out / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in prompts))
    key = {"prompts": [len(prompts), sum(lengths)], "iters": args.iters, "overrides": args.overrides}

    peak = matmul_peak_gflops()
    print(
        f"fp32 matmul peak: {peak:.0f} GFLOP/s; {len(prompts)} prompts, {min(lengths)}-{max(lengths)} tokens",
        flush=True,
    )
    results, missing = {}, []
    for side in ("trl", "ours"):
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
        side_peak = matmul_peak_gflops()  # right before the side: the load it ran under
        if side == "trl":
            res = run_trl(out, prompts_file, args.iters)
        else:
            res = run_ours(out, prompts_file, args.iters, lengths, args.overrides)
        res["key"], res["peak_gflops"] = key, side_peak
        stored.write_text(json.dumps(res))
        results[side] = res
        print(f"{side}: {res['wall_s']:.0f} s", flush=True)
    if missing:
        raise SystemExit(
            f"error: no result of {missing[0]} with these settings in {out} (no report written); run it with --sides {missing[0]}"
        )
    # the best of the measurements before each side and now: the least disturbed by other load
    peak = max([peak, matmul_peak_gflops(), *(r.get("peak_gflops", 0.0) for r in results.values())])
    meta = {
        "prompts": str(args.prompts), "num_prompts": len(prompts), "prompt_len_min": min(lengths), "prompt_len_max": max(lengths),
        "prompt_len_mean": statistics.mean(lengths), "peak_gflops": peak, "cpu": cpu_name(),
        "load_avg": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }  # fmt: skip
    text = report(results["trl"], results["ours"], meta)
    plot(results["trl"], results["ours"], plot_path, args.prompts.name)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    rel_plot = os.path.relpath(plot_path, args.report.parent)
    args.report.write_text(
        "# Speed: this project vs TRL 1.16 OnlineDPOTrainer on the BENCH CONFIG\n\n"
        f"Written by `.venv/bin/python bench/vs_trl.py {' '.join(sys.argv[1:])}`.\n\n{text}\n\n![per-iteration and per-phase seconds]({rel_plot})\n"
    )
    print("\n" + text + f"\n\nwrote {args.report} and {plot_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
