"""Quick per-phase timing of the BENCH CONFIG models in one process (no Ray, no TRL).

    .venv/bin/python bench/phase_micro.py                  # prompt lengths 65 and 359, 3 repeats
    .venv/bin/python bench/phase_micro.py --prompt-lens 359 --phases reward --repeats 5

Builds the policy and reward model of the BENCH CONFIG (bench/workload.py) in a 1-rank gloo world and
times, on 16 sequences (8 prompts x 2 samples) of prompt length L + 64 response tokens, what the
workers do: reference log-probs (forward), reward scores (forward), the policy's forward + backward
(no optimizer), and generation. Best of --repeats; for A/B checks of a change before running
bench/vs_trl.py, which is the measure that counts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import bench.workload as w  # noqa: E402


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt-lens", type=int, nargs="+", default=[65, 359])
    p.add_argument("--phases", nargs="+", default=["reference", "reward", "train", "generate"])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    from common import parallel
    from common.device import resolve_device
    from common.generation import generate
    from common.model import LlamaArch, build_policy, build_reward_model
    from common.schedule import run_microbatches
    from common.sequences import Sequence, pad_batch, summed_response_logps

    device = resolve_device("cpu")
    device.setup_worker(w.THREADS)
    parallel.init_model_parallel(rank=0, world_size=1, master_addr="127.0.0.1", master_port=29517, device=device,
                                 tensor_model_parallel_size=1, pipeline_model_parallel_size=1, seed=0)  # fmt: skip
    arch = LlamaArch(**w.ARCH)
    policy = build_policy(arch, dtype=torch.float32, seed=w.POLICY_SEED)
    reward = build_reward_model(arch, dtype=torch.float32, seed=w.REWARD_SEED).eval()
    g = torch.Generator().manual_seed(0)
    for L in args.prompt_lens:
        seqs = []
        for i in range(w.PROMPTS_PER_ITER):
            prompt = torch.randint(0, 128000, (L - 3 * i,), generator=g).tolist()  # mixed lengths, as real batches
            seqs += [Sequence(prompt, torch.randint(0, 128000, (w.NEW_TOKENS,), generator=g).tolist()) for _ in range(w.SAMPLES)]
        batch = pad_batch(seqs)
        times = {}

        def reference():
            with torch.no_grad():
                run_microbatches(policy, [batch], lambda b, x: (x.new_zeros(()), {"s": summed_response_logps(x, b)}), forward_only=True)

        def score():
            with torch.no_grad():
                run_microbatches(reward, [batch], lambda b, x: (x.new_zeros(()), {}), forward_only=True, output="scores")

        def train():
            policy.zero_grad()
            run_microbatches(policy, [batch], lambda b, x: (summed_response_logps(x, b).mean(), {}), forward_only=False)

        def gen():
            prompts = [s.prompt_ids for s in seqs]
            generate(policy, prompts, max_new_tokens=w.NEW_TOKENS, temperature=w.TEMPERATURE, top_k=0, top_p=1.0,
                     eos_token_ids=[128009], generator=torch.Generator().manual_seed(0))  # fmt: skip

        for name, fn in (("reference", reference), ("reward", score), ("train", train), ("generate", gen)):
            if name in args.phases:
                times[name] = best_of(fn, args.repeats)
        print(f"prompt length {L}: " + "  ".join(f"{k} {v:.3f}s" for k, v in times.items()), flush=True)
    parallel.destroy_model_parallel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
