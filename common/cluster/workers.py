"""Ray workers: one process per rank of a role, each role its own torch.distributed world.

Workers are long-lived (model import and build happen once) and return plain Python values
(lists of floats and ids); only the driver prints and writes files. Every method receives the
slice of the batch that belongs to its data-parallel rank; all tensor-parallel ranks of that slice
receive the same items and return the same values.

The driver calls these methods through its role handles (``common.cluster.handles``: ``ref.logps(seqs)``),
which name the functions below, so it imports this module: it imports torch (so does the driver)
but not Megatron-core, which the methods import where they use it and the rank processes import at
start-up (``import_megatron``). A public method of a role's class is one the driver can call; the
set-up RankProcess drives (``RoleWorker``'s) is the only other public one.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from common.config.roles import role_parallel_sizes, role_section
from common.device.backend import apply_megatron_fusions, resolve_device
from common.train.dpo import microbatch_dpo_loss, pair_sequences
from common.train.optimizer import AdamSettings, build_actor_optimizer, loss_scale, train_step
from common.train.sequences import (
    PaddedBatch,
    Sequence,
    chunks,
    collect_response_logps,
    collect_scores,
    micro_batches,
    score_positions,
)


def import_megatron() -> None:
    """Import now what the methods below import from Megatron-core where they use it (the pipeline
    schedule, the reward model's forward): ``RankProcess`` does at start-up, while the driver's
    checks go on, as importing this module did before the driver named its methods."""
    import common.reward.forward  # noqa: F401
    import common.train.schedule  # noqa: F401


class RoleWorker:
    """Shared set-up: device, threads, distributed world, Megatron parallel state."""

    def __init__(self, role: str, cfg: dict, rank: int, world_size: int, num_threads: int):
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
        self.role, self.rank, self.world_size = role, rank, world_size
        self.cfg = OmegaConf.create(cfg)
        # generating ranks batch like the actor they belong to
        self.section = role_section(self.cfg, "actor_rollout" if role == "rollout" else role)
        self.device = resolve_device(self.cfg.training.device)
        self.device.setup_worker(num_threads)
        self.dtype = self.device.compute_dtype(self.cfg.training.dtype)

    def master_address(self) -> tuple[str, int]:
        """Rank 0: the world's rendezvous, listening from now on a port the system picked (held, so
        no other process can take it before the world forms), and its address for the other ranks."""
        import ray

        from common.model import parallel

        self._store = parallel.rendezvous_store()
        return ray.util.get_node_ip_address(), self._store.port

    def init_distributed(self, master_addr: str, master_port: int) -> dict[str, Any]:
        from common.model import parallel

        tp, pp = role_parallel_sizes(self.cfg, self.role)
        start = time.perf_counter()
        parallel.init_model_parallel(
            rank=self.rank,
            world_size=self.world_size,
            master_addr=master_addr,
            master_port=master_port,
            store=getattr(self, "_store", None),
            device=self.device,
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
            seed=self.cfg.training.seed,
        )
        self.world_seconds = time.perf_counter() - start  # every rank joined, Megatron's groups made
        self.build()
        return self.layout()

    def layout(self) -> dict[str, Any]:
        import ray
        from megatron.core import parallel_state as ps

        return {
            "rank": self.rank,
            "dp_rank": ps.get_data_parallel_rank(),
            "dp_size": ps.get_data_parallel_world_size(),
            "tp_rank": ps.get_tensor_model_parallel_rank(),
            "pp_rank": ps.get_pipeline_model_parallel_rank(),
            # the rank whose return values the driver keeps for its data-parallel slice
            "is_output": ps.get_tensor_model_parallel_rank() == 0 and ps.is_pipeline_last_stage(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
            "vocab_size": self.arch.vocab_size,  # a uniform policy's entropy is ln(vocab_size)
        }

    def build(self) -> None:
        raise NotImplementedError

    def _arch(self, node):
        from common.model.llama import LlamaArch

        return LlamaArch(**OmegaConf.to_container(node))

    def _build(self, load: str | None, *, reward: bool, seed: int, like: RoleWorker | None = None):
        """A policy or reward model: random init from the config's architecture, or the weights at
        ``load`` (a Hugging Face directory or this project's checkpoint; architecture read from it),
        or the current weights of the policy of ``like`` (a worker of this process)."""
        from common.model.llama import build_policy, build_reward_model

        builder = build_reward_model if reward else build_policy
        device = None if self.device.kind == "cpu" else self.device.torch_device()
        if like is not None:
            self.arch = like.arch
            model = build_policy(like.arch, dtype=self.dtype, seed=seed, device=device, weights_from=like.model.module)
        elif load is None:
            self.arch = self._arch(self.cfg.reward.model if reward else self.cfg.model)
            model = builder(self.arch, dtype=self.dtype, seed=seed, device=device)
        else:
            from common.weights.convert import arch_from_path, load_into_model

            arch, _ = arch_from_path(load)  # the kind was checked by the driver before Ray started
            model = builder(arch, dtype=self.dtype, seed=seed, device=device)
            load_into_model(model, load, arch)
            self.arch = arch
        apply_megatron_fusions(model, self.device.megatron_fusions(self.dtype))  # none on CPU
        return model

    @torch.no_grad()
    def _generate(
        self, model, requests: list[tuple[list[int], list[int]]], max_new_tokens: int, eos_ids: list[int]
    ) -> list[list[list[int]]]:
        """``requests``: (prompt ids, one sampling key per sample) per prompt -> ``responses[prompt][sample]``.

        The keys come from the driver (common/run/rollout.py ``sampling_requests``), so what a prompt's
        samples are does not depend on which data-parallel rank generates them."""
        from common.generate.generation import generate

        a = self.cfg.actor_rollout_ref.actor_rollout
        rows = [(ids, key) for ids, keys in requests for key in keys]  # prompt-major: prompt i, sample j
        out = iter(
            generate(
                model,
                [ids for ids, _ in rows],
                max_new_tokens=max_new_tokens,
                temperature=a.temperature,
                top_k=a.top_k,
                top_p=a.top_p,
                eos_token_ids=eos_ids,
                sample_keys=[key for _, key in rows],
                decode=a.decode,
            )
        )
        return [[next(out) for _ in keys] for _, keys in requests]

    def _micro_batches(self, seqs: list[Sequence], aux: dict[str, list] | None = None) -> list[PaddedBatch]:
        """Padded micro-batches of ``2 * micro_batch_size`` sequences (a micro-batch is counted in pairs)."""
        return micro_batches(seqs, self.section.micro_batch_size * 2, self.device.torch_device(), aux)


class ActorWorker(RoleWorker):
    """Policy: generation with a KV cache and DPO updates with Megatron's optimizer.

    Generation and training share one set of weights in this process, so the generator always
    samples from the latest policy without a copy.
    """

    def build(self) -> None:
        from common.config.roles import optimizer_steps_per_iter
        from common.weights.hf_semantics import pad_token_id, source_hf_config, stop_lookup_gradient

        a = self.cfg.actor_rollout_ref.actor_rollout
        policy = self._build(a.load, reward=False, seed=self.cfg.training.seed)
        # the HF config.json the weights came from: re-emitted with the final checkpoint, and its
        # pad_token_id (HF's padding_idx) keeps that embedding row out of the lookup's gradient
        self.hf_config = source_hf_config(a.load)
        self.frozen_pad_id = pad_token_id(self.hf_config)
        if self.frozen_pad_id is not None:
            stop_lookup_gradient(policy, self.frozen_pad_id)
        settings = AdamSettings(**{f: a[f] for f in AdamSettings.__dataclass_fields__})
        total_steps = self.cfg.training.train_iters * optimizer_steps_per_iter(self.cfg)
        self.model, self.optimizer, self.scheduler = build_actor_optimizer(
            policy, settings, dtype=self.dtype, total_steps=total_steps
        )

    @torch.no_grad()
    def generate(
        self, requests: list[tuple[list[int], list[int]]], max_new_tokens: int, eos_ids: list[int]
    ) -> list[list[list[int]]]:
        return self._generate(self.model.module, requests, max_new_tokens, eos_ids)

    def export_shards(self):
        """This rank's weights for the generating ranks: an object-store reference to
        ``{global name: tensor}`` (data-parallel rank 0 only; the others hold the same shards)."""
        import ray
        from megatron.core import parallel_state as ps

        from common.model.weight_layout import global_names

        if ps.get_data_parallel_rank() != 0:
            return None
        shard = {name: p.detach().cpu() for name, p in global_names(self.model.module)}
        return ps.get_tensor_model_parallel_rank(), ray.put(shard)

    def train(self, pairs: list[dict], mini_batch_size: int) -> dict[str, Any]:
        """DPO updates on this rank's pairs; ``mini_batch_size`` pairs per optimizer step on this rank.

        Each pair: ``prompt_ids, chosen_ids, rejected_ids, ref_chosen, ref_rejected``. A micro-batch
        of k pairs is one forward of 2k sequences (k chosen, then k rejected). Returns the policy's
        summed log-probs per pair from the forward pass used for the update (meaningful on the last
        pipeline stage), grad norms (None for a step the fp16 optimizer skipped), the learning rate
        and, in fp16, the loss scale after the last step.
        """
        a, alg = self.cfg.actor_rollout_ref.actor_rollout, self.cfg.algorithm
        dpo_loss = microbatch_dpo_loss(beta=alg.beta, loss_type=alg.loss_type)
        policy_chosen, policy_rejected, grad_norms = [], [], []
        for _ in range(a.ppo_epochs):
            for mini in chunks(pairs, mini_batch_size):
                seqs, refs = pair_sequences(mini, a.micro_batch_size)
                grad_norm, stats = train_step(
                    self.model, self.optimizer, self.scheduler, self._micro_batches(seqs, {"ref": refs}), dpo_loss
                )
                grad_norms.append(grad_norm)
                for s in stats:
                    policy_chosen += s["chosen"].tolist()
                    policy_rejected += s["rejected"].tolist()
        return {
            "policy_chosen": policy_chosen,
            "policy_rejected": policy_rejected,
            "grad_norm": grad_norms,
            "learning_rate": self.optimizer.param_groups[0]["lr"],
            "loss_scale": loss_scale(self.optimizer) if self.dtype == torch.float16 else None,
        }

    def save_weights(self, out_dir: str) -> None:
        """Collective: the trained weights alone, in this project's checkpoint format (atomic), with
        the source HF config.json when the actor was loaded from one (``RUN_DIR/final``)."""
        from common.weights.convert import save_checkpoint

        save_checkpoint(self.model.module, Path(out_dir), self.arch, hf_config=self.hf_config)

    def save(self, ckpt_dir: str) -> None:
        """Collective: weights (one file per TP/PP rank) and this rank's optimizer, schedule, RNG."""
        from common.weights.convert import save_checkpoint

        save_checkpoint(self.model.module, Path(ckpt_dir) / "actor", self.arch)
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        path = Path(ckpt_dir) / f"optim_rank{self.rank}.pt"
        torch.save(state, path)
        with open(path, "rb") as f:
            os.fsync(f.fileno())

    def restore(self, ckpt_dir: str) -> None:
        """Load what ``save`` wrote (same TP/PP/DP layout)."""
        from common.weights.convert import load_checkpoint_into_model

        path = Path(ckpt_dir) / f"optim_rank{self.rank}.pt"
        if not path.is_file():
            raise ValueError(
                f"checkpoint {ckpt_dir}: no {path.name}; resume with the actor layout the run was saved with"
            )
        load_checkpoint_into_model(self.model.module, Path(ckpt_dir) / "actor", self.arch)
        state = torch.load(path, weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])


