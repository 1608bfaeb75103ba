"""Budget of a recipe at its frozen config: device layout, parameters, memory per device, FLOPs per iteration.

    .venv/bin/python -m tools.recipe_budget llama32_1b llama3_8b > docs/recipe_budget.md
    .venv/bin/python -m tools.recipe_budget llama32_1b llama3_8b --measured docs/device/<file>.json > docs/recipe_budget.md

``--measured FILE`` (repeatable): a report of ``bench/device_check.py`` at full scale; its per-role peak
memory (allocator peak of each role's phase on the device, minus the other models' weights) fills the
"measured by device_check" column of its recipe's memory table. Without one the column says "not
measured yet": no number there is ever an estimate.

Reads only ``recipes/<name>/config.yaml`` through ``common.config.load`` (omegaconf, no torch) and prints markdown
with the arithmetic of every number. Memory figures are estimates; their byte budgets follow the code:
common/cluster/workers.py (DDP grad_reduce_in_fp32=True, Megatron mixed-precision Adam, no distributed optimizer),
common/generate/generation.py (static KV cache of the whole batch, gathered prefill logits), common/model/llama.py (local,
unfused attention layer spec; vocabulary padded to a multiple of 128 * TP).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from common.config.load import load_config
from common.config.roles import data_parallel_size, max_new_tokens, role_devices, role_parallel_sizes, roles_in_use

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ".venv/bin/python -m tools.recipe_budget"
GIB = 1024**3
DEVICES_PER_NODE = 8
VOCAB_PAD_MULTIPLE = 128
DEVICE_MEMORY_GIB = {"Ascend 910B": 64, "A100/H100": 80}
ASSUMED_TFLOPS = 100  # sustained bf16 TFLOP/s per device: an assumption, for the illustration line only
A100_BF16_PEAK_TFLOPS = 312  # A100 dense bf16 tensor-core peak (spec sheet)
ROLE_TEXT = {
    "actor_rollout": "actor training",
    "rollout": "actor generating",
    "ref": "reference",
    "reward": "reward model",
}
FLOP_CONVENTION = (
    "Convention: forward = 2*N FLOPs per token, forward+backward = 6*N, where N counts every matmul weight: the "
    "non-embedding parameters plus the output layer's V*h (also when it is tied to the embedding; the embedding lookup "
    "and the norms count as free). Attention adds 2*2*layers*ctx*h FLOPs per token forward (QK^T and AV over ctx keys; "
    "x3 with backward). The local (unfused) attention computes the full masked s x s scores, so ctx is the full "
    "length, except in decode (mean context). Every sequence is taken at its maximum length.\n"
)


@dataclass(frozen=True)
class Arch:
    layers: int
    h: int
    ffn: int
    heads: int
    groups: int
    vocab: int
    tied: bool

    @property
    def layer(self) -> int:  # q, o: h*h; k, v: h*(head_dim*groups); SwiGLU gate, up, down; two RMSNorm weights
        return (
            2 * self.h * self.h + 2 * self.h * (self.h // self.heads * self.groups) + 3 * self.h * self.ffn + 2 * self.h
        )

    @property
    def trunk(self) -> int:  # decoder layers + final norm: the non-embedding parameters
        return self.layers * self.layer + self.h

    @property
    def embedding(self) -> int:
        return self.vocab * self.h

    @property
    def policy(self) -> int:
        return self.embedding + self.trunk + (0 if self.tied else self.embedding)

    @property
    def reward(self) -> int:  # the same trunk with a hidden -> 1 head instead of the output layer
        return self.embedding + self.trunk + self.h


def arch_of(cfg: DictConfig) -> Arch:
    m = cfg.model
    return Arch(
        m.num_layers,
        m.hidden_size,
        m.ffn_hidden_size,
        m.num_attention_heads,
        m.num_query_groups,
        m.vocab_size,
        m.tie_word_embeddings,
    )


def n(x: float) -> str:
    return f"{int(x):,}"


def gib(x: float) -> str:
    return f"{x / GIB:.2f} GiB"


def code(lines: list[str]) -> str:
    return "```\n" + "\n".join(lines) + "\n```\n"


def weight_bytes(dtype: str) -> int:
    return 4 if dtype == "fp32" else 2


def train_bytes(dtype: str) -> dict[str, int]:
    """Bytes per parameter on the actor's training ranks (common/cluster/workers.py)."""
    if dtype == "fp32":
        return {"fp32 weight": 4, "fp32 grad buffer": 4, "Adam m+v fp32": 8}
    return {f"{dtype} weight": 2, "fp32 main param": 4, "fp32 grad buffer, grad_reduce_in_fp32": 4, "Adam m+v fp32": 8}


