"""Ray workers: one process per rank of a role, each role its own torch.distributed world.

Workers are long-lived (model import and build happen once) and return plain Python values
(lists of floats and ids); only the driver prints and writes files. Every method receives the
slice of the batch that belongs to its data-parallel rank; all tensor-parallel ranks of that slice
receive the same items and return the same values.
"""

from __future__ import annotations

import socket
import warnings
from typing import Any

import torch
from omegaconf import OmegaConf

from common.config import role_section
from common.device import resolve_device
from common.dpo import dpo_losses
from common.sequences import Sequence, chunks, pad_batch, score_positions, summed_response_logps


class RoleWorker:
    """Shared set-up: device, threads, distributed world, Megatron parallel state."""

    def __init__(self, role: str, cfg: dict, rank: int, world_size: int, num_threads: int):
        # Megatron warns at import about optional CUDA kernels (Apex, Transformer Engine) it falls
        # back from; those fallbacks are expected here and would drown the driver's output.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
        self.role, self.rank, self.world_size = role, rank, world_size
        self.cfg = OmegaConf.create(cfg)
        self.section = role_section(self.cfg, role)
        self.device = resolve_device(self.cfg.training.device)
        self.device.setup_worker(num_threads)
        self.dtype = self.device.compute_dtype(self.cfg.training.dtype)

    def master_address(self) -> tuple[str, int]:
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def init_distributed(self, master_addr: str, master_port: int) -> dict[str, Any]:
        from common import parallel

        parallel.init_model_parallel(
            rank=self.rank,
            world_size=self.world_size,
            master_addr=master_addr,
            master_port=master_port,
            device=self.device,
            tensor_model_parallel_size=self.section.tensor_model_parallel_size,
            pipeline_model_parallel_size=self.section.pipeline_model_parallel_size,
            seed=self.cfg.training.seed,
        )
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
        }

    def build(self) -> None:
        raise NotImplementedError

    def _arch(self, node):
        from common.model import LlamaArch

        return LlamaArch(**OmegaConf.to_container(node))

    @torch.no_grad()
    def _sequence_logps(self, model, seqs: list[Sequence]) -> torch.Tensor:
        from common.logprobs import token_logprobs

        out = []
        for mb in chunks(seqs, self.section.micro_batch_size * 2):
            batch = pad_batch(mb).to(self.device.torch_device())
            logps_BT1 = token_logprobs(model, batch.ids_BT, batch.valid_BT)
            out.append(summed_response_logps(logps_BT1, batch).cpu())
        return torch.cat(out)


