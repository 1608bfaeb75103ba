"""Where a decode step's time goes: common.generate.generation.generate on one device, timed and profiled.

    .venv/bin/python bench/decode_profile.py --device cpu --scale toy --decode static --out /tmp/decode_profile   # here (a test runs it)
    RUNS=profile bash bench/device_check.sh        # on the GPU machine (the wheels as for the device check)

The device check's generation workload (the recipe's actor, random weights, --prompts prompts x
n_samples_per_prompt rows, the recipe's sampling), generated several ways, each after a warm-up:
  sampled          as the recipes sample (keyed Gumbel-max, common/generate/sampling.py), decode --decode
                   ("auto": a CUDA graph per generation on CUDA)
  sampled_eager    the same with eager decode steps (the model's modules called from Python)
  sampled_eager_again    once more: on CUDA the first eager generation also pays cuDNN's plan
                   for each new attention key length, the second finds them built
  greedy, greedy_eager   top_k=1: the decode steps with an argmax for a sampler
whether the graph and the eager decode give the same tokens (also greedy in fp32, where the
recipe's dtype is bf16), and a torch.profiler trace of a few
sampled steps (CPU and, on an accelerator, device activity):
the ops that take the most host and device time, how many kernels a step launches and how often
the host waits for the device. Writes summary.json, the tables (profile.txt) and the trace to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from bench.device_check import generation_rows, recipe_config, start_device
from common.config.arch import LlamaArch
from common.config.roles import max_new_tokens


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "npu"))
    p.add_argument("--scale", default="full", choices=("full", "toy"))
    p.add_argument("--recipe", default="llama32_1b")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--steps", type=int, default=64, help="new tokens per timed generation")
    p.add_argument("--profile-steps", type=int, default=12)
    p.add_argument(
        "--decode",
        default="auto",
        help="the decode mode compared with eager (auto: a CUDA graph on CUDA; static on CPU for a test)",
    )
    p.add_argument("--out", required=True, help="output folder")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    cfg = recipe_config(args.recipe, args.scale, args.device)
    t, a = cfg.training, cfg.actor_rollout_ref.actor_rollout
    arch = LlamaArch(**OmegaConf.to_container(cfg.model))
    device, dtype = start_device(cfg, os.cpu_count() or 1)

    from common.generate.generation import decode_mode, generate
    from common.model import parallel
    from common.model.llama import build_policy

    actor = build_policy(arch, dtype=dtype, seed=t.seed, device=device.torch_device())
    lengths, _, rows, keys = generation_rows(cfg, arch.vocab_size, args.prompts, args.scale == "toy")
    stop = [arch.vocab_size + 7]  # an id never drawn: every row runs every step
    sampled = dict(
        temperature=a.temperature,
        top_k=a.top_k,
        top_p=a.top_p,
        eos_token_ids=stop,
        sample_keys=keys,
        decode=args.decode,
    )
    steps = min(args.steps, max_new_tokens(cfg))

    tokens = {}

    def timed(name: str, **kw) -> float:
        generate(actor, rows, max_new_tokens=4, **{**sampled, **kw})  # warm-up
        device.synchronize()
        start = time.perf_counter()
        tokens[name] = generate(actor, rows, max_new_tokens=steps, **{**sampled, **kw})
        device.synchronize()
        ms = (time.perf_counter() - start) / steps * 1e3
        print(f"[decode_profile] {name:15s} {ms:8.2f} ms/step ({len(rows)} rows, {steps} steps)", flush=True)
        return ms

    summary = {
        "device": device.name(),
        "dtype": t.dtype,
        "rows": len(rows),
        "steps": steps,
        "prompt_lengths": lengths,
        "decode": decode_mode(args.decode, device.torch_device()),
        "torch_threads": torch.get_num_threads(),
    }
    summary["ms_per_step"] = {
        "sampled": timed("sampled"), "sampled_eager": timed("sampled_eager", decode="eager"),
        "sampled_eager_again": timed("sampled_eager_again", decode="eager"),
        "greedy": timed("greedy", top_k=1), "greedy_eager": timed("greedy_eager", top_k=1, decode="eager"),
    }  # fmt: skip
    # rows whose tokens equal the eager decode's (rounding in the attention sum may flip a near tie)
    summary["rows_equal_eager"] = {
        "sampled": sum(x == y for x, y in zip(tokens["sampled"], tokens["sampled_eager"])),
        "greedy": sum(x == y for x, y in zip(tokens["greedy"], tokens["greedy_eager"])),
    }
    # greedy again on the same weights in fp32, whose logits have no bf16 near-ties: every row should agree
    fp32_actor = build_policy(arch, dtype=torch.float32, seed=t.seed, device=device.torch_device())
    greedy = {**sampled, "top_k": 1, "max_new_tokens": steps}
    summary["rows_equal_eager"]["greedy_fp32"] = sum(
        x == y
        for x, y in zip(
            generate(fp32_actor, rows, **greedy), generate(fp32_actor, rows, **{**greedy, "decode": "eager"})
        )
    )
    del fp32_actor
    print(f"[decode_profile] rows equal to eager decode's: {summary['rows_equal_eager']} of {len(rows)}", flush=True)

    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.kind == "cuda" else [])
    with profile(activities=activities) as prof:
        generate(actor, rows, max_new_tokens=args.profile_steps, **sampled)
        device.synchronize()
    averages = prof.key_averages()
    per_step = args.profile_steps
    device_events = [
        e for e in prof.events() if getattr(e, "device_type", None) is not None and str(e.device_type).endswith("CUDA")
    ]
    summary["kernels_per_step"] = round(len(device_events) / per_step, 1)
    summary["aten_calls_per_step"] = round(sum(e.count for e in averages if e.key.startswith("aten::")) / per_step, 1)
    summary["host_waits_per_step"] = {
        e.key: round(e.count / per_step, 2)
        for e in averages
        if e.key
        in (
            "cudaStreamSynchronize",
            "cudaMemcpyAsync",
            "cudaDeviceSynchronize",
            "aten::item",
            "aten::_local_scalar_dense",
        )
    }
    tables = [averages.table(sort_by="self_cpu_time_total", row_limit=40)]
    if device.kind == "cuda":
        tables.append(averages.table(sort_by="self_device_time_total", row_limit=30))
    (out / "profile.txt").write_text("\n\n".join(tables) + "\n")
    prof.export_chrome_trace(str(out / "decode_trace.json"))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n\n".join(tables))
    print(json.dumps(summary, indent=2))
    parallel.destroy_model_parallel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
