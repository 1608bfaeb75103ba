"""The BENCH CONFIG (../shared/spec/bench.md) as both sides of bench/vs_trl.py need it.

The project side is ``./run.sh tiny --overlay bench`` (recipes/tiny/bench.yaml holds the same
numbers); TRL's side builds Hugging Face models of the same shapes from the constants here.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_MT_BENCH = Path("shared") / "datasets" / "mt_bench" / "question.jsonl"
# beside the checkout on development and CI machines only (../shared/datasets; a git worktree
# deeper down finds it in the nearest folder above that has it)
DEFAULT_PROMPTS = next((d / _MT_BENCH for d in ROOT.parents if (d / _MT_BENCH).is_file()), ROOT.parent / _MT_BENCH)
TOKENIZER = ROOT / "assets" / "llama3_tokenizer"

ARCH = dict(
    num_layers=4, hidden_size=256, ffn_hidden_size=1024, num_attention_heads=8, num_query_groups=4,
    vocab_size=128256, max_position_embeddings=1024, rope_theta=500000.0,
)  # fmt: skip
PROMPTS_PER_ITER = 8
SAMPLES = 2
NEW_TOKENS = 64
MAX_LENGTH = 512  # prompt + response (TRL's default max_length); longer prompts are left out on both sides
TEMPERATURE, TOP_P, TOP_K = 0.9, 1.0, 0
BETA, LR, MISSING_EOS_PENALTY, MAX_GRAD_NORM = 0.1, 5e-7, 1.0, 1.0
POLICY_SEED, REWARD_SEED = 0, 1
THREADS = 2  # CPU threads in total on each side


def read_prompts(path: Path) -> list[str]:
    """Prompt texts of a JSONL file: MT-Bench rows (``turns``: the first turn), ``prompt`` strings or
    ``question`` strings (GSM8K)."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(
            f"error: prompt file {path} not found. The default is MT-Bench's question.jsonl in "
            f"../shared/datasets/mt_bench/ beside the checkout (development machines only); pass "
            '--prompts FILE.jsonl with one {"prompt": text} (or "question", or MT-Bench\'s "turns") per line'
        )
    prompts = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        text = row["turns"][0] if "turns" in row else row.get("prompt", row.get("question"))
        if not isinstance(text, str) or not text:
            raise SystemExit(f"error: {path}:{n}: no 'turns' list and no 'prompt' or 'question' string")
        prompts.append(text)
    return prompts


def fitting_prompts(prompts: list[str], tok) -> tuple[list[str], list[int]]:
    """The prompts whose chat-template rendering leaves room for NEW_TOKENS, and their lengths."""
    from common.prompts.tokenizer import render_prompt_ids

    kept, lengths = [], []
    for p in prompts:
        n = len(render_prompt_ids(tok, p))
        if n + NEW_TOKENS <= MAX_LENGTH:
            kept.append(p)
            lengths.append(n)
    return kept, lengths


# ------------------------------------------------------------------------ FLOPs of one iteration


def trunk_flops(tokens: int, context: int) -> float:
    """Forward FLOPs of the transformer layers for `tokens` tokens attending to `context` keys each
    (matmuls only: QKV, output projection, SwiGLU MLP, scores and weighted values)."""
    h, f, L = ARCH["hidden_size"], ARCH["ffn_hidden_size"], ARCH["num_layers"]
    kv = h * ARCH["num_query_groups"] // ARCH["num_attention_heads"]
    per_token = 2 * (h * (h + 2 * kv) + h * h + 3 * h * f) + 4 * context * h
    return L * tokens * per_token


def head_flops(positions: int) -> float:
    return 2 * positions * ARCH["hidden_size"] * ARCH["vocab_size"]


def phase_flops(prompt_lens: list[int], response_lens: list[int]) -> dict[str, float]:
    """Model FLOPs each phase of an iteration needs, the same count for both sides: the trunk over
    every token, the output layer only where a token is sampled or a log-prob is needed (work a side
    spends beyond that lowers its GFLOP/s). `prompt_lens`/`response_lens`: one per sequence."""
    gen = ref = rew = 0.0
    for p, r in zip(prompt_lens, response_lens):
        t = p + r
        gen += trunk_flops(p, p / 2) + trunk_flops(r, p + r / 2) + head_flops(r)
        ref += trunk_flops(t, t / 2) + head_flops(r)
        rew += trunk_flops(t, t / 2)
    return {"generate": gen, "reference": ref, "reward": rew, "train": 3 * ref}  # backward ~ 2x forward
