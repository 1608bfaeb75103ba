"""Held-out evaluation of a run: its trained policy (``RUN_DIR/final``) against its starting policy.

    python -m tools.evaluate --run RUN_DIR --prompts FILE.jsonl [--reward module:callable] [--n N] --out FILE.json

For every held-out prompt (``FILE.jsonl``: a ``prompt`` column like training data; the first N)
one response is sampled from the starting policy (``actor_rollout_ref.actor_rollout.load``, or the
run's random init) and one from the trained policy, with the run's sampling settings and the same
random stream for both (paired samples: the comparison sees the policies' difference, not the
sampler's luck). Both are scored with the run's reward (its reward model and/or functions, with
the run's weights and missing-EOS penalty) or with ``--reward module:callable`` (a function only).

Writes ``FILE.json``: ``win_rate`` (trained beats initial on a prompt: 1, tie: 0.5), the mean reward
of each policy, 95% confidence intervals (normal approximation over prompts; for the win rate and
the paired difference too), ``n``, ``kl`` (the trained policy's KL to the run's reference on its own
samples: mean over responses of sum_t log pi(y_t) - log ref(y_t), TRL's estimator) and every
prompt's responses and scores. Prints a table and a few before/after samples.

One process, no Ray (world size 1, TP=PP=1): the engine's own model builder, weight loader,
KV-cache sampler and log-prob code, on the run's device.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _mean_ci(values: list[float]) -> dict:
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    half = 1.96 * math.sqrt(var / n)
    return {"mean": mean, "ci95": [mean - half, mean + half]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _policy(cfg, load: str | None, dtype, device):
    """A policy at TP=PP=1: the weights at ``load`` or the run's random init (``model``, seed)."""
    from common.config.arch import LlamaArch
    from common.model.llama import build_policy
    from common.weights.convert import arch_from_path, load_into_model

    if load is None:
        from omegaconf import OmegaConf

        arch = LlamaArch(**OmegaConf.to_container(cfg.model))
        return build_policy(arch, dtype=dtype, seed=cfg.training.seed, device=device).eval()
    arch, _ = arch_from_path(load)
    model = build_policy(arch, dtype=dtype, seed=cfg.training.seed, device=device)
    load_into_model(model, load, arch)
    return model.eval()


def _reward_model_scorer(cfg, dtype, device):
    """(sequences, stop ids) -> scores with the run's reward model, in this process."""
    from omegaconf import OmegaConf

    from common.config.arch import LlamaArch
    from common.model.llama import build_reward_model
    from common.train.logprobs import causal_padding_mask
    from common.train.sequences import pad_batch, score_positions
    from common.weights.convert import arch_from_path, load_into_model

    r = cfg.reward
    if r.load is None:
        arch = LlamaArch(**OmegaConf.to_container(r.model))
        model = build_reward_model(arch, dtype=dtype, seed=cfg.training.seed + 1, device=device)
    else:
        arch, _ = arch_from_path(r.load)
        model = build_reward_model(arch, dtype=dtype, seed=cfg.training.seed + 1, device=device)
        load_into_model(model, r.load, arch)
    model.eval()

    @torch.no_grad()
    def scores(seqs, eos_ids):
        out = []
        for start in range(0, len(seqs), 8):
            chunk = seqs[start : start + 8]
            batch = pad_batch(chunk).to(next(model.parameters()).device)
            pos_BT = torch.arange(batch.ids_BT.shape[1], device=batch.ids_BT.device).expand_as(batch.ids_BT)
            scores_BT = model(batch.ids_BT, pos_BT, causal_padding_mask(batch.valid_BT))
            at_B = score_positions(chunk, set(eos_ids), r.score_position).to(scores_BT.device)
            out += scores_BT.gather(1, at_B[:, None]).squeeze(1).float().cpu().tolist()
        return out

    return scores


