"""Set up and tear down one torch.distributed world with Megatron's model-parallel groups.

Each role (actor, reference, reward) is its own world; a worker calls `init_model_parallel` once
after `Device.setup_worker` and before building a model.
"""

from __future__ import annotations

from datetime import timedelta

import torch
from megatron.core import parallel_state, tensor_parallel

from common.device.backend import Device

RENDEZVOUS_TIMEOUT = timedelta(minutes=30)


def rendezvous_store() -> torch.distributed.TCPStore:
    """Rank 0's side of the world's rendezvous, listening at once on a free port the system picks
    (``.port``). Picking a port by binding and closing a socket, then binding it again when the world
    forms, leaves a gap in which another process can take it (seen: EADDRINUSE at a run's start)."""
    return torch.distributed.TCPStore("0.0.0.0", 0, is_master=True, wait_for_workers=False, timeout=RENDEZVOUS_TIMEOUT)


def init_model_parallel(
    *,
    rank: int,
    world_size: int,
    master_addr: str,
    master_port: int,
    device: Device,
    tensor_model_parallel_size: int,
    pipeline_model_parallel_size: int,
    seed: int,
    store: torch.distributed.Store | None = None,
) -> None:
    """Join the world, create Megatron's TP/PP/DP groups and seed Megatron's RNG tracker. Rank 0
    may pass the ``rendezvous_store`` it opened; without one, rank 0 opens it at ``master_port`` and
    the other ranks reach it at ``master_addr:master_port``."""
    model_parallel = tensor_model_parallel_size * pipeline_model_parallel_size
    if world_size % model_parallel != 0:
        raise ValueError(
            f"parallel layout: world_size {world_size} is not a multiple of tensor_model_parallel_"
            f"size*pipeline_model_parallel_size = {model_parallel}; change the role's device "
            "count or its TP/PP sizes"
        )
    if not 0 <= rank < world_size:
        raise ValueError(f"parallel layout: rank {rank} outside [0, {world_size})")
    if store is None:
        store = torch.distributed.TCPStore(master_addr, master_port, world_size, rank == 0, timeout=RENDEZVOUS_TIMEOUT)
    torch.distributed.init_process_group(
        backend=device.backend, store=store, rank=rank, world_size=world_size, timeout=RENDEZVOUS_TIMEOUT
    )
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
    )
    # Seeds the "default" generator with `seed` and the TP tracker with seed+2718+tp_rank
    # (on CPU both are the CPU generator, via common.device.megatron_cpu_patches).
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def destroy_model_parallel() -> None:
    """Leave the world (safe to call when it was never joined)."""
    parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def data_parallel_rank() -> int:
    return parallel_state.get_data_parallel_rank()


def data_parallel_size() -> int:
    return parallel_state.get_data_parallel_world_size()


def tensor_parallel_rank() -> int:
    return parallel_state.get_tensor_model_parallel_rank()


def tensor_parallel_size() -> int:
    return parallel_state.get_tensor_model_parallel_world_size()


def pipeline_parallel_size() -> int:
    return parallel_state.get_pipeline_model_parallel_world_size()


def is_pipeline_first_stage() -> bool:
    return parallel_state.is_pipeline_first_stage()


def is_pipeline_last_stage() -> bool:
    return parallel_state.is_pipeline_last_stage()
