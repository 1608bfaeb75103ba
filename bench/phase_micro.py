"""Quick A/B timing of the BENCH CONFIG phases in one process (no Ray, no TRL).

    .venv/bin/python bench/phase_micro.py                  # prompt lengths 65 and 359, best of 3
    .venv/bin/python bench/phase_micro.py --prompt-lens 359 --phases reward --repeats 5

Builds the policy and reward model of the BENCH CONFIG (bench/workload.py) in a 1-rank gloo world and
times, on 16 sequences (8 prompts x 2 samples) of prompt length ~L + 64 response tokens, what the
workers do: reference log-probs (forward), reward scores (each prompt once, the last layer at the
score positions: common/reward/forward.py), the policy's forward + backward (no optimizer), and
generation. Each phase runs two ways, interleaved so that both see the same
machine load: `now` (the project's code) and `dense_full` (the way it was before: Megatron's dense
DotProductAttention with a [B, 1, T, T] mask, and the output layer + cross entropy over every
position). Best of --repeats each. For checking a change quickly; bench/vs_trl.py is the measure
that counts.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial

import torch

import bench.workload as w


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt-lens", type=int, nargs="+", default=[65, 359])
    p.add_argument("--phases", nargs="+", default=["reference", "reward", "train", "generate"])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from common.device.backend import resolve_device
    from common.generate.generation import generate
    from common.model import llama as M
    from common.model import parallel
    from common.reward.forward import shared_prompt_scores
    from common.train.logprobs import logprob_inputs
    from common.train.schedule import run_microbatches
    from common.train.sequences import Sequence, pad_batch, summed_response_logps

    device = resolve_device("cpu")
    device.setup_worker(w.THREADS)
    parallel.init_model_parallel(rank=0, world_size=1, master_addr="127.0.0.1", master_port=29517, device=device,
                                 tensor_model_parallel_size=1, pipeline_model_parallel_size=1, seed=0)  # fmt: skip
    arch = M.LlamaArch(**w.ARCH)
    models = {
        "now": (
            M.build_policy(arch, dtype=torch.float32, seed=0),
            M.build_reward_model(arch, dtype=torch.float32, seed=1).eval(),
        )
    }
    project_spec = M._layer_spec
    M._layer_spec = lambda: get_gpt_layer_local_spec(normalization="RMSNorm")  # Megatron's dense attention
    models["dense_full"] = (
        M.build_policy(arch, dtype=torch.float32, seed=0),
        M.build_reward_model(arch, dtype=torch.float32, seed=1).eval(),
    )
    M._layer_spec = project_spec

    g = torch.Generator().manual_seed(0)
    for L in args.prompt_lens:
        seqs = []
        for i in range(w.PROMPTS_PER_ITER):
            prompt = torch.randint(0, 128000, (max(L - 3 * i, 8),), generator=g).tolist()  # mixed lengths
            seqs += [
                Sequence(prompt, torch.randint(0, 128000, (w.NEW_TOKENS,), generator=g).tolist())
                for _ in range(w.SAMPLES)
            ]
        b = pad_batch(seqs)
        pos_BT, mask, labels_BT = logprob_inputs(b.ids_BT, b.valid_BT)

        # this length's inputs bound as defaults: the loop rebinds the names for the next length
        def phase(name, variant, b=b, seqs=seqs, pos_BT=pos_BT, mask=mask, labels_BT=labels_BT):
            policy, reward = models[variant]
            if name == "reference":
                with torch.no_grad():
                    if variant == "now":
                        run_microbatches(
                            policy,
                            [b],
                            lambda bb, x: (x.new_zeros(()), {"s": summed_response_logps(x, bb)}),
                            forward_only=True,
                        )
                    else:
                        summed_response_logps(-policy(b.ids_BT, pos_BT, mask, labels=labels_BT)[:, :-1], b)
            elif name == "reward":
                with torch.no_grad():
                    if variant == "now":  # each prompt once, the last layer at the score positions only
                        shared_prompt_scores(
                            reward, seqs, [len(s.prompt_ids) + len(s.response_ids) - 1 for s in seqs], len(seqs)
                        )
                    else:
                        reward(b.ids_BT, pos_BT, mask)
            elif name == "train":
                policy.zero_grad()
                if variant == "now":
                    run_microbatches(
                        policy, [b], lambda bb, x: (summed_response_logps(x, bb).mean(), {}), forward_only=False
                    )
                else:
                    summed_response_logps(
                        -policy(b.ids_BT, pos_BT, mask, labels=labels_BT)[:, :-1], b
                    ).mean().backward()
            else:
                generate(policy, [s.prompt_ids for s in seqs], max_new_tokens=w.NEW_TOKENS, temperature=w.TEMPERATURE, top_k=0,
                         top_p=1.0, eos_token_ids=[128009], sample_keys=list(range(len(seqs))))  # fmt: skip

        for name in args.phases:
            best = {v: float("inf") for v in models}
            for v in models:
                phase(name, v)  # warm-up
            for _ in range(args.repeats):
                for v in models:
                    best[v] = min(best[v], timed(partial(phase, name, v)))
            print(
                f"prompt ~{L} tokens, {name:<9}: now {best['now']:.3f}s  dense_full {best['dense_full']:.3f}s  "
                f"speed-up {best['dense_full'] / best['now']:.2f}x",
                flush=True,
            )
    parallel.destroy_model_parallel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