@torch.no_grad()
def _sample(model, prompts_ids, cfg, new_tokens, eos_ids, seed, batch_size):
    from common.generate.generation import generate
    from common.generate.sampling import sample_key

    a = cfg.actor_rollout_ref.actor_rollout
    # prompt i draws with the same key under both policies: the comparison is paired
    keys = [sample_key(seed, i) for i in range(len(prompts_ids))]
    out = []
    for start in range(0, len(prompts_ids), batch_size):
        out += generate(
            model, prompts_ids[start : start + batch_size], max_new_tokens=new_tokens, temperature=a.temperature,
            top_k=a.top_k, top_p=a.top_p, eos_token_ids=eos_ids, sample_keys=keys[start : start + batch_size],
        )  # fmt: skip
    return out


@torch.no_grad()
def _summed_logps(model, seqs, batch_size: int = 8) -> list[float]:
    from common.train.logprobs import token_logprobs
    from common.train.sequences import pad_batch, summed_response_logps

    out = []
    for start in range(0, len(seqs), batch_size):
        batch = pad_batch(seqs[start : start + batch_size]).to(next(model.parameters()).device)
        out += summed_response_logps(token_logprobs(model, batch.ids_BT, batch.valid_BT), batch).cpu().tolist()
    return out


def evaluate(
    run_dir: Path, prompts_path: str, reward: str | None, n: int | None, batch_size: int, seed: int | None
) -> dict:
    from common.config.load import load_config
    from common.config.roles import max_new_tokens, role_load
    from common.device.backend import resolve_device
    from common.model import parallel
    from common.prompts.dataset import load_prompt_dataset
    from common.prompts.messages import prompt_text
    from common.prompts.tokenizer import load_tokenizer, stop_token_ids
    from common.reward.terms import build_rewards
    from common.run.final import FINAL
    from common.train.pairs import apply_missing_eos_penalty
    from common.train.sequences import Sequence, has_eos

    cfg = load_config(run_dir / "config.yaml")
    final = run_dir / FINAL
    if not (final / "meta.json").is_file():
        raise ValueError(
            f"--run {run_dir}: no {FINAL}/ checkpoint; it is written when a run completes (run it to the end)"
        )
    a = cfg.actor_rollout_ref.actor_rollout
    tok = load_tokenizer(cfg.training.tokenizer_name_or_path)
    eos_ids = stop_token_ids(tok)
    ids, raw, dropped = load_prompt_dataset(prompts_path, tok, a.max_prompt_length)
    if n is not None:
        if n > len(ids):
            raise ValueError(
                f"--n {n}: {prompts_path} has only {len(ids)} usable prompts ({dropped} too long); lower --n"
            )
        ids, raw = ids[:n], raw[:n]
    rewards = build_rewards(cfg.reward, tok, reward)
    seed = cfg.training.seed if seed is None else seed

    device = resolve_device(cfg.training.device)
    device.setup_worker(torch.get_num_threads())
    parallel.init_model_parallel(
        rank=0, world_size=1, master_addr="127.0.0.1", master_port=_free_port(), device=device,
        tensor_model_parallel_size=1, pipeline_model_parallel_size=1, seed=cfg.training.seed,
    )  # fmt: skip
    try:
        dtype = device.compute_dtype(cfg.training.dtype)
        tdev = None if device.kind == "cpu" else device.torch_device()
        new_tokens = max_new_tokens(cfg)
        responses, logps = {}, {}
        for name, load in (("initial", a.load), ("trained", str(final))):
            model = _policy(cfg, load, dtype, tdev)
            responses[name] = _sample(model, ids, cfg, new_tokens, eos_ids, seed, batch_size)
            if name == "trained":
                logps["trained"] = _summed_logps(model, [Sequence(p, r) for p, r in zip(ids, responses[name])])
            del model
        ref = _policy(cfg, role_load(cfg, "ref"), dtype, tdev)
        logps["ref"] = _summed_logps(ref, [Sequence(p, r) for p, r in zip(ids, responses["trained"])])
        del ref
        model_scorer = _reward_model_scorer(cfg, dtype, tdev) if rewards.model_weight is not None else None
        scores, texts = {}, {}
        for name in ("initial", "trained"):
            texts[name] = [tok.decode(r, skip_special_tokens=True) for r in responses[name]]
            flat = rewards.score(
                raw, texts[name], [Sequence(p, r) for p, r in zip(ids, responses[name])], eos_ids, model_scorer
            )
            has_eos_N1 = torch.tensor([[has_eos(r, set(eos_ids))] for r in responses[name]])
            penalty = None if reward is not None else a.missing_eos_penalty  # --reward: the function alone
            scores[name] = apply_missing_eos_penalty(torch.tensor(flat)[:, None], has_eos_N1, penalty)[:, 0].tolist()
    finally:
        parallel.destroy_model_parallel()

    wins = [1.0 if t > i else 0.5 if t == i else 0.0 for i, t in zip(scores["initial"], scores["trained"])]
    kl = [t - r for t, r in zip(logps["trained"], logps["ref"])]
    initial, trained, win = _mean_ci(scores["initial"]), _mean_ci(scores["trained"]), _mean_ci(wins)
    return {
        "run": str(run_dir),
        "prompts": str(prompts_path),
        "reward": reward or rewards.describe(),
        "n": len(ids),
        "win_rate": win["mean"],
        "win_rate_ci95": win["ci95"],
        "mean_reward_initial": initial["mean"],
        "mean_reward_initial_ci95": initial["ci95"],
        "mean_reward_trained": trained["mean"],
        "mean_reward_trained_ci95": trained["ci95"],
        "mean_reward_difference_ci95": _mean_ci([t - i for i, t in zip(scores["initial"], scores["trained"])])["ci95"],
        "kl": sum(kl) / len(kl),
        "kl_ci95": _mean_ci(kl)["ci95"],
        "missing_eos_penalty": None if reward is not None else a.missing_eos_penalty,
        "sampling": {
            "temperature": a.temperature,
            "top_k": a.top_k,
            "top_p": a.top_p,
            "max_new_tokens": max_new_tokens(cfg),
            "seed": seed,
        },
        "samples": [
            {
                "prompt": prompt_text(p),
                "initial": texts["initial"][k],
                "trained": texts["trained"][k],
                "score_initial": scores["initial"][k],
                "score_trained": scores["trained"][k],
            }
            for k, p in enumerate(raw)
        ],  # fmt: skip
    }


