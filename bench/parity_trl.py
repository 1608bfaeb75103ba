"""Accuracy comparison with Hugging Face TRL: same responses, same losses.

    .venv/bin/python bench/parity_trl.py                          # sigmoid + IPO, actor TP=1 and TP=2, 20 steps
    .venv/bin/python bench/parity_trl.py --steps 40 --loss-types sigmoid --tp 2 --out runs/parity
    .venv/bin/python bench/parity_trl.py --loss-types sigmoid --policy-pad-token-id 128009   # policy config sets pad = <|eot_id|>

TRL 1.16's ``OnlineDPOTrainer`` (``trl.experimental.online_dpo``) and ``./run.sh tiny`` train the
same tiny Hugging Face Llama policy (real Llama 3 tokenizer and chat template) against the same
tiny ``LlamaForSequenceClassification`` reward model, on the same prompts in file order, with
generation replaced by the same stored responses on both sides:

- here by ``actor_rollout_ref.actor_rollout.fixed_responses`` (each response is
  ``tok.encode(text, add_special_tokens=False) + [eos]``);
- in TRL by a subclass whose ``_generate`` hands TRL's own prompt ids to a stand-in for
  ``model.generate`` that appends exactly those ids, in TRL's block layout
  ``[p0s0 .. p(B-1)s0, p0s1 .. p(B-1)s1]``. Everything after it (EOS truncation, log-probs,
  re-rendering for the reward model, pair selection, loss, optimizer) is TRL's unchanged code.

Settings shared by both sides: fp32 on CPU, constant learning rate, no warmup, torch AdamW with the
same betas/eps and weight decay 0, gradient clipping at the same (never reached) norm so both
report ``grad_norm``, dropout off, one optimizer step per iteration on all the iteration's pairs.
The reward score is read where TRL reads it: TRL decodes completions without special tokens and
re-renders prompt + completion with the reward tokenizer's chat template; the classification head
takes the last non-pad token, and the pad token is ``<|eot_id|>``, so the score sits on the last
response token before EOS -> ``reward.score_position=before_eos``. The script checks, every step,
that TRL's prompt ids and the ids TRL's reward model scored are exactly this project's ids.

TRL logs ``loss`` rounded to 4 decimals; the script records TRL's unrounded loss (the value
``training_step`` returns) and TRL's other metrics from its own ``stats`` before logging.

Writes ``<out>/parity.json`` (per-step values of both sides and their differences, the maximum
absolute difference per metric, the id checks), ``docs/parity.png`` (``--plot``), and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from common.prompts.fixed_responses import fixed_response_ids
from common.prompts.messages import prompt_text
from common.prompts.tokenizer import load_tokenizer, render_prompt_ids
from common.run.outputs import read_jsonl
from common.util import jsonl

ROOT = Path(__file__).resolve().parents[1]

TOKENIZER = ROOT / "assets" / "llama3_tokenizer"
# compared per step; objective/kl and objective/entropy are not: TRL sums them over padding too
METRICS = (
    "loss",
    "logps/chosen",
    "logps/rejected",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "objective/scores",
    "objective/scores_margin",
    "grad_norm",
    "learning_rate",
    "val/contain_eos_token",
)
# max |ours - TRL| allowed per step (fp32). logps are sums over ~10-25 tokens of log-probs near
# -ln(128256) = -11.8 each, i.e. values of -100..-300: their tolerance is relative to that size.
TOLERANCES = {
    "loss": 1e-4,
    "logps/chosen": 1e-3,
    "logps/rejected": 1e-3,
    "rewards/chosen": 1e-4,
    "rewards/rejected": 1e-4,
    "rewards/margins": 1e-4,
    "rewards/accuracies": 0.0,
    "objective/scores": 1e-5,
    "objective/scores_margin": 1e-5,
    "grad_norm": 1e-3,  # relative: |diff| / |TRL's value| (see RELATIVE)
    "learning_rate": 0.0,
    "val/contain_eos_token": 0.0,
}


# grad_norm is compared relative to its value: IPO's gradient carries the factor
# 2 (logits - 1/(2 beta)), whose fp32 noise is large relative to it near IPO's target.
RELATIVE = ("grad_norm",)


@dataclass(frozen=True)
class Settings:
    steps: int = 20
    batch: int = 4  # prompts per iteration (TRL per_device_train_batch_size, our global_batch_size)
    num_prompts: int = 16
    lr_sigmoid: float = 1e-3
    # IPO's squared loss overshoots at 1e-3 (a spike to loss ~20 at step 5); 2e-4 trains smoothly
    lr_ipo: float = 2e-4
    beta_sigmoid: float = 0.1
    beta_ipo: float = 0.5  # IPO's target margin is 1/(2 beta): 0.5 keeps its loss near 1, like sigmoid's
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float = 1e4  # equal on both sides and never reached: both report grad_norm
    missing_eos_penalty: float = 1.0
    seed: int = 1234
    # pad_token_id in the policy's config.json (None: unset, as in Meta's Llama 3 configs). Some SFT
    # checkpoints set it to <|eot_id|> (128009); HF then never updates that embedding row through the
    # lookup (padding_idx), and this project must do the same (common/weights/hf_semantics.py).
    policy_pad_token_id: int | None = None

    def beta(self, loss_type: str) -> float:
        return self.beta_sigmoid if loss_type == "sigmoid" else self.beta_ipo

    def lr(self, loss_type: str) -> float:
        return self.lr_sigmoid if loss_type == "sigmoid" else self.lr_ipo


# ------------------------------------------------------------------------------------- assets


def _llama_config(*, reward: bool, policy_pad_token_id: int | None = None):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=128256,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        tie_word_embeddings=not reward,
        attention_dropout=0.0,
        num_labels=1,
        # By default no pad id on the policy (as in Meta's Llama 3 configs). With one, HF builds
        # nn.Embedding with padding_idx=pad_token_id, which stops the lookup's gradient to that row;
        # with <|eot_id|>, a real token of every prompt and response, that changes training.
        bos_token_id=128000,
        eos_token_id=128009,
        pad_token_id=128009 if reward else policy_pad_token_id,
    )


WORDS = (
    "the sun is warm and bright today so we walk to the park with a friend and talk about books "
    "music small cats green plants quiet lakes morning coffee long trains old maps new cities"
).split()


def _response(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 14))]
    return " ".join(words).capitalize() + rng.choice([".", "!", ". Thanks", ", really."])


def make_assets(root: Path, s: Settings) -> dict[str, Path]:
    """A tiny HF Llama policy (tied embeddings) and reward model, prompts and fixed responses."""
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    root.mkdir(parents=True, exist_ok=True)
    paths = {
        "policy": root / "policy",
        "reward": root / "reward",
        "prompts": root / "prompts.jsonl",
        "fixed": root / "fixed.jsonl",
    }
    torch.manual_seed(s.seed)
    LlamaForCausalLM(_llama_config(reward=False, policy_pad_token_id=s.policy_pad_token_id)).save_pretrained(
        paths["policy"]
    )
    torch.manual_seed(s.seed + 1)
    reward = LlamaForSequenceClassification(_llama_config(reward=True))
    with torch.no_grad():  # a wider spread of scores than the default init (std 0.02)
        reward.score.weight.normal_(0.0, 0.5)
    reward.save_pretrained(paths["reward"])

    raw = [row["prompt"] for row in jsonl.read_all(ROOT / "data" / "prompts" / "tiny_prompts.jsonl")]
    raw = raw[: s.num_prompts]
    rng = random.Random(s.seed)
    jsonl.write(paths["prompts"], ({"prompt": p} for p in raw))
    jsonl.write(
        paths["fixed"], ({"prompt": prompt_text(p), "responses": [_response(rng), _response(rng)]} for p in raw)
    )
    return paths


def as_messages(p) -> list[dict]:
    return [{"role": "user", "content": p}] if isinstance(p, str) else p


# ---------------------------------------------------------------------------------------- TRL


def run_trl(paths: dict[str, Path], s: Settings, loss_type: str, workdir: Path) -> dict:
    """TRL's OnlineDPOTrainer with generation replaced by the fixed responses -> per-step records."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    tok = load_tokenizer(str(TOKENIZER))
    raw = [row["prompt"] for row in jsonl.read_all(paths["prompts"])]
    ids = fixed_response_ids(str(paths["fixed"]), tok, raw, 2, 10_000)  # exactly what run.sh uses
    fixed = {prompt_text(p): r for p, r in zip(raw, ids)}
    our_prompt_ids = {prompt_text(p): render_prompt_ids(tok, p) for p in raw}

    class FixedResponsesTrainer(OnlineDPOTrainer):
        """TRL's trainer; only `model.generate` is replaced (inside TRL's own `_generate`)."""

        def _generate(self, model, prompts, images=None):
            keys = [prompt_text(p) for p in prompts]
            completions = [fixed[k][j] for j in range(2) for k in keys]  # TRL's block layout
            unwrapped = self.accelerator.unwrap_model(model)

            def fixed_generate(input_ids, attention_mask, **_):
                width = max(len(c) for c in completions)
                out = torch.full((len(completions), width), tok.pad_token_id, dtype=input_ids.dtype)
                for r, c in enumerate(completions):
                    out[r, : len(c)] = torch.tensor(c)
                rows = [x[m.bool()].tolist() for x, m in zip(input_ids, attention_mask)]
                self.checks["prompt_ids_equal"] &= all(
                    rows[r] == our_prompt_ids[keys[r % len(keys)]] for r in range(len(rows))
                )
                self._step = {"keys": keys, "completions": completions}
                return torch.cat([input_ids, out], dim=1)

            unwrapped.generate = fixed_generate
            try:
                return super()._generate(model, prompts, images)
            finally:
                del unwrapped.generate

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)  # unrounded (GA = 1)
            row = {k: v[-1] for k, v in self.stats.items() if v}
            row["loss"] = loss.item()
            B = len(self._step["keys"])
            scores = self._step["scores"]
            row["scores_PN"] = [[scores[j * B + i] for j in range(2)] for i in range(B)]
            row["chosen_P"] = [0 if sc[0] >= sc[1] else 1 for sc in row["scores_PN"]]
            self.records.append(row)
            return loss

    def capture_reward(module, args, kwargs, output):
        """The ids TRL's reward model scored == this project's prompt + response ids before EOS."""
        step = trainer._step
        input_ids, pad = kwargs["input_ids"], module.config.pad_token_id
        for r, row in enumerate(input_ids.tolist()):
            last = max(i for i, t in enumerate(row) if t != pad)  # where the classification head reads
            ours = our_prompt_ids[step["keys"][r % len(step["keys"])]] + step["completions"][r]
            trainer.checks["reward_ids_equal"] &= row[: last + 1] == ours[:-1] and ours[-1] == pad
        step["scores"] = output.logits[:, 0].tolist()

    args = OnlineDPOConfig(
        output_dir=str(workdir / f"trl_{loss_type}"),
        per_device_train_batch_size=s.batch,
        gradient_accumulation_steps=1,
        max_steps=s.steps,
        learning_rate=s.lr(loss_type),
        lr_scheduler_type="constant",
        warmup_steps=0,
        optim="adamw_torch",  # torch.optim.AdamW, as Megatron's optimizer on CPU
        weight_decay=0.0,
        adam_beta1=s.adam_beta1,
        adam_beta2=s.adam_beta2,
        adam_epsilon=s.adam_eps,
        max_grad_norm=s.max_grad_norm,
        beta=s.beta(loss_type),
        loss_type=loss_type,
        missing_eos_penalty=s.missing_eos_penalty,
        max_length=512,  # no left truncation of the prompt
        disable_dropout=True,
        bf16=False,
        fp16=False,
        use_cpu=True,
        train_sampling_strategy="sequential",  # file order, like no_shuffle=true
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=s.seed,
    )
    policy = AutoModelForCausalLM.from_pretrained(paths["policy"], dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(paths["reward"], dtype=torch.float32, num_labels=1)
    dataset = datasets.Dataset.from_list([{"prompt": as_messages(p)} for p in raw])
    trainer = FixedResponsesTrainer(
        model=policy,
        reward_funcs=reward,
        args=args,
        train_dataset=dataset,
        processing_class=tok,
        reward_processing_classes=load_tokenizer(str(TOKENIZER)),
    )
    trainer.records, trainer.checks = [], {"prompt_ids_equal": True, "reward_ids_equal": True}
    trainer.reward_funcs[0].register_forward_hook(capture_reward, with_kwargs=True)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    logged = [h for h in trainer.state.log_history if "grad_norm" in h]
    for row, h in zip(trainer.records, logged):
        row["grad_norm"], row["learning_rate"] = h["grad_norm"], h["learning_rate"]
    return {"steps": trainer.records, "checks": trainer.checks, "seconds": seconds}


# --------------------------------------------------------------------------------- this project


def our_overrides(paths: dict[str, Path], s: Settings, loss_type: str, tp: int) -> list[str]:
    a = "actor_rollout_ref.actor_rollout."
    return [
        f"training.train_iters={s.steps}",
        f"training.global_batch_size={s.batch}",
        f"training.micro_batch_size={s.batch}",
        "training.seq_length=128",
        f"training.seed={s.seed}",
        f"{a}load={paths['policy']}",
        f"reward.load={paths['reward']}",
        "reward.score_position=before_eos",
        f"{a}data_path={paths['prompts']}",
        f"{a}fixed_responses={paths['fixed']}",
        f"{a}max_prompt_length=64",
        f"{a}no_shuffle=true",
        f"{a}missing_eos_penalty={s.missing_eos_penalty}",
        f"{a}lr={s.lr(loss_type)}",
        f"{a}min_lr=0.0",
        f"{a}lr_decay_style=constant",
        f"{a}lr_warmup_fraction=0.0",
        f"{a}weight_decay=0.0",
        f"{a}clip_grad={s.max_grad_norm}",
        f"{a}adam_beta1={s.adam_beta1}",
        f"{a}adam_beta2={s.adam_beta2}",
        f"{a}adam_eps={s.adam_eps}",
        f"{a}ppo_epochs=1",
        f"{a}ppo_mini_batch_size={s.batch}",
        f"{a}micro_batch_size={s.batch}",
        f"{a}tensor_model_parallel_size={tp}",
        f"resource_pool.actor_rollout={tp}",
        f"algorithm.beta={s.beta(loss_type)}",
        f"algorithm.loss_type={loss_type}",
    ]


def run_ours(paths: dict[str, Path], s: Settings, loss_type: str, tp: int, out: Path, env: dict | None = None) -> dict:
    """``./run.sh tiny`` with the same model, data, responses and hyperparameters (``env``: more
    environment, e.g. the ``RAY_ADDRESS`` of a running cluster to join)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [str(ROOT / "run.sh"), "tiny", "--out", str(out), *our_overrides(paths, s, loss_type, tp)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"./run.sh tiny failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    rows = read_jsonl(out / "metrics.jsonl")
    rollouts = read_jsonl(out / "rollouts.jsonl")
    for row in rows:
        mine = [r for r in rollouts if r["step"] == row["step"]]
        row["scores_PN"] = [r["scores"] for r in mine]
        row["chosen_P"] = [r["chosen"] for r in mine]
    return {"steps": rows, "seconds": time.perf_counter() - start}


# ---------------------------------------------------------------------------------- comparison


def compare(trl: dict, ours: dict) -> dict:
    """Per-step values, differences (ours - TRL) and the max |difference| per metric."""
    a, b = trl["steps"], ours["steps"]
    assert len(a) == len(b), f"TRL ran {len(a)} steps, this project {len(b)}"
    per_metric = {}
    for m in METRICS:
        t, o = [x[m] for x in a], [x[m] for x in b]
        d = [y - x for x, y in zip(t, o)]
        per_metric[m] = {
            "trl": t,
            "ours": o,
            "diff": d,
            "max_abs_diff": max(abs(x) for x in d),
            "max_rel_diff": max(abs(x) / abs(v) if v else (0.0 if x == 0 else math.inf) for x, v in zip(d, t)),
        }
    score_diff = max(
        abs(so - st) for x, y in zip(a, b) for rt, ro in zip(x["scores_PN"], y["scores_PN"]) for st, so in zip(rt, ro)
    )
    margins = [abs(r[0] - r[1]) for x in a for r in x["scores_PN"]]
    return {
        "metrics": per_metric,
        "max_abs_diff": {m: v["max_abs_diff"] for m, v in per_metric.items()},
        "max_error": {m: v["max_rel_diff" if m in RELATIVE else "max_abs_diff"] for m, v in per_metric.items()},
        "response_scores_max_abs_diff": score_diff,
        "smallest_score_gap_within_a_prompt": min(margins),  # pair selection can't flip on fp noise
        "same_pairs_every_step": all(x["chosen_P"] == y["chosen_P"] for x, y in zip(a, b)),
        "loss_mean_diff": sum(per_metric["loss"]["diff"]) / len(a),
    }


def within_tolerance(result: dict) -> list[str]:
    """Names of the metrics over their tolerance (empty = parity)."""
    return [m for m, d in result["max_error"].items() if not d <= TOLERANCES[m]]


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss_types = sorted({r["loss_type"] for r in results.values()}, reverse=True)
    fig, axes = plt.subplots(3, len(loss_types), figsize=(6 * len(loss_types), 10), squeeze=False)
    colors = {1: "tab:orange", 2: "tab:green"}
    for col, lt in enumerate(loss_types):
        runs = [r for r in results.values() if r["loss_type"] == lt]
        loss = runs[0]["metrics"]["loss"]
        steps = list(range(1, len(loss["trl"]) + 1))
        ax = axes[0][col]
        ax.plot(steps, loss["trl"], "-", color="tab:blue", lw=3, alpha=0.5, label="TRL 1.16 OnlineDPOTrainer")
        for r in runs:
            ax.plot(
                steps,
                r["metrics"]["loss"]["ours"],
                ".",
                color=colors[r["tp"]],
                label=f"this project, actor TP={r['tp']}",
            )
        ax.set(title=f"{lt}: loss (fixed responses, fp32, CPU)", xlabel="iteration", ylabel="loss")
        ax.legend()
        for row, (metric, tol) in enumerate(
            (("loss", TOLERANCES["loss"]), ("rewards/margins", TOLERANCES["rewards/margins"])), start=1
        ):
            ax = axes[row][col]
            for r in runs:
                ax.plot(
                    steps,
                    r["metrics"][metric]["diff"],
                    ".-",
                    color=colors[r["tp"]],
                    label=f"TP={r['tp']} (max |diff| {r['max_abs_diff'][metric]:.1e})",
                )
            ax.axhline(tol, ls="--", color="gray", lw=1)
            ax.axhline(-tol, ls="--", color="gray", lw=1, label=f"tolerance +-{tol:g}")
            ax.set(title=f"{lt}: {metric}, this project - TRL", xlabel="iteration", ylabel="difference")
            ax.legend(fontsize=8)
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_all(s: Settings, loss_types: list[str], tps: list[int], workdir: Path) -> dict:
    """One TRL run per loss type, compared with this project's run at each actor TP size."""
    paths = make_assets(workdir / "assets", s)
    results = {}
    for lt in loss_types:
        trl = run_trl(paths, s, lt, workdir)
        for tp in tps:
            ours = run_ours(paths, s, lt, tp, workdir / f"ours_{lt}_tp{tp}")
            results[f"{lt}_tp{tp}"] = {
                "loss_type": lt,
                "tp": tp,
                **compare(trl, ours),
                "trl_checks": trl["checks"],
                "seconds": {"trl": trl["seconds"], "ours": ours["seconds"]},
            }
    return results


def environment() -> dict:
    import megatron.core
    import transformers
    import trl

    return {
        "trl": trl.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "megatron-core": megatron.core.__version__,
        "device": "cpu",
        "dtype": "fp32",
    }


def print_table(results: dict) -> None:
    names = list(results)
    print(f"\nmax |this project - TRL| per step (grad_norm: relative)   ({', '.join(names)})")
    print(f"{'metric':<26}" + "".join(f"{n:>16}" for n in names) + f"{'tolerance':>12}")
    for m in METRICS:
        print(f"{m:<26}" + "".join(f"{results[n]['max_error'][m]:>16.2e}" for n in names) + f"{TOLERANCES[m]:>12.0e}")
    for key in ("response_scores_max_abs_diff", "smallest_score_gap_within_a_prompt", "loss_mean_diff"):
        print(f"{key:<26}" + "".join(f"{results[n][key]:>16.2e}" for n in names))
    for key in ("same_pairs_every_step",):
        print(f"{key:<26}" + "".join(f"{str(results[n][key]):>16}" for n in names))
    print(f"{'TRL ids == our ids':<26}" + "".join(f"{str(all(results[n]['trl_checks'].values())):>16}" for n in names))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--loss-types", nargs="+", default=["sigmoid", "ipo"], choices=["sigmoid", "ipo"])
    p.add_argument("--tp", nargs="+", type=int, default=[1, 2])
    p.add_argument(
        "--out", type=Path, default=None, help="folder for parity.json and the runs (default: a temporary one)"
    )
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "parity.png")
    p.add_argument(
        "--policy-pad-token-id",
        type=int,
        default=None,
        metavar="ID",
        help="set pad_token_id in the policy's config.json (e.g. 128009 = <|eot_id|>): HF's padding_idx semantics",
    )
    args = p.parse_args()
    s = Settings(steps=args.steps, policy_pad_token_id=args.policy_pad_token_id)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.out or Path(tmp)
        results = run_all(s, args.loss_types, args.tp, workdir)
        record = {"settings": asdict(s), "tolerances": TOLERANCES, "environment": environment(), "results": results}
        out_json = workdir / "parity.json"
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(record, indent=1))
        plot(results, args.plot)
        print_table(results)
        print(f"\nwrote {out_json if args.out else '(temporary) parity.json'} and {args.plot}")
        bad = {n: within_tolerance(r) for n, r in results.items() if within_tolerance(r)}
        ids_ok = all(all(r["trl_checks"].values()) and r["same_pairs_every_step"] for r in results.values())
    if bad or not ids_ok:
        print(f"PARITY FAILED: over tolerance {bad}; ids/pairs identical: {ids_ok}", file=sys.stderr)
        return 1
    print("parity: every metric within tolerance on every step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
