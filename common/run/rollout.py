"""One iteration's pieces, as a recipe loop calls them: sample, score, pair, reference, train.

A rollout is a ``[prompts, samples]`` grid (row = prompt, column = sample) from sampling to the
pairs, so no step depends on how a batch is flattened. Each function takes the role handles it
needs (common/cluster/handles.py) and returns plain values; the loop in ``recipes/<name>/run.py`` decides the order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from common.cluster.handles import ActorHandle, GeneratorHandle, PendingItems, ReferenceHandle, RewardHandle
from common.generate.sampling import sample_key
from common.prompts.dataset import PromptBatch, PromptStream
from common.prompts.messages import prompt_text
from common.reward.terms import Rewards
from common.train.dpo import dpo_metrics, pair_items
from common.train.health import check_finite, check_loss_scale
from common.train.pairs import Pairs, apply_missing_eos_penalty
from common.train.sequences import Sequence, has_eos


@dataclass
class Rollout:
    prompts: list[str]  # [P] prompt text as given
    seqs_PN: list[list[Sequence]]  # [P][N] prompt ids + response ids
    texts_PN: list[list[str]]  # [P][N] decoded responses (special tokens skipped)
    has_eos_PN: torch.Tensor  # [P, N] bool: the response ended with a stop token
    raw_prompts: list  # [P] as given (str or messages): a reward model with its own template re-renders them
    indices: list[int]  # [P] each prompt's position in the prompt set (named when a reward function fails)
    policy_step: int  # DPO steps the sampling weights had taken: step - 1, or step - 2 with staleness 1

    @classmethod
    def of(
        cls, batch: PromptBatch, responses_PN: list[list[list[int]]], tok, eos_ids: list[int], policy_step: int
    ) -> Rollout:
        stops = set(eos_ids)
        return cls(
            prompts=[prompt_text(p) for p in batch.prompts],
            seqs_PN=[[Sequence(ids, r) for r in row] for ids, row in zip(batch.ids, responses_PN)],
            texts_PN=[[tok.decode(r, skip_special_tokens=True) for r in row] for row in responses_PN],
            has_eos_PN=torch.tensor([[has_eos(r, stops) for r in row] for row in responses_PN]),
            raw_prompts=list(batch.prompts),
            indices=list(batch.indices),
            policy_step=policy_step,
        )

    def pairs(self, pairs: Pairs) -> tuple[list[Sequence], list[Sequence]]:
        """(chosen, rejected) sequence of every prompt."""
        chosen = [row[int(c)] for row, c in zip(self.seqs_PN, pairs.chosen_P)]
        rejected = [row[int(r)] for row, r in zip(self.seqs_PN, pairs.rejected_P)]
        return chosen, rejected

    def rows(self, step: int, scores_PN: torch.Tensor, pairs: Pairs) -> list[dict]:
        """``rollouts.jsonl`` rows: one per prompt, with every response, its score and the pair's indices."""
        return [
            {
                "step": step,
                "prompt": self.prompts[i],
                "responses": self.texts_PN[i],
                "scores": scores_PN[i].tolist(),
                "chosen": int(pairs.chosen_P[i]),
                "rejected": int(pairs.rejected_P[i]),
                "rollout/policy_step": self.policy_step,
            }
            for i in range(len(self.prompts))
        ]


def sampling_requests(batch: PromptBatch, n: int, seed: int, step: int) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, n sampling keys) per prompt for the generating workers. A sample's key is a
    function of (seed, iteration, prompt position in the batch, sample index) only, so its
    response does not depend on the data-parallel split, and a resumed run samples the same."""
    return [(ids, [sample_key(seed, step, i, j) for j in range(n)]) for i, ids in enumerate(batch.ids)]


@dataclass
class InFlight:
    """Iteration ``step``'s responses, sampled on the dedicated generating ranks while the iteration
    before it trains (``actor_rollout.staleness=1``), by the policy after DPO step ``policy_step``.
    A checkpoint holds them (``state_dict`` waits for them), so a resumed or restarted run trains on
    exactly the responses the uninterrupted run did."""

    step: int
    batch: PromptBatch
    policy_step: int
    pending: PendingItems | None = None  # the generating ranks' call, until its responses are here
    responses: list[list[list[int]]] | None = None
    seconds: float = 0.0  # the call's duration on the generating ranks (0: sampled before a checkpoint)
    started: float | None = None  # time.perf_counter() at the call (None: sampled before a checkpoint)

    @classmethod
    def submit(
        cls, generator: GeneratorHandle, batch: PromptBatch, step: int, policy_step: int, n: int, seed: int,
        new_tokens: int, eos_ids: list[int],
    ) -> InFlight:  # fmt: skip
        requests = sampling_requests(batch, n, seed, step)  # keyed by the iteration it trains in
        return cls(step, batch, policy_step, pending=generator.generate.submit(requests, new_tokens, eos_ids))

    def result(self) -> list[list[list[int]]]:
        if self.responses is None:
            assert self.pending is not None
            self.responses = self.pending.result()
            self.seconds, self.started, self.pending = self.pending.seconds, self.pending.started, None
        return self.responses

    def state_dict(self) -> dict:
        return {"step": self.step, "indices": self.batch.indices, "policy_step": self.policy_step,
                "responses": self.result()}  # fmt: skip

    @classmethod
    def restore(cls, state: dict | None, stream: PromptStream) -> InFlight | None:
        if state is None:
            return None
        return cls(state["step"], stream.batch_at(state["indices"]), state["policy_step"], responses=state["responses"])


def sync_weights(actor: ActorHandle, rollout: GeneratorHandle) -> None:
    """Dedicated generating ranks take the training ranks' current weights (re-sharded if TP differs)."""
    rollout.load_weights([e for e in actor.export_shards() if e is not None])