def layout(cfg: DictConfig) -> str:
    """Roles fill nodes of DEVICES_PER_NODE devices in placement order (common/cluster/placement.py)."""
    out, start = ["| role | devices | TP x PP x DP | node |", "|---|---|---|---|"], 0
    for role in roles_in_use(cfg):
        devices, (tp, pp) = role_devices(cfg, role), role_parallel_sizes(cfg, role)
        first, last = start // DEVICES_PER_NODE, (start + devices - 1) // DEVICES_PER_NODE
        node = str(first) if first == last else f"{first}-{last}"
        out.append(
            f"| {role}: {ROLE_TEXT[role]} | {devices} | {tp} x {pp} x {data_parallel_size(cfg, role)} | {node} |"
        )
        start += devices
    nodes = (start - 1) // DEVICES_PER_NODE + 1
    return (
        "\n".join(out)
        + f"\n\n{start} devices on {nodes} node(s) of up to {DEVICES_PER_NODE}, filled in the order above.\n"
    )


def params(a: Arch) -> str:
    layers = a.layers * a.layer
    output = "0 (tied with the embedding)" if a.tied else f"V*h = {n(a.embedding)}"
    return code(
        [
            f"embedding     V*h = {a.vocab}*{a.h} = {n(a.embedding)}",
            "per layer     q h*h + k,v 2*h*(h/heads*groups) + o h*h + MLP 3*h*ffn + norms 2*h",
            f"            = {a.h}*{a.h} + 2*{a.h}*({a.h}/{a.heads}*{a.groups}) + {a.h}*{a.h} + 3*{a.h}*{a.ffn} + 2*{a.h}"
            f" = {n(a.layer)}",
            f"layers        {a.layers} * {n(a.layer)} = {n(layers)}",
            f"final norm    h = {a.h}",
            f"output layer  {output}",
            f"policy        {n(a.embedding)} + {n(layers)} + {a.h} + {0 if a.tied else n(a.embedding)}"
            f" = {n(a.policy)} ({a.policy:.4g})",
            f"reward model  embedding + layers + final norm + head h*1 = {n(a.embedding)} + {n(layers)} + {a.h} + {a.h}"
            f" = {n(a.reward)} ({a.reward:.4g})",
        ]
    )


def stage_params(a: Arch, pp: int, stage: int, reward: bool = False) -> int:
    """One pipeline stage: the embedding on the first, final norm + output layer (or scalar head) on the
    last; a tied output layer is a second copy of the embedding when PP > 1."""
    p = a.layers // pp * a.layer + (a.embedding if stage == 0 else 0)
    if stage == pp - 1:
        p += a.h + (a.h if reward else 0 if a.tied and pp == 1 else a.embedding)
    return p


def layer_activations(b: int, s: int, a: Arch, tp: int) -> tuple[str, int]:
    """Korthikanti et al. 2022: bf16, no recompute, no sequence parallel, unfused attention."""
    text = f"s*b*h*(10 + 24/t + 5*heads*s/(h*t)) = {s}*{b}*{a.h}*(10 + 24/{tp} + 5*{a.heads}*{s}/({a.h}*{tp}))"
    return text, int(s * b * a.h * (10 + 24 / tp + 5 * a.heads * s / (a.h * tp)))


