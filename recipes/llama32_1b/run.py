"""Online DPO, `llama32_1b` recipe: Llama-3.2-1B-Instruct on 4 devices of one node, the whole loop.

    ./run.sh llama32_1b                              # NPUs/GPUs; the files below first
    ./run.sh llama32_1b --overlay cpu_scale          # same topology on CPU at toy scale (~2 min)
    ./run.sh llama32_1b training.train_iters=100 --out runs/1b

Actor: 1 training device + 1 generating device (weights copied to it before every rollout),
reference 1, reward model 1 (config.yaml). Every iteration: sample 2 responses per prompt, score
them with the reward model, best vs worst per prompt, the reference's log-probs of the pair, a
DPO step.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from common.config import data_parallel_size  # noqa: E402
from common.dpo import dpo_metrics  # noqa: E402
from common.outputs import PhaseTimer, rollout_rows  # noqa: E402
from common.pairs import apply_missing_eos_penalty, select_pairs  # noqa: E402
from common.prompts import prompt_text  # noqa: E402
from common.rewards import call_reward_function  # noqa: E402
from common.sequences import Sequence, has_eos, split  # noqa: E402
from common.session import open_session  # noqa: E402

RECIPE_DIR = Path(__file__).resolve().parent
SFT, REWARD = "meta-llama/Llama-3.2-1B-Instruct", "Skywork/Skywork-Reward-V2-Llama-3.2-1B"
DATASET = "trl-internal-testing/descriptiveness-sentiment-trl-style"
# What to run when a file config.yaml names is missing (printed before anything starts).
GET_FILES = {
    "models/Llama-3.2-1B-Instruct": f".venv/bin/hf download {SFT} --local-dir models/Llama-3.2-1B-Instruct  "
    "(gated: accept Meta's licence on its Hub page and run `.venv/bin/hf auth login` first)",
    "weights/llama32_1b/sft_tp1pp1": "the SFT model, converted for the actor's TP1/PP1 layout: "
    f"`.venv/bin/hf download {SFT} --local-dir models/Llama-3.2-1B-Instruct` then "
    "`.venv/bin/python -m tools.convert_checkpoint hf-to-mcore --hf models/Llama-3.2-1B-Instruct --out weights/llama32_1b/sft_tp1pp1 --tp 1 --pp 1`",
    "weights/llama32_1b/reward_tp1pp1": "the reward model, converted: "
    f"`.venv/bin/hf download {REWARD} --local-dir models/Skywork-Reward-V2-Llama-3.2-1B` then "
    "`.venv/bin/python -m tools.convert_checkpoint hf-to-mcore --hf models/Skywork-Reward-V2-Llama-3.2-1B --out weights/llama32_1b/reward_tp1pp1 --tp 1 --pp 1`",
    "data/prepared/descriptiveness_llama3": "the prompts, tokenized: "
    f"`.venv/bin/hf download {DATASET} --repo-type dataset --local-dir datasets/descriptiveness-sentiment-trl-style` then "
    "`.venv/bin/python -m data.prepare --input datasets/descriptiveness-sentiment-trl-style/data/descriptiveness-00000-of-00001.parquet "
    "--tokenizer models/Llama-3.2-1B-Instruct --output data/prepared/descriptiveness_llama3 --max-prompt-length 256`",
}


def main(argv: list[str] | None = None) -> int:
    run = open_session(RECIPE_DIR, argv, GET_FILES)  # config, checks, data, run folder, Ray, roles (common/session.py)
    cfg, tok, n = run.cfg, run.tok, run.cfg.actor_rollout_ref.actor_rollout.n_samples_per_prompt
    actor_cfg, alg = cfg.actor_rollout_ref.actor_rollout, cfg.algorithm
    actor, rollout, ref, reward = (run.roles.get(r) for r in ("actor_rollout", "rollout", "ref", "reward"))
    mini_per_rank = actor_cfg.ppo_mini_batch_size // data_parallel_size(cfg, "actor_rollout")

    for step in run.steps():
        timer = PhaseTimer()
        with timer("step"):
            batch = run.stream.next_batch()
            P = len(batch.ids)

            # 1. rollout: responses[i][j] = sample j of prompt i (explicit indices end to end);
            #    dedicated generating ranks first receive the latest weights from the training ranks
            if rollout is not None and run.fixed is None:
                with timer("sync"):
                    rollout.call_all("load_weights", [e for e in actor.call_all("export_shards") if e is not None])
            with timer("generate"):
                if run.fixed is None:
                    responses = (rollout or actor).run_sharded("generate", batch.ids, n, run.new_tokens, step, run.eos_ids)
                else:  # accuracy-comparison mode: stored responses instead of sampling
                    responses = [run.fixed[i] for i in batch.indices]
            seqs_PN = [[Sequence(batch.ids[i], responses[i][j]) for j in range(n)] for i in range(P)]
            eos_PN = torch.tensor([[has_eos(r, set(run.eos_ids)) for r in row] for row in responses])
            texts_PN = [[tok.decode(r, skip_special_tokens=True) for r in row] for row in responses]
            prompt_texts = [prompt_text(p) for p in batch.prompts]

            # 2. reward: one score per response, then the missing-EOS penalty
            with timer("reward"):
                if run.reward_fn is not None:
                    flat = call_reward_function(run.reward_fn, [p for p in prompt_texts for _ in range(n)], [x for row in texts_PN for x in row])
                else:
                    flat = reward.run_sharded("scores", [s for row in seqs_PN for s in row], run.eos_ids)
            scores_PN = apply_missing_eos_penalty(torch.tensor(flat).view(P, n), eos_PN, actor_cfg.missing_eos_penalty)

            # 3. pairs: best vs worst per prompt
            pairs = select_pairs(scores_PN)
            chosen = [seqs_PN[i][int(pairs.chosen_P[i])] for i in range(P)]
            rejected = [seqs_PN[i][int(pairs.rejected_P[i])] for i in range(P)]

            # 4. reference log-probs of both members of every pair
            with timer("reference"):
                ref_logps = ref.run_sharded("logps", [s for c, r in zip(chosen, rejected) for s in (c, r)])
            ref_chosen, ref_rejected = ref_logps[0::2], ref_logps[1::2]

            # 5. DPO update; each data-parallel rank trains on its own slice of the pairs
            with timer("train"):
                items = [
                    {"prompt_ids": c.prompt_ids, "chosen_ids": c.response_ids, "rejected_ids": r.response_ids, "ref_chosen": rc, "ref_rejected": rr}
                    for c, r, rc, rr in zip(chosen, rejected, ref_chosen, ref_rejected)
                ]
                per_dp = actor.run_per_dp("train", split(items, actor.dp_size), mini_per_rank)
            local = P // actor.dp_size  # first epoch's values: the forward passes before any update of this iteration

            # 6. checkpoint: weights, optimizer, schedule, data position (atomic; see common/checkpoint.py)
            if run.save_due(step):
                with timer("save"):
                    run.save(step)

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
        row = {"step": step, **metrics, "grad_norm": sum(grad_norms) / len(grad_norms), "learning_rate": per_dp[0]["learning_rate"], **timer.seconds}
        run.log(row, rollout_rows(step, prompt_texts, texts_PN, scores_PN, pairs))
    return run.finish()


if __name__ == "__main__":
    sys.exit(main())
