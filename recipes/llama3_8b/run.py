"""Online DPO, `llama3_8b` recipe: Llama-3.1-8B-Instruct on two nodes of 8 devices, the whole loop.

    ray start --head --port=6379 --resources='{"NPU": 8}'             # node 0 (README: Several nodes)
    ray start --address=<node-0-ip>:6379 --resources='{"NPU": 8}'     # node 1
    ./run.sh llama3_8b --nodes 2                                      # on node 0; the files below first
    ./run.sh llama3_8b --nodes 2 --overlay cpu_scale                  # same topology, CPU toy scale

Node 0: the actor, TP2 x PP2 training on 4 devices and 4 generating devices (TP2, 2 replicas;
weights re-sharded from the pipeline stages before every rollout). Node 1: reference TP2 x 2
replicas, reward model TP2 x 2 replicas (config.yaml). Every iteration: sample 2 responses per
prompt, score them with the reward model, best vs worst per prompt, the reference's log-probs of
the pair, a DPO step.
"""

from __future__ import annotations

from pathlib import Path

from common.config import data_parallel_size
from common.outputs import PhaseTimer
from common.pairs import select_pairs
from common.rollout import Rollout, metrics_row, reference_logps, sampling_requests, score, sync_weights, train_on_pairs
from common.session import exit_process, open_session

RECIPE_DIR = Path(__file__).resolve().parent
SFT, REWARD = "meta-llama/Llama-3.1-8B-Instruct", "Skywork/Skywork-Reward-V2-Llama-3.1-8B"
DATASET = "trl-internal-testing/descriptiveness-sentiment-trl-style"
# What to run when a file config.yaml names is missing (printed before anything starts). Every node
# reads these paths: put them on a shared filesystem or copy them to the same path on each node.
GET_FILES = {
    "models/Llama-3.1-8B-Instruct": f".venv/bin/hf download {SFT} --local-dir models/Llama-3.1-8B-Instruct  "
    "(gated: accept Meta's licence on its Hub page and run `.venv/bin/hf auth login` first)",
    "weights/llama3_8b/sft_tp2pp2": "the SFT model, converted for the actor's TP2/PP2 layout: "
    f"`.venv/bin/hf download {SFT} --local-dir models/Llama-3.1-8B-Instruct` then "
    "`.venv/bin/python -m tools.convert_checkpoint hf-to-mcore --hf models/Llama-3.1-8B-Instruct --out weights/llama3_8b/sft_tp2pp2 --tp 2 --pp 2`",
    "weights/llama3_8b/reward_tp2pp1": "the reward model, converted for TP2: "
    f"`.venv/bin/hf download {REWARD} --local-dir models/Skywork-Reward-V2-Llama-3.1-8B` then "
    "`.venv/bin/python -m tools.convert_checkpoint hf-to-mcore --hf models/Skywork-Reward-V2-Llama-3.1-8B --out weights/llama3_8b/reward_tp2pp1 --tp 2 --pp 1`",
    "data/prepared/descriptiveness_llama3": "the prompts, tokenized: "
    f"`.venv/bin/hf download {DATASET} --repo-type dataset --local-dir datasets/descriptiveness-sentiment-trl-style` then "
    "`.venv/bin/python -m data.prepare --input datasets/descriptiveness-sentiment-trl-style/data/descriptiveness-00000-of-00001.parquet "
    "--tokenizer models/Llama-3.1-8B-Instruct --output data/prepared/descriptiveness_llama3 --max-prompt-length 256`",
}


def main(argv: list[str] | None = None) -> int:
    run = open_session(RECIPE_DIR, argv, GET_FILES)  # config, checks, data, run folder, Ray, roles (common/session.py)
    cfg, actor_cfg, alg = run.cfg, run.cfg.actor_rollout_ref.actor_rollout, run.cfg.algorithm
    actor, generator, ref, reward = (run.roles.get(r) for r in ("actor_rollout", "rollout", "ref", "reward"))
    generator = generator or actor  # without dedicated generating ranks the training ranks sample
    mini_per_rank = actor_cfg.ppo_mini_batch_size // data_parallel_size(cfg, "actor_rollout")

    for step in run.steps():  # ends early, cleanly, on SIGTERM/SIGINT (common/session.py)
        with run.iteration(step):  # a lost worker or NaN/inf ends it: stop with a resume command, or restart
            timer = PhaseTimer()
            with timer("step"):
                batch = run.stream.next_batch()

                # 1. rollout: n responses per prompt, a [prompts, samples] grid from here to the pairs
                if generator is not actor and run.fixed is None:
                    with timer("sync"):  # dedicated generating ranks take the latest trained weights
                        sync_weights(actor, generator)
                with timer("generate"):
                    if run.fixed is None:
                        responses = generator.run_sharded("generate", sampling_requests(batch, actor_cfg.n_samples_per_prompt, cfg.training.seed, step), run.new_tokens, run.eos_ids)
                    else:  # accuracy-comparison mode: stored responses instead of sampling
                        responses = [run.fixed[i] for i in batch.indices]
                rollout = Rollout.of(batch, responses, run.tok, run.eos_ids)

                # 2. reward: one score per response, minus the missing-EOS penalty
                with timer("reward"):
                    scores_PN = score(rollout, run.rewards, reward, run.eos_ids, actor_cfg.missing_eos_penalty)

                # 3. pairs: best vs worst response of each prompt
                pairs = select_pairs(scores_PN)
                chosen, rejected = rollout.pairs(pairs)

                # 4. the frozen reference's log-probs of both members of every pair
                with timer("reference"):
                    ref_chosen, ref_rejected = reference_logps(ref, chosen, rejected)

                # 5. DPO update, each data-parallel rank on its own slice of the pairs
                with timer("train"):
                    trained = train_on_pairs(actor, chosen, rejected, ref_chosen, ref_rejected, mini_per_rank)

                # 6. checkpoint: weights, optimizer, schedule, data position (atomic)
                if run.save_due(step):
                    with timer("save"):
                        run.save(step)

            row = metrics_row(step, rollout, scores_PN, pairs, ref_chosen, ref_rejected, trained, beta=alg.beta, loss_type=alg.loss_type)
            run.log({**row, **timer.seconds}, rollout.rows(step, scores_PN, pairs))
    return run.finish()  # loss.png; exit status 0, or 143/130 after SIGTERM/SIGINT


if __name__ == "__main__":
    exit_process(main())
