"""Online DPO, `tiny` recipe: the whole loop, top to bottom.

    ./run.sh tiny                                   # the embedded default, ~1 minute on 2 CPU cores
    ./run.sh tiny training.train_iters=5 --out runs/try
    ./run.sh tiny reward.function=mymod:score       # a reward function instead of the reward model

Every iteration: sample n responses per prompt from the actor (KV cache, TP=2), score them, pick
best vs worst per prompt, get the frozen reference's log-probs of the pair, take a DPO step.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from common import checkpoint  # noqa: E402
from common.cli import parse_args  # noqa: E402
from common.cluster import build_roles, plan_roles, start_ray  # noqa: E402
from common.config import data_parallel_size, load_config, max_new_tokens  # noqa: E402
from common.device import resolve_device  # noqa: E402
from common.dpo import dpo_metrics  # noqa: E402
from common.expected_curve import load_expected  # noqa: E402
from common.fixed_responses import fixed_response_ids  # noqa: E402
from common.outputs import RunWriter, new_run_dir, plot_loss  # noqa: E402
from common.pairs import apply_missing_eos_penalty, select_pairs  # noqa: E402
from common.placement import describe, placement_record  # noqa: E402
from common.preflight import check_weights  # noqa: E402
from common.prompts import PromptStream, load_prompt_dataset, prompt_text  # noqa: E402
from common.rewards import call_reward_function, load_reward_function  # noqa: E402
from common.sequences import Sequence, has_eos, split  # noqa: E402
from common.tokenizer import load_tokenizer, stop_token_ids  # noqa: E402

RECIPE_DIR = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    args = parse_args(RECIPE_DIR.name, argv)
    resume = checkpoint.resume_point(args.resume)  # None, or (run folder, checkpoint, driver state)
    cfg = load_config(resume.run_dir / "config.yaml" if resume else RECIPE_DIR / "config.yaml", args.overrides)
    t, actor_cfg, alg = cfg.training, cfg.actor_rollout_ref.actor_rollout, cfg.algorithm

    # --- everything that can fail cheaply, before Ray starts -----------------------------------
    tok = load_tokenizer(t.tokenizer_name_or_path)
    check_weights(cfg, len(tok))
    eos_ids = stop_token_ids(tok)
    prompt_ids, raw_prompts, dropped = load_prompt_dataset(actor_cfg.data_path, tok, actor_cfg.max_prompt_length)
    stream = PromptStream(prompt_ids, raw_prompts, t.global_batch_size, shuffle=not actor_cfg.no_shuffle, seed=t.seed)
    first_step = 1
    if resume:
        stream.load_state_dict(resume.state["stream"])
        first_step = resume.state["step"] + 1
    n, new_tokens = actor_cfg.n_samples_per_prompt, max_new_tokens(cfg)
    fixed = fixed_response_ids(actor_cfg.fixed_responses, tok, raw_prompts, n, new_tokens) if actor_cfg.fixed_responses else None
    reward_fn = load_reward_function(cfg.reward.function) if cfg.reward.function else None
    device = resolve_device(t.device)
    run_dir = resume.run_dir if resume else new_run_dir(RECIPE_DIR.name, args.out)
    if resume:  # rows of iterations after the checkpoint came from the run that stopped
        checkpoint.truncate_jsonl(run_dir / "metrics.jsonl", first_step - 1)
        checkpoint.truncate_jsonl(run_dir / "rollouts.jsonl", first_step - 1)
    writer = RunWriter(run_dir, cfg)
    expected = load_expected(RECIPE_DIR)
    print(f"run folder: {run_dir}  ({len(prompt_ids)} prompts, {dropped} dropped as too long)", flush=True)

    # --- roles on Ray ---------------------------------------------------------------------------
    start_ray(args.nodes)
    plan, nodes = plan_roles(cfg, device, args.nodes)
    print("placement:\n" + describe(plan, nodes), flush=True)
    groups = build_roles(cfg, device, plan)
    writer.json("placement.json", placement_record(plan, {role: g.node_ids() for role, g in groups.items()}, nodes))
    actor, rollout, ref, reward = groups["actor_rollout"], groups.get("rollout"), groups["ref"], groups.get("reward")
    if resume:
        actor.call_all("restore", str(resume.checkpoint))
        print(f"resumed from {resume.checkpoint} at iteration {first_step}", flush=True)
    mini_per_rank = actor_cfg.ppo_mini_batch_size // data_parallel_size(cfg, "actor_rollout")

    bar = tqdm(range(first_step, t.train_iters + 1), desc=RECIPE_DIR.name, unit="it", dynamic_ncols=True, initial=first_step - 1, total=t.train_iters)
    for step in bar:
        timing: dict[str, float] = {}

        @contextmanager
        def phase(name: str):
            start = time.perf_counter()
            yield
            timing[f"timing/{name}"] = time.perf_counter() - start

        with phase("step"):
            batch = stream.next_batch()
            P = len(batch.ids)

            # 1. rollout: responses[i][j] = sample j of prompt i (explicit indices end to end);
            #    dedicated generating ranks first receive the latest weights from the training ranks
            if rollout is not None and fixed is None:
                with phase("sync"):
                    rollout.call_all("load_weights", [e for e in actor.call_all("export_shards") if e is not None])
            with phase("generate"):
                if fixed is None:
                    responses = (rollout or actor).run_sharded("generate", batch.ids, n, new_tokens, step, eos_ids)
                else:  # accuracy-comparison mode: stored responses instead of sampling
                    responses = [fixed[i] for i in batch.indices]
            seqs_PN = [[Sequence(batch.ids[i], responses[i][j]) for j in range(n)] for i in range(P)]
            eos_PN = torch.tensor([[has_eos(r, set(eos_ids)) for r in row] for row in responses])
            texts_PN = [[tok.decode(r, skip_special_tokens=True) for r in row] for row in responses]
            prompt_texts = [prompt_text(p) for p in batch.prompts]

            # 2. reward: one score per response, then the missing-EOS penalty
            with phase("reward"):
                if reward_fn is not None:
                    flat = call_reward_function(reward_fn, [p for p in prompt_texts for _ in range(n)], [x for row in texts_PN for x in row])
                else:
                    flat = reward.run_sharded("scores", [s for row in seqs_PN for s in row], eos_ids)
            scores_PN = apply_missing_eos_penalty(torch.tensor(flat).view(P, n), eos_PN, actor_cfg.missing_eos_penalty)

            # 3. pairs: best vs worst per prompt
            pairs = select_pairs(scores_PN)
            chosen = [seqs_PN[i][int(pairs.chosen_P[i])] for i in range(P)]
            rejected = [seqs_PN[i][int(pairs.rejected_P[i])] for i in range(P)]

            # 4. reference log-probs of both members of every pair
            with phase("reference"):
                ref_logps = ref.run_sharded("logps", [s for c, r in zip(chosen, rejected) for s in (c, r)])
            ref_chosen, ref_rejected = ref_logps[0::2], ref_logps[1::2]

            # 5. DPO update; each data-parallel rank trains on its own slice of the pairs
            with phase("train"):
                items = [
                    {"prompt_ids": c.prompt_ids, "chosen_ids": c.response_ids, "rejected_ids": r.response_ids, "ref_chosen": rc, "ref_rejected": rr}
                    for c, r, rc, rr in zip(chosen, rejected, ref_chosen, ref_rejected)
                ]
                per_dp = actor.run_per_dp("train", split(items, actor.dp_size), mini_per_rank)
            local = P // actor.dp_size  # first epoch's values: the forward passes before any update of this iteration

            # 6. checkpoint: weights, optimizer, schedule, data position (atomic; see common/checkpoint.py)
            if t.save_interval and step % t.save_interval == 0:
                with phase("save"):
                    tmp = checkpoint.begin(run_dir, step)
                    actor.call_all("save", str(tmp))
                    checkpoint.commit(tmp, {"step": step, "stream": stream.state_dict()})

        idx = torch.arange(P)
        metrics = dpo_metrics(
            policy_chosen_B=torch.tensor([x for o in per_dp for x in o["policy_chosen"][:local]]),
            policy_rejected_B=torch.tensor([x for o in per_dp for x in o["policy_rejected"][:local]]),
            ref_chosen_B=torch.tensor(ref_chosen),
            ref_rejected_B=torch.tensor(ref_rejected),
            scores_chosen_B=scores_PN[idx, pairs.chosen_P],
            scores_rejected_B=scores_PN[idx, pairs.rejected_P],
            scores_PN=scores_PN,
            has_eos_PN=eos_PN,
            beta=alg.beta,
            loss_type=alg.loss_type,
        )
        grad_norms = per_dp[0]["grad_norm"]
        row = {"step": step, **metrics, "grad_norm": sum(grad_norms) / len(grad_norms), "learning_rate": per_dp[0]["learning_rate"], **timing}
        writer.metrics(row)
        writer.rollouts(
            {
                "step": step,
                "prompt": prompt_texts[i],
                "responses": texts_PN[i],
                "scores": scores_PN[i].tolist(),
                "chosen": int(pairs.chosen_P[i]),
                "rejected": int(pairs.rejected_P[i]),
            }
            for i in range(P)
        )
        bar.set_postfix(loss=f"{row['loss']:.4f}", score=f"{row['objective/scores']:.3f}", s_it=f"{timing['timing/step']:.2f}")

    writer.close()
    png = plot_loss(run_dir, expected)
    print(f"done: {t.train_iters} iterations. outputs in {run_dir}/ (metrics.jsonl, rollouts.jsonl, config.yaml, {png.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