def score(
    rollout: Rollout,
    rewards: Rewards,
    reward: RewardHandle | None,
    eos_ids: list[int],
    missing_eos_penalty: float | None,
) -> torch.Tensor:
    """[P, N] scores: the run's reward terms (model and/or functions, weighted; common/reward/terms.py),
    minus the missing-EOS penalty."""
    P, N = rollout.has_eos_PN.shape
    flat = rewards.score(
        [p for p in rollout.raw_prompts for _ in range(N)],
        [t for row in rollout.texts_PN for t in row],
        [s for row in rollout.seqs_PN for s in row],
        eos_ids,
        model=None if reward is None else reward.scores,
        prompt_index=[i for i in rollout.indices for _ in range(N)],
    )
    return apply_missing_eos_penalty(torch.tensor(flat).view(P, N), rollout.has_eos_PN, missing_eos_penalty)


def reference_logps(
    ref: ReferenceHandle, chosen: list[Sequence], rejected: list[Sequence]
) -> tuple[list[float], list[float]]:
    """The frozen reference's summed response log-probs of both members of every pair."""
    logps = ref.logps([s for c, r in zip(chosen, rejected) for s in (c, r)])
    return logps[0::2], logps[1::2]


@dataclass
class TrainResult:
    policy_chosen: list[float]  # per pair, from the first forward pass of the iteration (before any update)
    policy_rejected: list[float]
    grad_norm: float  # mean over the iteration's optimizer steps that were taken (NaN: none was)
    learning_rate: float
    loss_scale: float | None = None  # fp16: the dynamic loss scale after the iteration
    skipped_steps: int = 0  # fp16: optimizer steps skipped for overflowing gradients


def train_on_pairs(
    actor: ActorHandle,
    chosen: list[Sequence],
    rejected: list[Sequence],
    ref_chosen: list[float],
    ref_rejected: list[float],
    mini_batch_per_rank: int,
) -> TrainResult:
    """DPO update; each data-parallel rank trains on its own contiguous slice of the pairs."""
    items = pair_items(chosen, rejected, ref_chosen, ref_rejected)
    per_dp = actor.train(items, mini_batch_per_rank)  # one result per data-parallel rank
    local = len(items) // actor.dp_size  # with ppo_epochs > 1 a rank returns every epoch's values: keep the first
    steps = per_dp[0]["grad_norm"]  # one per optimizer step; None: a step fp16 skipped
    grad_norms = [g for g in steps if g is not None]
    skipped = len(steps) - len(grad_norms)
    # NaN/inf stops the run here, before the iteration's checkpoint (common/train/health.py)
    check_finite([x for o in per_dp for x in o["policy_chosen"] + o["policy_rejected"]], grad_norms)
    check_loss_scale(skipped, len(steps), per_dp[0]["loss_scale"])
    return TrainResult(
        policy_chosen=[x for o in per_dp for x in o["policy_chosen"][:local]],
        policy_rejected=[x for o in per_dp for x in o["policy_rejected"][:local]],
        grad_norm=sum(grad_norms) / len(grad_norms) if grad_norms else float("nan"),
        learning_rate=per_dp[0]["learning_rate"],
        loss_scale=per_dp[0]["loss_scale"],
        skipped_steps=skipped,
    )


def metrics_row(
    step: int, rollout: Rollout, scores_PN: torch.Tensor, pairs: Pairs, ref_chosen: list[float], ref_rejected: list[float],
    trained: TrainResult, *, beta: float, loss_type: str,
) -> dict:  # fmt: skip
    """The ``metrics.jsonl`` row of an iteration (without its timings)."""
    idx = torch.arange(len(rollout.prompts))
    metrics = dpo_metrics(
        policy_chosen_B=torch.tensor(trained.policy_chosen),
        policy_rejected_B=torch.tensor(trained.policy_rejected),
        ref_chosen_B=torch.tensor(ref_chosen),
        ref_rejected_B=torch.tensor(ref_rejected),
        scores_chosen_B=scores_PN[idx, pairs.chosen_P],
        scores_rejected_B=scores_PN[idx, pairs.rejected_P],
        scores_PN=scores_PN,
        has_eos_PN=rollout.has_eos_PN,
        beta=beta,
        loss_type=loss_type,
    )
    # per response token, comparable with its ceiling ln(vocab) (a uniform policy; common/train/health.py)
    tokens = sum(
        len(s.response_ids)
        for row, c, r in zip(rollout.seqs_PN, pairs.chosen_P, pairs.rejected_P)
        for s in (row[int(c)], row[int(r)])
    )
    entropy_per_token = -(sum(trained.policy_chosen) + sum(trained.policy_rejected)) / max(tokens, 1)
    counts = {  # for throughput figures (bench/vs_trl.py): tokens sampled, and prompt tokens, this iteration
        "rollout/response_tokens": sum(len(s.response_ids) for row in rollout.seqs_PN for s in row),
        "rollout/prompt_tokens": sum(len(s.prompt_ids) for row in rollout.seqs_PN for s in row),
    }
    fp16 = (
        {} if trained.loss_scale is None else {"loss_scale": trained.loss_scale, "skipped_steps": trained.skipped_steps}
    )
    return {
        "step": step, **metrics, "rollout/policy_step": rollout.policy_step, "objective/entropy_per_token": entropy_per_token,
        "grad_norm": trained.grad_norm, "learning_rate": trained.learning_rate, **fp16, **counts,
    }  # fmt: skip
