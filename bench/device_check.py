"""Device check: the engine's pieces on one device, in one process, without Ray.

    .venv/bin/python bench/device_check.py --device cpu --scale toy --out /tmp/device_check.json   # CI (tests/test_device_check.py), ~20 s
    .venv/bin/python bench/device_check.py --device cuda --scale full --out docs/device/h100.json   # a GPU: llama32_1b, bf16
    bash bench/device_check.sh                      # the prepared GPU-machine run (installs the copied wheels; writes to $OUT)

The recipe's own config (`recipes/llama32_1b/config.yaml`, read by `common.config.load` exactly as a run
reads it; `--scale toy` merges its `cpu_scale.yaml` and shortens the lengths) gives the
architecture, dtype, micro-batch sizes, sampling, optimizer and DPO settings. Weights are random
(seeded); nothing is downloaded. Phases, each timed (device synchronised) with its peak memory:

  build       actor, reference (same seed: same weights) and reward model, moved to the device
  generate    KV-cache sampling, --prompts x n_samples_per_prompt rows x max_new_tokens
              (common.generate.generation.generate, as the actor's workers call it)
  reward      reward-model scores at each response's first EOS as the workers compute them with
              PP = 1 (common.reward.forward: each prompt once, the last layer at the score positions)
  reward_full the same scores through the full forward (Megatron's schedule, as with PP > 1): must
              equal the above within rounding (model FLOPs of the full forward counted for both)
  reference   summed response log-probs of both members of every pair, in the loop's layout,
              run twice: the second forward must equal the first
  optimizer   Megatron DDP + Megatron Adam (bf16/fp16: Float16OptimizerWithFloat16Params, fp32 main
              params; fp16 with dynamic loss scaling), common.train.optimizer.build_actor_optimizer, as
              ActorWorker builds it
  train       one DPO step (common.train.optimizer.train_step): the step-1 loss must be ln 2; in bf16
              or fp16 every weight must then equal its fp32 main parameter rounded to that dtype
  train2      a second DPO step on the same pairs: a warm step's time, and the steady-state peak
              memory (forward and backward with Adam's moments allocated, which the first step's
              backward ran without)
  after       the DPO loss again (forward only): must be finite
  checkpoint  save the actor (common.weights.convert.save_checkpoint, the project's format), load it into
              the reference model (load_checkpoint_into_model): every weight must equal the actor's

It reports generated tokens/s, seconds and FLOPs per phase, model FLOP utilisation against the
device's peak (common.device.backend: datasheet bf16 peaks of known accelerators; on CPU a measured fp32
matmul), peak device memory per phase and per role (the figures `tools/recipe_budget.py
--measured FILE` prints next to its estimates), and writes everything to `--out FILE.json`. Exit
status 1 when a check fails (the JSON is written first). Imports nothing from Ray.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from omegaconf import OmegaConf

from bench.commit import git_commit
from common.config.arch import LlamaArch
from common.config.load import load_config
from common.config.roles import max_new_tokens, optimizer_steps_per_iter, role_section
from common.device.backend import Device, apply_megatron_fusions, resolve_device

# the project's root: `common` comes from the editable install (setup.sh), or on the GPU machine's bare
# copy of the tree from PYTHONPATH, which bench/device_check.sh sets
ROOT = Path(__file__).resolve().parents[1]

GIB = 1024**3
LLAMA3_STOP_IDS = [128001, 128009]  # <|end_of_text|>, <|eot_id|>
PROMPT_ID_RANGE = 128000  # prompts draw ordinary (non-special) Llama-3 ids
# step-1 loss vs ln 2 (policy == reference; the loop's and the trainer's layouts batch the same
# sequences in another row order), and a repeated forward vs the first (relative to |log-prob|)
LOSS_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 1e-2}
REPEAT_RTOL = {torch.float32: 1e-6, torch.bfloat16: 1e-4, torch.float16: 1e-4}
# reward scores two ways (different GEMM shapes and attention order): relative to the largest score
SHARED_RTOL = {torch.float32: 1e-4, torch.bfloat16: 1e-1, torch.float16: 1e-1}
TOY_OVERRIDES = ["training.seq_length=24", "actor_rollout_ref.actor_rollout.max_prompt_length=16"]  # 8 new tokens


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "npu"))
    p.add_argument(
        "--scale",
        default="full",
        choices=("full", "toy"),
        help="full: the recipe's model and dtype; toy: its cpu_scale overlay, short lengths",
    )
    p.add_argument("--recipe", default="llama32_1b")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument(
        "--fusions",
        default="device",
        choices=("device", "off"),
        help="device: the fused kernels the device offers (common.device.backend), as training uses them; off: none",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default: all cores)")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the device's peak for MFU")
    p.add_argument(
        "--ckpt-dir", default=None, help="where the checkpoint is written (default: a temporary folder, removed)"
    )
    p.add_argument("--out", required=True, help="JSON report")
    p.add_argument("overrides", nargs="*", help="config key=value overrides")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# FLOPs (tools/recipe_budget.py's convention: forward 2*N per token, N = matmul weights including
# the output layer's V*h; attention 4*layers*ctx*h per token, ctx = the keys it is computed against:
# the padded length for a full forward (the local attention computes the whole masked s x s), the
# cache length in decode; forward + backward = 3x forward)


def matmul_params(arch: LlamaArch, *, reward: bool) -> int:
    h = arch.hidden_size
    kv = h // arch.num_attention_heads * arch.num_query_groups
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * arch.ffn_hidden_size
    return arch.num_layers * per_layer + (h if reward else arch.vocab_size * h)


def forward_flops(arch: LlamaArch, n_params: int, tokens: int, ctx_sum: int) -> float:
    """``tokens`` tokens whose key counts sum to ``ctx_sum``."""
    return 2.0 * n_params * tokens + 4.0 * arch.num_layers * arch.hidden_size * ctx_sum


def batch_forward_flops(arch: LlamaArch, n_params: int, batches) -> float:
    return sum(
        forward_flops(arch, n_params, int(b.total_len_B.sum()), int(b.total_len_B.sum()) * b.ids_BT.shape[1])
        for b in batches
    )


# ----------------------------------------------------------------------------------------------


class Phases:
    """Times each phase (device synchronised) and records its memory."""

    def __init__(self, device: Device):
        self.device, self.rows = device, {}

    def run(self, name: str, fn, flops_fn=None):
        d = self.device
        d.synchronize()
        d.reset_peak_memory()
        before = d.memory_allocated()
        start = time.perf_counter()
        out = fn()
        d.synchronize()
        seconds = time.perf_counter() - start
        row = {
            "seconds": round(seconds, 4),
            "memory": {"allocated_before": before, **d.peak_memory(), "allocated_after": d.memory_allocated()},
        }
        if flops_fn is not None:
            row["flops"] = flops_fn(out)
        self.rows[name] = row
        print(
            f"[device_check] {name:10s} {seconds:8.2f} s"
            + (f"  {row['flops'] / 1e12:8.2f} TFLOP" if "flops" in row else ""),
            flush=True,
        )
        return out


def param_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recipe_config(recipe: str, scale: str, device: str, overrides=()):
    """The recipe's config as a run reads it; at toy scale merged with its cpu_scale overlay and shortened."""
    recipe_dir = ROOT / "recipes" / recipe
    toy = scale == "toy"
    overrides = [f"training.device={device}"] + (TOY_OVERRIDES if toy else []) + list(overrides)
    return load_config(recipe_dir / "config.yaml", overrides, recipe_dir / "cpu_scale.yaml" if toy else None)