class ActorWorker(RoleWorker):
    """Policy: generation with a KV cache and DPO updates with Megatron's optimizer.

    Generation and training share one set of weights in this process, so the generator always
    samples from the latest policy without a copy.
    """

    def build(self) -> None:
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

        from common.config import optimizer_steps_per_iter
        from common.model import build_policy

        a = self.cfg.actor_rollout_ref.actor_rollout
        if a.load is not None:
            raise ValueError("actor_rollout_ref.actor_rollout.load: loading weights is not supported yet; leave it null")
        policy = build_policy(self._arch(self.cfg.model), dtype=self.dtype, seed=self.cfg.training.seed)
        self.model = DistributedDataParallel(
            config=policy.config,
            ddp_config=DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False),
            module=policy,
        )
        self.optimizer = get_megatron_optimizer(
            OptimizerConfig(
                optimizer="adam",
                lr=a.lr,
                min_lr=a.min_lr,
                weight_decay=a.weight_decay,
                adam_beta1=a.adam_beta1,
                adam_beta2=a.adam_beta2,
                adam_eps=a.adam_eps,
                clip_grad=a.clip_grad,
                bf16=self.dtype == torch.bfloat16,
                fp16=self.dtype == torch.float16,
                params_dtype=self.dtype,
            ),
            [self.model],
        )
        total_steps = self.cfg.training.train_iters * optimizer_steps_per_iter(self.cfg)
        self.scheduler = OptimizerParamScheduler(
            self.optimizer,
            init_lr=0.0 if a.lr_warmup_fraction > 0 else a.lr,
            max_lr=a.lr,
            min_lr=a.min_lr,
            lr_warmup_steps=int(a.lr_warmup_fraction * total_steps),
            lr_decay_steps=total_steps,
            lr_decay_style=a.lr_decay_style,
            start_wd=a.weight_decay,
            end_wd=a.weight_decay,
            wd_incr_steps=total_steps,
            wd_incr_style="constant",
        )

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: int, max_new_tokens: int, step: int, eos_ids: list[int]) -> list[list[list[int]]]:
        """Sample ``n`` responses per prompt -> ``responses[prompt][sample]`` token ids."""
        from megatron.core import parallel_state as ps

        from common.generation import generate

        a = self.cfg.actor_rollout_ref.actor_rollout
        self.model.eval()
        rows = [p for p in prompts for _ in range(n)]  # row i*n + j = prompt i, sample j
        # seeded by (seed, step, data-parallel rank): identical on the TP ranks of a slice -> identical draws
        seed = (self.cfg.training.seed * 1_000_003 + step) * 1_009 + ps.get_data_parallel_rank()
        gen = torch.Generator().manual_seed(seed)
        out = generate(
            self.model.module,
            rows,
            max_new_tokens=max_new_tokens,
            temperature=a.temperature,
            top_k=a.top_k,
            top_p=a.top_p,
            eos_token_ids=eos_ids,
            generator=gen,
        )
        self.model.train()
        return [[out[i * n + j] for j in range(n)] for i in range(len(prompts))]

    def train(self, pairs: list[dict], mini_batch_size: int) -> dict[str, Any]:
        """DPO updates on this rank's pairs; ``mini_batch_size`` pairs per optimizer step on this rank.

        Each pair: ``prompt_ids, chosen_ids, rejected_ids, ref_chosen, ref_rejected``. Returns the
        policy's summed log-probs per pair (from the forward pass used for the update), grad norms
        and the learning rate.
        """
        from common.logprobs import token_logprobs

        a, alg = self.cfg.actor_rollout_ref.actor_rollout, self.cfg.algorithm
        policy_chosen, policy_rejected, grad_norms = [], [], []
        for _ in range(a.ppo_epochs):
            for mini in chunks(pairs, mini_batch_size):
                self.model.zero_grad_buffer()
                self.optimizer.zero_grad()
                for micro in chunks(mini, a.micro_batch_size):
                    seqs = [Sequence(p["prompt_ids"], p["chosen_ids"]) for p in micro]
                    seqs += [Sequence(p["prompt_ids"], p["rejected_ids"]) for p in micro]
                    batch = pad_batch(seqs).to(self.device.torch_device())
                    logps_S = summed_response_logps(token_logprobs(self.model, batch.ids_BT, batch.valid_BT), batch)
                    chosen_B, rejected_B = logps_S[: len(micro)], logps_S[len(micro) :]
                    ref_c = logps_S.new_tensor([p["ref_chosen"] for p in micro])
                    ref_r = logps_S.new_tensor([p["ref_rejected"] for p in micro])
                    losses_B = dpo_losses(chosen_B, rejected_B, ref_c, ref_r, beta=alg.beta, loss_type=alg.loss_type)
                    # mean over the mini-batch; Megatron DDP averages over data-parallel ranks
                    (losses_B.sum() / len(mini)).backward()
                    policy_chosen += chosen_B.detach().tolist()
                    policy_rejected += rejected_B.detach().tolist()
                self.model.finish_grad_sync()
                ok, grad_norm, _ = self.optimizer.step()
                if not ok:
                    raise RuntimeError("optimizer step skipped (inf/nan gradients)")
                self.scheduler.step(increment=1)
                grad_norms.append(float(grad_norm) if grad_norm is not None else float("nan"))
        return {
            "policy_chosen": policy_chosen,
            "policy_rejected": policy_rejected,
            "grad_norm": grad_norms,
            "learning_rate": self.optimizer.param_groups[0]["lr"],
        }


class ReferenceWorker(RoleWorker):
    """Frozen copy of the starting policy: summed response log-probs, no temperature scaling."""

    def build(self) -> None:
        from common.model import build_policy

        if self.cfg.actor_rollout_ref.ref.load is not None:
            raise ValueError("actor_rollout_ref.ref.load: loading weights is not supported yet; leave it null")
        # same architecture and seed as the actor -> the actor's starting weights, for any TP
        self.model = build_policy(self._arch(self.cfg.model), dtype=self.dtype, seed=self.cfg.training.seed)
        self.model.eval()
        self.model.requires_grad_(False)

    def logps(self, seqs: list[Sequence]) -> list[float]:
        return self._sequence_logps(self.model, seqs).tolist()


class RewardWorker(RoleWorker):
    """Reward model: the head's output at the score position of each response."""

    def build(self) -> None:
        from common.model import build_reward_model

        if self.cfg.reward.load is not None:
            raise ValueError("reward.load: loading weights is not supported yet; leave it null")
        self.model = build_reward_model(self._arch(self.cfg.reward.model), dtype=self.dtype, seed=self.cfg.training.seed + 1)
        self.model.eval()
        self.model.requires_grad_(False)

    @torch.no_grad()
    def scores(self, seqs: list[Sequence], eos_ids: list[int]) -> list[float]:
        from common.logprobs import logprob_inputs

        out = []
        for mb in chunks(seqs, self.section.micro_batch_size * 2):
            batch = pad_batch(mb).to(self.device.torch_device())
            pos_B = score_positions(mb, set(eos_ids), self.cfg.reward.score_position)
            position_ids_BT, mask, _ = logprob_inputs(batch.ids_BT, batch.valid_BT)
            scores_BT = self.model(batch.ids_BT, position_ids_BT, mask)
            out.append(scores_BT.gather(1, pos_B.to(scores_BT.device)[:, None]).squeeze(1).float().cpu())
        return torch.cat(out).tolist()


WORKER_CLASSES = {"actor_rollout": ActorWorker, "ref": ReferenceWorker, "reward": RewardWorker}
