"""TRL's side of bench/vs_trl.py: TRL 1.16 ``OnlineDPOTrainer`` on one of its workloads, real sampling.

    .venv/bin/python bench/trl_side.py --prompts PROMPTS.jsonl --iters 12 --out trl.jsonl --workdir DIR
    .venv/bin/python bench/trl_side.py --workload one_gpu --device cuda --prompts P.jsonl --iters 6 --out trl.jsonl --workdir DIR

Run as its own process by bench/vs_trl.py (which samples the memory of that process). Hugging Face
Llama models of the workload's shapes (bench/workload.py: the BENCH CONFIG's constants, or the
llama32_1b recipe's one_gpu overlay read from its config: tied embeddings, llama3 RoPE scaling),
random init, built on the workload's device in its dtype (bf16 on a GPU: TRL's AdamW then steps the
bf16 weights, as for a model loaded in bf16, with ``bf16=True``): the policy from
``torch.manual_seed(policy_seed)``, the ``LlamaForSequenceClassification`` reward model from
``reward_seed``; the reference is TRL's own frozen copy of the policy. Sampling (temperature, top-k,
top-p, new tokens, missing-EOS penalty), batch, beta, learning rate and clipping are the workload's.
Nothing in TRL is replaced: its methods are only wrapped with timers (on CUDA each timer
synchronizes the device where it starts and stops, so a phase's queued kernels are its own). Writes
one JSON line per iteration: wall-clock begin and end, seconds per phase (generate, reference,
reward; train = the rest of the step: the policy's forward, backward and optimizer step), the prompt
and response length of every sequence, and on CUDA the GPU's name, its dense bf16 peak
(common/device/backend.py's table) and ``torch.cuda.max_memory_allocated`` so far (reset once the
models are built). transformers warns that the one_gpu model's ``original_max_position_embeddings``
(8192) is not below ``max_position_embeddings`` (the recipe's 8192): a warning only, the llama3
frequencies do not depend on the latter.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import bench.workload as w

BOS_ID, EOS_ID = 128000, 128009  # the Llama 3 tokenizer's <|begin_of_text|> and <|eot_id|> (both workloads)
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def rope_parameters(arch: dict) -> dict:
    """transformers' ``rope_parameters`` for a LlamaArch dict: llama3 scaling when the config has it."""
    if arch.get("rope_scaling_factor") is None:
        return {"rope_type": "default", "rope_theta": arch["rope_theta"]}
    return {
        "rope_type": "llama3",
        "rope_theta": arch["rope_theta"],
        "factor": arch["rope_scaling_factor"],
        "low_freq_factor": arch["rope_low_freq_factor"],
        "high_freq_factor": arch["rope_high_freq_factor"],
        "original_max_position_embeddings": arch["rope_original_max_position_embeddings"],
    }


def hf_config(wl: w.Workload, *, reward: bool) -> dict:
    """``LlamaConfig`` keyword arguments of the workload's policy (or reward model)."""
    a = wl.reward_arch if reward else wl.arch
    return dict(
        vocab_size=a["vocab_size"], hidden_size=a["hidden_size"], intermediate_size=a["ffn_hidden_size"],
        num_hidden_layers=a["num_layers"], num_attention_heads=a["num_attention_heads"],
        num_key_value_heads=a["num_query_groups"], max_position_embeddings=a["max_position_embeddings"],
        rms_norm_eps=a["rms_norm_eps"], rope_parameters=rope_parameters(a),
        tie_word_embeddings=a["tie_word_embeddings"], attention_dropout=0.0, num_labels=1,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID if reward else None,
    )  # fmt: skip


def unsupported(wl: w.Workload) -> list[str]:
    """What of the workload TRL's OnlineDPOTrainer cannot run as this project does (empty: all of it)."""
    problems = []
    if wl.samples != 2:
        problems.append(f"{wl.samples} samples per prompt (OnlineDPOTrainer samples 2)")
    if wl.lr_schedule != "constant":
        problems.append(f"lr schedule {wl.lr_schedule!r} (only 'constant' is mapped)")
    if wl.steps_per_iter != 1:
        problems.append(f"{wl.steps_per_iter} optimizer steps per iteration (OnlineDPOTrainer takes 1)")
    if not wl.no_shuffle:
        problems.append("shuffled prompts (TRL's side walks the file in order)")
    if wl.dtype not in TORCH_DTYPES:
        problems.append(f"dtype {wl.dtype} (fp32 or bf16)")
    return problems


def trainer_settings(wl: w.Workload, iters: int, workdir: Path) -> dict:
    """``OnlineDPOConfig`` keyword arguments of the workload: its batch, sampling, DPO and optimizer
    settings, on its device and in its precision."""
    return dict(
        output_dir=str(workdir / "trl_out"),
        per_device_train_batch_size=wl.prompts_per_iter,
        gradient_accumulation_steps=1,
        max_steps=iters,
        learning_rate=wl.lr,
        lr_scheduler_type="constant",
        max_grad_norm=wl.max_grad_norm,
        adam_beta1=wl.adam_betas[0],
        adam_beta2=wl.adam_betas[1],
        weight_decay=wl.weight_decay,
        beta=wl.beta,
        loss_type=wl.loss_type,
        missing_eos_penalty=wl.missing_eos_penalty,
        max_new_tokens=wl.new_tokens,
        max_length=wl.max_length,
        temperature=wl.temperature,
        top_p=wl.top_p,
        top_k=wl.top_k,
        gradient_checkpointing=False,
        disable_dropout=True,
        bf16=wl.dtype == "bf16",
        fp16=False,
        use_cpu=wl.device == "cpu",
        train_sampling_strategy="sequential",  # file order, as the project's no_shuffle
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=wl.policy_seed,
    )


