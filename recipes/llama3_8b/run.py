"""Online DPO, `llama3_8b` recipe: Llama-3.1-8B-Instruct on two nodes of 8 devices, the whole loop.

    ray start --head --port=6379 --resources='{"NPU": 8}'             # node 0 (docs/cluster.md)
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

from common.config.roles import data_parallel_size
from common.run.outputs import PhaseTimer
from common.run.rollout import (
    InFlight,
    Rollout,
    metrics_row,
    reference_logps,
    sampling_requests,
    score,
    sync_weights,
    train_on_pairs,
)
from common.run.session import exit_process, open_session
from common.train.pairs import select_pairs

RECIPE_DIR = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    run = open_session(RECIPE_DIR, argv)  # config, checks, data, run folder, Ray, roles (common/run/session.py)
    cfg, actor_cfg, alg = run.cfg, run.cfg.actor_rollout_ref.actor_rollout, run.cfg.algorithm
    actor, generator, ref, reward = run.handles.actor, run.handles.rollout, run.handles.ref, run.handles.reward
    generator = generator or actor  # without dedicated generating ranks the training ranks sample
    mini_per_rank = actor_cfg.ppo_mini_batch_size // data_parallel_size(cfg, "actor_rollout")

    for step in run.steps():  # ends early, cleanly, on SIGTERM/SIGINT (common/run/session.py)
        with run.iteration(step):  # a lost worker or NaN/inf ends it: stop with a resume command, or restart
            timer = PhaseTimer()
            with timer("step"):
                # 1. rollout: n responses per prompt, a [prompts, samples] grid from here to the pairs
                if run.in_flight is not None:  # staleness 1: sampled while the previous iteration trained
                    with timer("wait_generate"):  # the part of the sampling this iteration waits for
                        sampled = run.take_in_flight()
                    batch, responses, policy_step = sampled.batch, sampled.result(), sampled.policy_step
                    timer.record("generate", sampled.started, sampled.seconds, lane="generating ranks")
                else:
                    batch, policy_step = run.stream.next_batch(), step - 1
                    if generator is not actor and run.fixed is None:
                        with timer("sync"):  # dedicated generating ranks take the latest trained weights
                            sync_weights(actor, generator)
                    with timer("generate"):
                        if run.fixed is None:
                            responses = generator.generate(
                                sampling_requests(batch, actor_cfg.n_samples_per_prompt, cfg.training.seed, step),
                                run.new_tokens,
                                run.eos_ids,
                            )
                        else:  # accuracy-comparison mode: stored responses instead of sampling
                            responses = [run.fixed[i] for i in batch.indices]
                if actor_cfg.staleness and step < cfg.training.train_iters:
                    # staleness 1: the generating ranks take the weights after step - 1 and sample the
                    # next iteration's responses while this one scores, runs the reference and trains
                    with timer("sync"):
                        sync_weights(actor, generator)
                    run.in_flight = InFlight.submit(
                        generator, run.stream.next_batch(), step + 1, step - 1, actor_cfg.n_samples_per_prompt,
                        cfg.training.seed, run.new_tokens, run.eos_ids,
                    )  # fmt: skip
                rollout = Rollout.of(batch, responses, run.tok, run.eos_ids, policy_step)

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

            row = metrics_row(
                step,
                rollout,
                scores_PN,
                pairs,
                ref_chosen,
                ref_rejected,
                trained,
                beta=alg.beta,
                loss_type=alg.loss_type,
            )
            run.log({**row, **timer.seconds}, rollout.rows(step, scores_PN, pairs), timer.spans)
    return run.finish()  # loss.png; exit status 0, or 143/130 after SIGTERM/SIGINT


if __name__ == "__main__":
    exit_process(main())