def print_report(result: dict, show: int) -> None:
    def ci(key):
        lo, hi = result[key]
        return f"[{lo:+.3f}, {hi:+.3f}]"

    print(f"\nheld-out evaluation of {result['run']} on {result['n']} prompts ({result['reward']})")
    print(f"{'':<22}{'value':>10}  95% CI")
    print(f"{'mean reward, initial':<22}{result['mean_reward_initial']:>+10.4f}  {ci('mean_reward_initial_ci95')}")
    print(f"{'mean reward, trained':<22}{result['mean_reward_trained']:>+10.4f}  {ci('mean_reward_trained_ci95')}")
    print(f"{'win rate (ties 1/2)':<22}{result['win_rate']:>10.3f}  {ci('win_rate_ci95')}")
    print(f"{'KL(trained || ref)':<22}{result['kl']:>10.4f}  {ci('kl_ci95')}")
    for s in result["samples"][:show]:
        print(
            f"\nprompt: {s['prompt']}\n  before ({s['score_initial']:+.3f}): {s['initial']!r}\n  after  ({s['score_trained']:+.3f}): {s['trained']!r}"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tools.evaluate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2],
    )
    p.add_argument("--run", required=True, type=Path, help="a run folder (config.yaml + final/)")
    p.add_argument("--prompts", required=True, help="held-out prompts: .jsonl/.parquet with a `prompt` column")
    p.add_argument(
        "--reward", default=None, metavar="module:callable", help="score with this function instead of the run's reward"
    )
    p.add_argument("--n", type=int, default=None, help="the first N prompts (default: all)")
    p.add_argument("--out", required=True, type=Path, help="JSON file to write")
    p.add_argument("--batch-size", type=int, default=16, help="prompts sampled together")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: the run's training.seed)")
    p.add_argument("--show", type=int, default=3, help="before/after samples to print")
    args = p.parse_args(argv)
    try:
        result = evaluate(args.run.resolve(), args.prompts, args.reward, args.n, args.batch_size, args.seed)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print_report(result, args.show)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