class GeneratorWorker(RoleWorker):
    """Generating ranks of the actor pool (PP=1, their own TP): the policy's weights arrive from
    the training ranks before every rollout (``load_weights``), re-sharded when the TP differs."""

    def build(self) -> None:
        a = self.cfg.actor_rollout_ref.actor_rollout
        self.model = self._build(a.load, reward=False, seed=self.cfg.training.seed)
        self.model.eval()
        self.model.requires_grad_(False)

    @torch.no_grad()
    def load_weights(self, exports: list) -> None:
        """``exports``: one ``(tp_rank, ref)`` per training rank of data-parallel rank 0."""
        import ray
        from megatron.core import parallel_state as ps

        from common.model.weight_layout import global_names, merge_shards, shard

        by_tp: dict[int, dict] = {}
        for tp_rank, ref in exports:
            by_tp.setdefault(tp_rank, {}).update(ray.get(ref))  # pipeline stages merge by global name
        train_tp = len(by_tp)
        same_layout = train_tp == ps.get_tensor_model_parallel_world_size()
        for name, param in global_names(self.model):
            if same_layout:
                value = by_tp[ps.get_tensor_model_parallel_rank()][name]
            else:
                full = merge_shards(name, [by_tp[t][name] for t in range(train_tp)], self.arch.vocab_size, False)
                value = shard(name, full, self.model.vocab_size, False)
            param.copy_(value.to(param.dtype))

    def generate(
        self, requests: list[tuple[list[int], list[int]]], max_new_tokens: int, eos_ids: list[int]
    ) -> list[list[list[int]]]:
        return self._generate(self.model, requests, max_new_tokens, eos_ids)