def build_models(wl: w.Workload):
    """(policy, reward model): random init on the workload's device, then cast to its dtype."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    dtype = getattr(torch, TORCH_DTYPES[wl.dtype])
    with torch.device(wl.device):
        torch.manual_seed(wl.policy_seed)
        policy = LlamaForCausalLM(LlamaConfig(**hf_config(wl, reward=False)))
        torch.manual_seed(wl.reward_seed)
        reward = LlamaForSequenceClassification(LlamaConfig(**hf_config(wl, reward=True)))
    return policy.to(dtype), reward.to(dtype)


def device_fields(wl: w.Workload) -> dict:
    """What every row records about the device: nothing on CPU; on CUDA the GPU's name and dense
    bf16 peak (None where the table has none, e.g. in fp32)."""
    if wl.device != "cuda":
        return {}
    import torch

    from common.device.backend import resolve_device

    peak, source = resolve_device("cuda").peak_flops(getattr(torch, TORCH_DTYPES[wl.dtype]))
    return {"device_name": torch.cuda.get_device_name(), "peak_flops": peak, "peak_source": source}


def timed_trainer(phase: dict, sync):
    """An OnlineDPOTrainer subclass whose generation, reference forward and reward scoring add their
    seconds to `phase` (`sync()` where each starts and ends)."""
    from trl.experimental.online_dpo import OnlineDPOTrainer

    def add(name: str, start: float) -> None:
        sync()
        phase[name] = phase.get(name, 0.0) + time.perf_counter() - start

    class TimedTrainer(OnlineDPOTrainer):
        def _generate(self, model, prompts, images=None):
            sync()
            start = time.perf_counter()
            result = super()._generate(model, prompts, images)
            add("generate", start)
            prompt_mask, completion_mask = result[1], result[3]
            phase["prompt_lens"] = prompt_mask.sum(1).tolist()
            phase["response_lens"] = completion_mask.sum(1).tolist()
            return result

        def _forward(self, model, *a, **k):
            sync()
            start = time.perf_counter()
            result = super()._forward(model, *a, **k)
            if model is self.ref_model:  # the policy's forward is part of `train`
                add("reference", start)
            return result

        def _calculate_rewards_from_functions(self, *a, **k):
            sync()
            start = time.perf_counter()
            result = super()._calculate_rewards_from_functions(*a, **k)
            add("reward", start)
            return result

    return TimedTrainer


def step_times(phase: dict, out, sync, device: dict, wl: w.Workload):
    """A TrainerCallback writing one JSON row per step to `out` (see the module docstring)."""
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def on_step_begin(self, args_, state, control, **kw):
            sync()
            phase.clear()
            phase["begin"] = time.time()
            phase["t0"] = time.perf_counter()

        def on_step_end(self, args_, state, control, **kw):
            sync()
            step = time.perf_counter() - phase.pop("t0")
            row = {"step": state.global_step, "begin": phase.pop("begin"), "end": time.time(), "timing/step": step}
            for name in ("generate", "reference", "reward"):
                row[f"timing/{name}"] = phase.get(name, 0.0)
            row["timing/train"] = step - sum(row[f"timing/{n}"] for n in ("generate", "reference", "reward"))
            row["prompt_lens"], row["response_lens"] = phase["prompt_lens"], phase["response_lens"]
            if wl.device == "cuda":
                import torch

                row.update(device, gpu_max_allocated=torch.cuda.max_memory_allocated())
            out.write(json.dumps(row) + "\n")
            out.flush()

    return StepTimes()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=Path, required=True, help="JSONL of {'prompt': text}, in order")
    p.add_argument("--iters", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--workload", choices=w.WORKLOADS, default="bench")
    p.add_argument("--scale", choices=w.SCALES, default="full")
    p.add_argument("--device", choices=w.DEVICES, default="cpu")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    w.check_device(args.device)
    wl = w.workload(args.workload, args.scale, args.device)
    if problems := unsupported(wl):
        raise SystemExit(f"error: TRL's side cannot run workload {wl.name}: {'; '.join(problems)}")

    import torch

    if wl.device == "cpu":
        torch.set_num_threads(w.THREADS)
    import datasets
    from trl.experimental.online_dpo import OnlineDPOConfig

    from common.prompts.messages import normalize_prompt
    from common.prompts.tokenizer import load_tokenizer

    sync = torch.cuda.synchronize if wl.device == "cuda" else (lambda: None)
    prompts = [json.loads(line)["prompt"] for line in args.prompts.read_text().splitlines()]
    out = open(args.out, "w")
    phase: dict = {}
    tok = load_tokenizer(wl.tokenizer)
    policy, reward = build_models(wl)
    if wl.device == "cuda":
        torch.cuda.reset_peak_memory_stats()  # the peak of training, not of the fp32 init before the cast
    config = OnlineDPOConfig(**trainer_settings(wl, args.iters, args.workdir))
    # a text prompt is one user turn; a message list as the project reads it (an empty system turn dropped)
    dataset = datasets.Dataset.from_list([{"prompt": normalize_prompt(q, str(args.prompts))} for q in prompts])
    trainer = timed_trainer(phase, sync)(
        model=policy, reward_funcs=reward, args=config, train_dataset=dataset, processing_class=tok,
        reward_processing_classes=load_tokenizer(wl.tokenizer),
        callbacks=[step_times(phase, out, sync, device_fields(wl), wl)],
    )  # fmt: skip
    trainer.train()
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