def start_device(cfg, threads: int) -> tuple[Device, torch.dtype]:
    """This process set up as a Ray worker sets up its own (environment before the first
    allocation, threads or current device), in a one-rank model-parallel world."""
    t = cfg.training
    device = resolve_device(t.device)
    for key, value in device.worker_env().items():
        os.environ.setdefault(key, value)
    device.setup_worker(threads)
    dtype = device.compute_dtype(t.dtype)
    from common.model import parallel

    parallel.init_model_parallel(
        rank=0, world_size=1, master_addr="127.0.0.1", master_port=free_port(), device=device,
        tensor_model_parallel_size=1, pipeline_model_parallel_size=1, seed=t.seed,
    )  # fmt: skip
    return device, dtype


def generation_rows(cfg, vocab_size: int, n_prompts: int, toy: bool):
    """Seeded random prompts of ordinary ids (lengths from half the prompt room to all of it; 8 to
    all of it at toy scale), each repeated n_samples_per_prompt times (row i*n + j = prompt i,
    sample j), with the sampling keys the recipes give those rows: (lengths, prompts, rows, keys)."""
    t, a = cfg.training, cfg.actor_rollout_ref.actor_rollout
    from common.generate.sampling import sample_key

    n = a.n_samples_per_prompt
    g = torch.Generator().manual_seed(t.seed)
    low = max(1, a.max_prompt_length // 2) if not toy else 8
    lengths = torch.randint(low, a.max_prompt_length + 1, (n_prompts,), generator=g).tolist()
    prompts = [torch.randint(0, min(PROMPT_ID_RANGE, vocab_size - 1), (k,), generator=g).tolist() for k in lengths]
    rows = [p for p in prompts for _ in range(n)]
    keys = [sample_key(t.seed, 1, i, j) for i in range(n_prompts) for j in range(n)]
    return lengths, prompts, rows, keys


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    toy = args.scale == "toy"
    cfg = recipe_config(args.recipe, args.scale, args.device, args.overrides)
    t, a, alg = cfg.training, cfg.actor_rollout_ref.actor_rollout, cfg.algorithm
    arch = LlamaArch(**OmegaConf.to_container(cfg.model))
    reward_arch = LlamaArch(**OmegaConf.to_container(cfg.reward.model)) if cfg.reward.model is not None else arch
    device, dtype = start_device(cfg, args.threads or os.cpu_count() or 1)

    from common.generate.generation import decode_mode, generate
    from common.model import parallel
    from common.model.llama import build_policy, build_reward_model
    from common.reward.forward import shared_prompt_scores
    from common.train.dpo import dpo_losses, microbatch_dpo_loss, pair_items, pair_sequences
    from common.train.optimizer import AdamSettings, build_actor_optimizer, train_step
    from common.train.pairs import apply_missing_eos_penalty, select_pairs
    from common.train.schedule import run_microbatches
    from common.train.sequences import (
        Sequence,
        collect_response_logps,
        collect_scores,
        has_eos,
        micro_batches,
        score_positions,
    )
    from common.weights.convert import load_checkpoint_into_model, save_checkpoint

    torch_device = device.torch_device()
    decode = decode_mode(a.decode, torch_device)
    fusions = device.megatron_fusions(dtype) if args.fusions == "device" else {}
    phases = Phases(device)
    n_samples, new_tokens = a.n_samples_per_prompt, max_new_tokens(cfg)
    stop_ids = LLAMA3_STOP_IDS if arch.vocab_size > max(LLAMA3_STOP_IDS) else [arch.vocab_size - 1]
    n_policy, n_reward = matmul_params(arch, reward=False), matmul_params(reward_arch, reward=True)
    print(
        f"[device_check] {device.kind} ({device.name()}), {t.dtype}, {args.recipe} {args.scale}: "
        f"{arch.num_layers} layers, hidden {arch.hidden_size}, vocab {arch.vocab_size}; fusions {fusions or 'none'}; "
        f"decode {decode}",
        flush=True,
    )

    # --- build ------------------------------------------------------------------------------
    def build():
        actor = build_policy(arch, dtype=dtype, seed=t.seed, device=torch_device)
        ref = build_policy(arch, dtype=dtype, seed=t.seed, device=torch_device)
        reward = build_reward_model(reward_arch, dtype=dtype, seed=t.seed + 1, device=torch_device)
        for model in (actor, ref, reward):
            apply_megatron_fusions(model, fusions)
        for model in (ref, reward):
            model.eval()
            model.requires_grad_(False)
        return actor, ref, reward

    actor, ref, reward = phases.run("build", build)
    weights = {"actor": param_bytes(actor), "ref": param_bytes(ref), "reward": param_bytes(reward)}

    # --- generate -----------------------------------------------------------------------------
    lengths, prompts, rows, keys = generation_rows(cfg, arch.vocab_size, args.prompts, toy)
    sample = dict(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, eos_token_ids=stop_ids, decode=decode)
    phases.run("warmup", lambda: generate(actor, rows[:2], max_new_tokens=4, sample_keys=keys[:2], **sample))

    def gen_flops(out):
        B, L = len(rows), max(lengths)
        steps = max(len(r) for r in out)  # rows that finished early still run every decode step
        prefill = forward_flops(arch, n_policy, sum(len(r) for r in rows), sum(len(r) for r in rows) * L)
        decode = sum(forward_flops(arch, n_policy, B, B * (L + s + 1)) for s in range(steps - 1))
        return prefill + decode

    responses = phases.run(
        "generate", lambda: generate(actor, rows, max_new_tokens=new_tokens, sample_keys=keys, **sample), gen_flops
    )
    generated = sum(len(r) for r in responses)
    seqs_PN = [
        [Sequence(prompts[i], responses[i * n_samples + j]) for j in range(n_samples)] for i in range(args.prompts)
    ]
    flat = [s for row in seqs_PN for s in row]

    # --- reward -------------------------------------------------------------------------------
    positions = score_positions(flat, set(stop_ids), cfg.reward.score_position).tolist()
    reward_batches = micro_batches(flat, 2 * cfg.reward.micro_batch_size, torch_device, {"pos": positions})
    reward_flops = batch_forward_flops(reward_arch, n_reward, reward_batches)
    scores = phases.run(
        "reward", lambda: shared_prompt_scores(reward, flat, positions, 2 * cfg.reward.micro_batch_size), lambda _: reward_flops,
    )  # fmt: skip
    stats = phases.run(
        "reward_full", lambda: run_microbatches(reward, reward_batches, collect_scores, forward_only=True, output="scores"),
        lambda _: reward_flops,
    )  # fmt: skip
    scores_full = torch.tensor([x for s in stats for x in s["scores"].cpu().tolist()])
    scores_PN = torch.tensor(scores).view(args.prompts, n_samples)
    has_eos_PN = torch.tensor([[has_eos(s.response_ids, set(stop_ids)) for s in row] for row in seqs_PN])
    pairs = select_pairs(apply_missing_eos_penalty(scores_PN, has_eos_PN, a.missing_eos_penalty))
    chosen = [row[int(c)] for row, c in zip(seqs_PN, pairs.chosen_P)]
    rejected = [row[int(r)] for row, r in zip(seqs_PN, pairs.rejected_P)]

    # --- reference (twice) --------------------------------------------------------------------
    ref_seqs = [
        s for c, r in zip(chosen, rejected) for s in (c, r)
    ]  # the loop's layout (common.run.rollout.reference_logps)
    ref_batches = micro_batches(ref_seqs, 2 * role_section(cfg, "ref").micro_batch_size, torch_device)

    def ref_logps():
        with torch.no_grad():
            out = run_microbatches(ref, ref_batches, collect_response_logps, forward_only=True)
        return torch.cat([s["logps"].float().cpu() for s in out])

    ref_flops = batch_forward_flops(arch, n_policy, ref_batches)
    first = phases.run("reference", ref_logps, lambda _: ref_flops)
    second = phases.run("reference2", ref_logps, lambda _: ref_flops)
    ref_chosen, ref_rejected = first[0::2].tolist(), first[1::2].tolist()

    # --- optimizer + one DPO step ---------------------------------------------------------------
    settings = AdamSettings(**{f: a[f] for f in AdamSettings.__dataclass_fields__})
    total_steps = t.train_iters * optimizer_steps_per_iter(cfg)
    model, optimizer, scheduler = phases.run(
        "optimizer", lambda: build_actor_optimizer(actor, settings, dtype=dtype, total_steps=total_steps)
    )
    items = pair_items(chosen, rejected, ref_chosen, ref_rejected)
    seqs, refs = pair_sequences(items, a.micro_batch_size)
    train_batches = micro_batches(seqs, 2 * a.micro_batch_size, torch_device, {"ref": refs})
    loss_fn = microbatch_dpo_loss(beta=alg.beta, loss_type=alg.loss_type)
    ref_c, ref_r = torch.tensor(ref_chosen), torch.tensor(ref_rejected)

    def dpo_loss(stats) -> float:
        pc = torch.cat([s["chosen"].float().cpu() for s in stats])
        pr = torch.cat([s["rejected"].float().cpu() for s in stats])
        return dpo_losses(pc, pr, ref_c, ref_r, beta=alg.beta, loss_type=alg.loss_type).mean().item()

    train_fwd = batch_forward_flops(arch, n_policy, train_batches)
    grad_norm, stats = phases.run(
        "train", lambda: train_step(model, optimizer, scheduler, train_batches, loss_fn), lambda _: 3 * train_fwd
    )
    loss_step1 = dpo_loss(stats)
    # a second step: the first one's forward and backward ran before Adam's moments existed (the
    # optimizer allocates them in its first step), so only from step 2 on does the backward's peak
    # hold the whole optimizer state, as every later step of a run does; and its time is a warm step's
    grad_norm2, _ = phases.run(
        "train2", lambda: train_step(model, optimizer, scheduler, train_batches, loss_fn), lambda _: 3 * train_fwd
    )

    def forward_loss():
        with torch.no_grad():
            return run_microbatches(model, train_batches, loss_fn, forward_only=True)

    loss_after = dpo_loss(phases.run("after", forward_loss, lambda _: train_fwd))
    optimizer_info = describe_optimizer(optimizer)

    # --- checkpoint save + load -------------------------------------------------------------------
    ckpt_root = Path(args.ckpt_dir) if args.ckpt_dir else Path(tempfile.mkdtemp(prefix="device_check_"))
    ckpt = ckpt_root / "actor"
    phases.run("save", lambda: save_checkpoint(actor, ckpt, arch))
    ckpt_bytes = sum(f.stat().st_size for f in ckpt.iterdir())
    phases.run("load", lambda: load_checkpoint_into_model(ref, ckpt, arch))
    roundtrip = all(torch.equal(p, q) for p, q in zip(actor.parameters(), ref.parameters()))
    if not args.ckpt_dir:
        import shutil

        shutil.rmtree(ckpt_root)

    # --- report -------------------------------------------------------------------------------
    peak, peak_source = (args.peak_tflops * 1e12, "--peak-tflops") if args.peak_tflops else device.peak_flops(dtype)
    for row in phases.rows.values():
        if "flops" in row:
            row["tflop_per_s"] = round(row["flops"] / row["seconds"] / 1e12, 4)
            row["mfu"] = round(row["flops"] / row["seconds"] / peak, 5) if peak else None
    timed = [r for n, r in phases.rows.items() if "flops" in r]
    total_flops, total_secs = sum(r["flops"] for r in timed), sum(r["seconds"] for r in timed)
    repeat_diff = float((first - second).abs().max())
    repeat_tol = REPEAT_RTOL[dtype] * float(first.abs().max())
    shared_diff = float((scores_PN.flatten() - scores_full).abs().max())
    shared_tol = SHARED_RTOL[dtype] * max(1.0, float(scores_full.abs().max()))
    checks = {
        "reward_shared_equals_full": {"max_abs_diff": shared_diff, "tolerance": shared_tol, "ok": shared_diff <= shared_tol},
        "step1_loss_ln2": {"value": loss_step1, "expected": math.log(2), "tolerance": LOSS_TOLERANCE[dtype],
                           "ok": abs(loss_step1 - math.log(2)) <= LOSS_TOLERANCE[dtype]},
        "repeat_forward": {"max_abs_diff": repeat_diff, "tolerance": repeat_tol, "ok": repeat_diff <= repeat_tol},
        "loss_after_step_finite": {"value": loss_after, "ok": math.isfinite(loss_after)},
        # None: the fp16 optimizer skipped the step (its gradients overflowed at the first loss scale)
        "grad_norm_finite": {"value": grad_norm, "ok": grad_norm is not None and math.isfinite(grad_norm) and grad_norm > 0,
                             "step2": grad_norm2},  # step 2 not checked: fp16 may skip it (an overflow), by design
        "checkpoint_roundtrip": {"bytes": ckpt_bytes, "ok": roundtrip},
    }  # fmt: skip
    if dtype != torch.float32:  # half-precision weights train through fp32 main copies
        checks["mixed_precision_main_params"] = {
            **{k: optimizer_info[k] for k in ("adam_params", "fp32_main_params", "params_equal_rounded_main")},
            "ok": 0 < optimizer_info["fp32_main_params"] == optimizer_info["adam_params"]
            and optimizer_info["params_equal_rounded_main"],
        }
    report = {
        "tool": "bench/device_check.py",
        "argv": sys.argv[1:] if argv is None else argv,
        "git": git_commit(),
        "environment": {
            "python": platform.python_version(), "torch": torch.__version__, "megatron_core": _megatron_version(),
            "host": platform.node(), **device.environment(),
            "ray_imported": "ray" in sys.modules,  # must stay False: the GPU machines have no Ray
        },
        "device": {"kind": device.kind, "name": device.name(), "total_memory": device.total_memory(),
                   "peak_flops": peak, "peak_source": peak_source},
        "workload": {
            "recipe": args.recipe, "scale": args.scale, "dtype": t.dtype, "arch": OmegaConf.to_container(cfg.model),
            "prompts": args.prompts, "samples_per_prompt": n_samples, "max_new_tokens": new_tokens,
            "prompt_lengths": lengths, "micro_batch_pairs": a.micro_batch_size, "fusions": fusions,
            "decode": decode,
            "params": {k: v // dtype.itemsize for k, v in weights.items()},
        },
        "generation": {"rows": len(rows), "generated_tokens": generated,
                       "tokens_per_s": round(generated / phases.rows["generate"]["seconds"], 2),
                       "rows_with_eos": int(has_eos_PN.sum())},
        "phases": phases.rows,
        "mfu_overall": round(total_flops / total_secs / peak, 5) if peak else None,
        # the whole check's peak: allocator bytes on an accelerator (all three models on one device), RSS on CPU
        "peak_memory": max(r["memory"].get("max_allocated", r["memory"].get("max_rss")) for r in phases.rows.values()),
        "memory_per_role": role_memory(phases.rows, weights),
        "optimizer": optimizer_info,
        "weights_bytes": weights,
        "checks": checks,
        "ok": all(c["ok"] for c in checks.values()),
    }  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_summary(report)
    parallel.destroy_model_parallel()
    return 0 if report["ok"] else 1


def describe_optimizer(optimizer) -> dict:
    """What Megatron built for the actor: its optimizer classes, whether torch's fused Adam kernel
    runs, and, for half-precision weights (``Float16OptimizerWithFloat16Params``), how many fp32
    main parameters it keeps and whether every model weight equals its main parameter rounded to
    the weight's dtype after the step (Megatron copies them back after each step)."""
    from common.train.optimizer import loss_scale

    chained = getattr(optimizer, "chained_optimizers", [optimizer])
    pairs = [
        (weight, main)
        for o in chained
        for weights, mains in zip(getattr(o, "float16_groups", []), getattr(o, "fp32_from_float16_groups", []))
        for weight, main in zip(weights, mains)
    ]
    return {
        "classes": sorted({type(o).__name__ for o in chained}),
        "fused_adam": all(g.get("fused", False) for o in chained for g in o.optimizer.param_groups),
        "adam_params": sum(len(g["params"]) for o in chained for g in o.optimizer.param_groups),
        "loss_scale": loss_scale(optimizer),  # after the step; fp16's dynamic scale, else 1
        "fp32_main_params": sum(main.dtype == torch.float32 for _, main in pairs),
        "params_equal_rounded_main": all(torch.equal(w.detach(), m.detach().to(w.dtype)) for w, m in pairs),
    }


def role_memory(rows: dict, weights: dict) -> dict | None:
    """Peak bytes each recipe role would hold on its own device, from the phases run here on one
    device: the phase's peak minus the other models' weights (the only other tensors alive then).
    None on CPU (no allocator counter)."""
    if rows["build"]["memory"].get("max_allocated") is None:
        return None
    others = lambda *names: sum(weights[n] for n in names)  # noqa: E731
    train_peak = max(rows[name]["memory"]["max_allocated"] for name in ("optimizer", "train", "train2"))
    return {
        "actor_rollout": train_peak - others("ref", "reward"),
        "rollout": rows["generate"]["memory"]["max_allocated"] - others("ref", "reward"),
        "ref": rows["reference"]["memory"]["max_allocated"] - others("actor", "reward"),
        "reward": rows["reward"]["memory"]["max_allocated"] - others("actor", "ref"),
    }


def _megatron_version() -> str:
    import megatron.core

    return megatron.core.__version__


def print_summary(r: dict) -> None:
    print(
        f"[device_check] device {r['device']['name']} ({r['device']['kind']}), peak {_fmt_peak(r['device']['peak_flops'])} ({r['device']['peak_source']})"
    )
    print(
        f"[device_check] generation: {r['generation']['generated_tokens']} tokens, {r['generation']['tokens_per_s']:.1f} tokens/s"
    )
    for name, row in r["phases"].items():
        mem = row["memory"]
        peak = mem.get("max_allocated", mem.get("max_rss"))
        mfu = f"  MFU {row['mfu']:.1%}" if row.get("mfu") is not None else ""
        print(f"[device_check]   {name:10s} {row['seconds']:8.3f} s  peak {peak / GIB:7.2f} GiB{mfu}")
    if r["memory_per_role"]:
        print(
            "[device_check] memory per role: "
            + ", ".join(f"{k} {v / GIB:.2f} GiB" for k, v in r["memory_per_role"].items())
        )
    print(f"[device_check] peak memory of the whole check: {r['peak_memory'] / GIB:.2f} GiB")
    if r["mfu_overall"] is not None:
        print(f"[device_check] MFU over the timed phases: {r['mfu_overall']:.1%}")
    o = r["optimizer"]
    print(
        f"[device_check] optimizer {', '.join(o['classes'])}, fused Adam {o['fused_adam']}, fp32 main params {o['fp32_main_params']}"
    )
    for name, c in r["checks"].items():
        print(
            f"[device_check] check {name}: {'ok' if c['ok'] else 'FAILED'}  {json.dumps({k: v for k, v in c.items() if k != 'ok'})}"
        )
    print(f"[device_check] {'ALL CHECKS PASSED' if r['ok'] else 'SOME CHECKS FAILED'}", flush=True)


def _fmt_peak(flops: float | None) -> str:
    return "unknown" if flops is None else f"{flops / 1e12:.1f} TFLOP/s"


if __name__ == "__main__":
    sys.exit(main())