class ReferenceWorker(RoleWorker):
    """Frozen copy of the starting policy: summed response log-probs, no temperature scaling."""

    # the actor's training rank when it shares this process (resource_pool.colocate; set by
    # common.cluster.rank_process) and was built just before this: when both start from the same weights,
    # they are copied from it instead of drawn (or read from disk) a second time
    actor: ActorWorker | None = None

    def build(self) -> None:
        from common.config.roles import role_load

        load = role_load(self.cfg, "ref")
        same = self.actor is not None and load == role_load(self.cfg, "actor_rollout")
        self.model = self._build(load, reward=False, seed=self.cfg.training.seed, like=self.actor if same else None)
        self.model.eval()
        self.model.requires_grad_(False)

    @torch.no_grad()
    def logps(self, seqs: list[Sequence]) -> list[float]:
        """Summed response log-probs per sequence (last pipeline stage; [] on the others)."""
        # batched like the actor's training forward (not length-sorted): at step 1, where policy and
        # reference are the same model, the two give the same numbers and every margin is exactly 0
        from common.train.schedule import run_microbatches

        stats = run_microbatches(self.model, self._micro_batches(seqs), collect_response_logps, forward_only=True)
        return [x for s in stats for x in s["logps"].cpu().tolist()]


class RewardWorker(RoleWorker):
    """Reward model: the head's output at the score position of each response."""

    def build(self) -> None:
        self.model = self._build(self.cfg.reward.load, reward=True, seed=self.cfg.training.seed + 1)
        self.model.eval()
        self.model.requires_grad_(False)

    @torch.no_grad()
    def scores(self, seqs: list[Sequence], eos_ids: list[int]) -> list[float]:
        """The head's output at each sequence's score position (last pipeline stage; [] on others).
        With PP = 1 each prompt's trunk runs once and the last layer at the score positions only
        (``common.reward.forward``); with PP > 1 Megatron's schedule runs the full forward."""
        from common.model import parallel
        from common.reward.forward import shared_prompt_scores
        from common.train.schedule import run_microbatches

        positions = score_positions(seqs, set(eos_ids), self.cfg.reward.score_position).tolist()
        if parallel.pipeline_parallel_size() == 1:
            return shared_prompt_scores(self.model, seqs, positions, self.section.micro_batch_size * 2)
        stats = run_microbatches(
            self.model,
            self._micro_batches(seqs, {"pos": positions}),
            collect_scores,
            forward_only=True,
            output="scores",
        )
        return [x for s in stats for x in s["scores"].cpu().tolist()]


WORKER_CLASSES = {
    "actor_rollout": ActorWorker,
    "rollout": GeneratorWorker,
    "ref": ReferenceWorker,
    "reward": RewardWorker,
}
