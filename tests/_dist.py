"""Test helper: run a function on every rank of a fresh CPU/gloo Megatron world.

Each rank is a spawned process (Megatron's parallel state is per-process global state), with
one torch thread so a 2-rank world fits on 2 cores. A failing rank fails the whole call with its
traceback instead of leaving the other ranks hanging in a collective.
"""

from __future__ import annotations

import io
import queue
import socket
import time
import traceback

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_world(rank: int, world_size: int, port: int, tp: int, pp: int, threads: int) -> None:
    from common.device.backend import resolve_device
    from common.model import parallel

    device = resolve_device("cpu")
    device.setup_worker(threads)
    parallel.init_model_parallel(
        rank=rank,
        world_size=world_size,
        master_addr="127.0.0.1",
        master_port=port,
        device=device,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        seed=0,
    )


def _entry(rank, world_size, port, tp, pp, fn, args, results):
    from common.model import parallel

    try:
        init_world(rank, world_size, port, tp, pp, threads=1)
        # As bytes, not as tensors: a queued tensor travels as a file descriptor this process must
        # still hold when the parent reads it; on a loaded machine the rank had often exited by
        # then ("ConnectionResetError: Connection reset by peer" in the parent).
        buf = io.BytesIO()
        torch.save(fn(*args), buf)
        results.put((rank, True, buf.getvalue()))
    except BaseException:  # report any failure to the parent, which raises it
        results.put((rank, False, traceback.format_exc()))
    finally:
        parallel.destroy_model_parallel()


def run_world(fn, *args, world_size: int, tp: int, pp: int = 1, timeout: float = 240.0) -> list:
    """fn(*args) on each rank of a world_size-process world; returns the per-rank results."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_entry, args=(rank, world_size, port, tp, pp, fn, args, results))
        for rank in range(world_size)
    ]
    for proc in procs:
        proc.start()
    out = [None] * world_size
    deadline = time.monotonic() + timeout
    gone_since = None
    try:
        for _ in range(world_size):
            while True:
                try:
                    rank, ok, payload = results.get(timeout=1.0)
                    break
                except queue.Empty:
                    # a rank that died without reporting (crash in start-up, signal) fails the call now
                    dead = [
                        (r, p.exitcode) for r, p in enumerate(procs) if p.exitcode not in (None, 0) and out[r] is None
                    ]
                    if dead:
                        raise RuntimeError(f"rank(s) exited without a result (rank, exit code): {dead}") from None
                    if all(p.exitcode is not None for p in procs):
                        gone_since = gone_since or time.monotonic()
                        if time.monotonic() - gone_since > 10:
                            raise RuntimeError(
                                f"all ranks exited but only {sum(o is not None for o in out)} of {world_size} reported"
                            ) from None
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"world of {world_size} ranks did not finish in {timeout}s") from None
            if not ok:
                raise RuntimeError(f"rank {rank} failed:\n{payload}")
            out[rank] = torch.load(io.BytesIO(payload), weights_only=False)
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
    return out