def actor_memory(cfg: DictConfig, a: Arch, tp: int, pp: int, dp: int, v: int) -> tuple[list[str], int]:
    t, actor = cfg.training, cfg.actor_rollout_ref.actor_rollout
    budget, s = train_bytes(t.dtype), t.seq_length
    per, b = sum(budget.values()), 2 * actor.micro_batch_size
    micro = actor.ppo_mini_batch_size // (dp * actor.micro_batch_size)
    act_text, act = layer_activations(b, s, a, tp)
    lines = [
        f"bytes/param = {' + '.join(f'{x} ({k})' for k, x in budget.items())} = {per}",
        f"micro-batch = 2*micro_batch_size = {b} sequences of {s} tokens; {micro} micro-batch(es) per optimizer step",
        f"one layer's activations ~ {act_text} = {gib(act)} (estimate)",
    ]
    totals = []
    for stage in range(pp):
        sp, in_flight = stage_params(a, pp, stage), min(pp - stage, micro)  # 1F1B: stage k holds pp - k in flight
        logits = b * s * v // tp * 4 if stage == pp - 1 else 0
        totals.append(sp // tp * per + in_flight * a.layers // pp * act + logits)
        lines += [
            f"stage {stage} of {pp}: params {n(sp)}/TP {tp} * {per} B = {gib(sp // tp * per)}",
            f"  + activations {in_flight} micro-batch(es) in flight * {a.layers // pp} layers = "
            f"{gib(in_flight * a.layers // pp * act)}",
        ]
        if logits:
            lines.append(
                f"  + logits fp32 2*mbs*s*V/TP*4 = {b}*{s}*{v}/{tp}*4 = {gib(logits)}"
                " (kept for backward; the bf16 logits add 50% transiently)"
            )
        lines.append(f"  = {gib(totals[-1])}")
    return lines + [f"largest: stage {totals.index(max(totals))}"], max(totals)


def rollout_memory(cfg: DictConfig, a: Arch, tp: int, dp: int, v: int) -> tuple[list[str], int]:
    t, actor = cfg.training, cfg.actor_rollout_ref.actor_rollout
    wb, s, lp, head_dim = weight_bytes(t.dtype), t.seq_length, actor.max_prompt_length, a.h // a.heads
    rows = t.global_batch_size // dp * actor.n_samples_per_prompt
    weights, prefill = a.policy * wb // tp, rows * lp * v * 2
    kv = a.layers * 2 * (a.groups // tp) * head_dim * rows * s * 2
    return [
        f"weights {t.dtype}: {n(a.policy)}*{wb}/TP {tp} = {gib(weights)}",
        f"rows = gbs/DP * n = {t.global_batch_size}/{dp} * {actor.n_samples_per_prompt} = {rows}",
        f"KV cache = layers*2*(groups/TP)*head_dim*rows*seq*2 = {a.layers}*2*({a.groups}/{tp})*{head_dim}*{rows}*{s}*2"
        f" = {gib(kv)}",
        f"prefill logits (gathered, bf16, transient) = rows*max_prompt*V*2 = {rows}*{lp}*{v}*2 = {gib(prefill)}",
    ], weights + kv + prefill


def forward_memory(cfg: DictConfig, a: Arch, role: str, tp: int, pp: int, dp: int, v: int) -> tuple[list[str], int]:
    """Reference or reward model: weights + one micro-batch's forward without grad."""
    t, ref, wb, s = cfg.training, role == "ref", weight_bytes(cfg.training.dtype), cfg.training.seq_length
    mbs = (cfg.actor_rollout_ref.ref if ref else cfg.reward).micro_batch_size
    samples = 2 if ref else cfg.actor_rollout_ref.actor_rollout.n_samples_per_prompt  # ref: chosen + rejected
    per_rank = t.global_batch_size * samples // dp
    b = min(2 * mbs, per_rank)
    sp = max(stage_params(a, pp, k, reward=not ref) for k in range(pp))
    act_text, act = layer_activations(b, s, a, tp)
    out = b * s * v // tp * 4 if ref else b * s * 4
    what = f"logits fp32 b*s*V/TP*4 = {b}*{s}*{v}/{tp}*4" if ref else f"scores fp32 b*s*4 = {b}*{s}*4"
    return [
        f"weights {t.dtype}: {n(sp)}{' (largest stage)' if pp > 1 else ''} / TP {tp} * {wb} = {gib(sp * wb // tp)}",
        f"b = min(2*micro_batch_size, sequences per rank) = min({2 * mbs}, {per_rank}) = {b}",
        f"{what} = {gib(out)}",
        f"one layer's working set (rough) ~ {act_text} = {gib(act)}",
    ], sp * wb // tp + out + act


def load_measured(paths: list[str]) -> dict[str, dict]:
    """device_check reports by recipe name (full scale only: toy-scale figures say nothing about a recipe)."""
    out = {}
    for path in paths:
        report = json.loads(Path(path).read_text())
        if report.get("tool") != "bench/device_check.py" or "memory_per_role" not in report:
            raise SystemExit(f"--measured {path}: not a bench/device_check.py report")
        w = report["workload"]
        if w["scale"] != "full":
            raise SystemExit(f"--measured {path}: a {w['scale']}-scale run; only full-scale runs measure a recipe")
        if report["memory_per_role"] is None:
            raise SystemExit(f"--measured {path}: ran on {report['device']['kind']}, which has no allocator counters")
        out[w["recipe"]] = {**report, "path": str(path)}
    return out


def measured_note(m: dict) -> str:
    w, d = m["workload"], m["device"]
    return (
        f"Measured by `bench/device_check.py` (`{m['path']}`): {d['name']}, "
        f"{w['dtype']}, {w['prompts']} prompts x {w['samples_per_prompt']} samples (the generating role's rows and "
        f"prefill logits scale with the prompts per rank), micro-batches of {2 * w['micro_batch_pairs']} sequences, "
        f"fusions {w['fusions'] or 'none'}, commit {m['git']['commit'] or 'unknown'}"
        f"{' with uncommitted changes' if m['git'].get('dirty') else ''}. Each role's peak is the allocator's "
        "peak during that role's phase minus the other models' weights (all roles ran on one device); the runtime's own "
        "context and fragmentation are not in it (the reserved peak of each phase is in the JSON)."
        + (
            ""
            if "train2" in m["phases"]
            else " This report ran one DPO step only, whose forward and backward came before the optimizer allocated Adam's "
            "moments: the actor's figure lacks the activations that every later step holds on top of them (reports "
            "with a second step, `train2`, have them)."
        )
        + "\n"
    )


def memory(cfg: DictConfig, a: Arch, measured: dict | None = None) -> str:
    out = []
    table = [
        "| role | per device | "
        + " | ".join(f"of {k} {g} GiB" for k, g in DEVICE_MEMORY_GIB.items())
        + " | measured by device_check |",
        "|---" * (3 + len(DEVICE_MEMORY_GIB)) + "|",
    ]
    for role in roles_in_use(cfg):
        (tp, pp), dp = role_parallel_sizes(cfg, role), data_parallel_size(cfg, role)
        v = -(-a.vocab // (VOCAB_PAD_MULTIPLE * tp)) * VOCAB_PAD_MULTIPLE * tp
        if role == "actor_rollout":
            lines, total = actor_memory(cfg, a, tp, pp, dp, v)
        elif role == "rollout":
            lines, total = rollout_memory(cfg, a, tp, dp, v)
        else:
            lines, total = forward_memory(cfg, a, role, tp, pp, dp, v)
        out.append(
            f"**{role}** ({ROLE_TEXT[role]}, TP {tp} x PP {pp} x DP {dp})\n\n"
            + code(lines + [f"TOTAL per device ~ {gib(total)}"])
        )
        got = measured["memory_per_role"].get(role) if measured and tp * pp == 1 else None
        missing = (
            "not measured yet" if tp * pp == 1 else f"not measured yet (TP {tp} x PP {pp}: beyond the one-device check)"
        )
        table.append(
            f"| {role} | {gib(total)} | "
            + " | ".join(f"{total / GIB / g:.0%}" for g in DEVICE_MEMORY_GIB.values())
            + f" | {gib(got) if got is not None else missing} |"
        )
    note = "Not counted: the runtime's own context, allocator fragmentation (typically 1-3 GiB) and communication buffers.\n"
    note += (
        measured_note(measured)
        if measured
        else (
            "Measured column: `bench/device_check.py` on a device, fed back with `--measured FILE`; no run has been recorded.\n"
        )
    )
    return "\n".join(out) + "\n" + "\n".join(table) + "\n\n" + note


def flops(cfg: DictConfig, a: Arch) -> str:
    t, actor = cfg.training, cfg.actor_rollout_ref.actor_rollout
    s, gbs, ns, lp, new = (
        t.seq_length,
        t.global_batch_size,
        actor.n_samples_per_prompt,
        actor.max_prompt_length,
        max_new_tokens(cfg),
    )
    n_pol, n_rew, ctx = a.trunk + a.embedding, a.trunk + a.h, lp + new / 2
    gen = "rollout" if "rollout" in roles_in_use(cfg) else "actor_rollout"
    L, h = a.layers, a.h
    phases = [  # (phase, role whose devices run it, tokens, FLOPs per token, arithmetic)
        (
            "generation prefill",
            gen,
            gbs * ns * lp,
            2 * n_pol + 4 * L * lp * h,
            f"gbs*n*max_prompt = {gbs}*{ns}*{lp} tokens * (2*N_policy + 4*{L}*{lp}*{h})",
        ),
        (
            "generation decode",
            gen,
            gbs * ns * new,
            2 * n_pol + 4 * L * ctx * h,
            f"gbs*n*max_new = {gbs}*{ns}*{new} tokens * (2*N_policy + 4*{L}*{ctx:g}*{h})",
        ),
        (
            "reward forward",
            "reward",
            gbs * ns * s,
            2 * n_rew + 4 * L * s * h,
            f"gbs*n*seq = {gbs}*{ns}*{s} tokens * (2*N_reward + 4*{L}*{s}*{h})",
        ),
        (
            "reference forward",
            "ref",
            2 * gbs * s,
            2 * n_pol + 4 * L * s * h,
            f"2*gbs*seq = 2*{gbs}*{s} tokens * (2*N_policy + 4*{L}*{s}*{h})",
        ),
        (
            "actor fwd+bwd",
            "actor_rollout",
            actor.ppo_epochs * 2 * gbs * s,
            6 * n_pol + 3 * 4 * L * s * h,
            f"ppo_epochs*2*gbs*seq = {actor.ppo_epochs}*2*{gbs}*{s} tokens * (6*N_policy + 3*4*{L}*{s}*{h})",
        ),
    ]
    lines = [
        f"N_policy = non-embedding params + output-layer matmul V*h = {n(a.trunk)} + {n(a.embedding)} = {n(n_pol)}",
        f"N_reward = non-embedding params + scalar head h = {n(a.trunk)} + {h} = {n(n_rew)}",
    ]
    total, times = 0.0, []
    for phase, role, tokens, per_token, text in phases:
        f, devices = tokens * per_token, role_devices(cfg, role)
        total += f
        lines.append(
            f"{phase:19s} {text}\n{'':19s} = {n(tokens)} * {per_token:.4g} = {f / 1e12:.2f} TFLOP   "
            f"({role}, {devices} device(s))"
        )
        times.append(f"{phase} {f / (devices * ASSUMED_TFLOPS * 1e12) * 1e3:.0f} ms")
    lines.append(f"TOTAL per iteration = {total / 1e12:.2f} TFLOP")
    step = a.policy * weight_bytes(t.dtype) / role_parallel_sizes(cfg, "rollout")[0]
    return (
        FLOP_CONVENTION
        + "\n"
        + code(lines)
        + "\n"
        + (
            f"*Illustration, not a measurement:* at an assumed {ASSUMED_TFLOPS} TFLOP/s sustained per device "
            f"({ASSUMED_TFLOPS / A100_BF16_PEAK_TFLOPS:.0%} MFU of an A100's {A100_BF16_PEAK_TFLOPS} TFLOP/s dense bf16 peak), "
            f"each phase on its role's devices: {'; '.join(times)}. Decode is bound by memory bandwidth, not FLOPs: each of "
            f"its {new} steps reads all weights of a generating rank, {new} * {gib(step)} = {gib(new * step)} per iteration.\n"
        )
    )


def report(name: str, measured: dict | None = None) -> str:
    cfg = load_config(ROOT / "recipes" / name / "config.yaml")
    t, actor, a = cfg.training, cfg.actor_rollout_ref.actor_rollout, arch_of(cfg)
    assumed = (
        "" if cfg.reward.model is not None else " (reward model loaded from reward.load: same architecture assumed)"
    )
    return "\n".join(
        [
            f"## {name}\n",
            f"dtype {t.dtype}; global_batch_size {t.global_batch_size} prompts x n_samples_per_prompt "
            f"{actor.n_samples_per_prompt}; seq_length {t.seq_length} = max_prompt_length {actor.max_prompt_length} + "
            f"max_new_tokens {max_new_tokens(cfg)}.\n",
            "### Devices and layout\n",
            layout(cfg),
            f"### Parameters{assumed}\n",
            params(a),
            "### Memory per device (estimate)\n",
            memory(cfg, a, measured),
            "### FLOPs per iteration\n",
            flops(cfg, a),
        ]
    )


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog=COMMAND, description="recipe budget as markdown (folders under recipes/)")
    p.add_argument("recipes", nargs="+")
    p.add_argument(
        "--measured", action="append", default=[], metavar="FILE", help="a full-scale bench/device_check.py report"
    )
    args = p.parse_args(argv)
    measured = load_measured(args.measured)
    flags = "".join(f" --measured {m}" for m in args.measured)
    print(f"<!-- written by: {COMMAND} {' '.join(args.recipes)}{flags} -->")
    print("# Recipe budget\n")
    print(
        "Per recipe: device layout, parameter count, memory per device and FLOPs per iteration, computed from the "
        "frozen `config.yaml` with the arithmetic shown. Memory figures are estimates, next to the device check's "
        "measurements where one was recorded; GiB = 2^30 bytes.\n"
    )
    print("\n".join(report(name, measured.get(name)) for name in args.recipes))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
