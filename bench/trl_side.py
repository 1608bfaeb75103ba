"""TRL's side of bench/vs_trl.py: TRL 1.16 ``OnlineDPOTrainer`` on the BENCH CONFIG, real sampling.

    .venv/bin/python bench/trl_side.py --prompts PROMPTS.jsonl --iters 12 --out trl.jsonl

Run as its own process by bench/vs_trl.py (which samples the memory of that process). Hugging Face
Llama models of the BENCH CONFIG shapes (bench/workload.py), random init: the policy from
``torch.manual_seed(POLICY_SEED)``, the ``LlamaForSequenceClassification`` reward model from
``REWARD_SEED``; the reference is TRL's own frozen copy of the policy. Nothing in TRL is replaced:
its methods are only wrapped with timers. Writes one JSON line per iteration: wall-clock begin and
end, seconds per phase (generate, reference, reward; train = the rest of the step: the policy's
forward, backward and optimizer step), and the prompt and response length of every sequence.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import bench.workload as w


def llama_config(*, reward: bool):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=w.ARCH["vocab_size"], hidden_size=w.ARCH["hidden_size"], intermediate_size=w.ARCH["ffn_hidden_size"],
        num_hidden_layers=w.ARCH["num_layers"], num_attention_heads=w.ARCH["num_attention_heads"],
        num_key_value_heads=w.ARCH["num_query_groups"], max_position_embeddings=w.ARCH["max_position_embeddings"],
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": w.ARCH["rope_theta"]},
        tie_word_embeddings=False, attention_dropout=0.0, num_labels=1,
        bos_token_id=128000, eos_token_id=128009, pad_token_id=128009 if reward else None,
    )  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=Path, required=True, help="JSONL of {'prompt': text}, in order")
    p.add_argument("--iters", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--workdir", type=Path, required=True)
    args = p.parse_args()

    import torch

    torch.set_num_threads(w.THREADS)
    import datasets
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification, TrainerCallback
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    from common.prompts.tokenizer import load_tokenizer

    prompts = [json.loads(line)["prompt"] for line in args.prompts.read_text().splitlines()]
    out = open(args.out, "w")
    phase: dict = {}

    class TimedTrainer(OnlineDPOTrainer):
        def _generate(self, model, prompts, images=None):
            start = time.perf_counter()
            result = super()._generate(model, prompts, images)
            phase["generate"] = phase.get("generate", 0.0) + time.perf_counter() - start
            prompt_mask, completion_mask = result[1], result[3]
            phase["prompt_lens"] = prompt_mask.sum(1).tolist()
            phase["response_lens"] = completion_mask.sum(1).tolist()
            return result

        def _forward(self, model, *a, **k):
            start = time.perf_counter()
            result = super()._forward(model, *a, **k)
            if model is self.ref_model:  # the policy's forward is part of `train`
                phase["reference"] = phase.get("reference", 0.0) + time.perf_counter() - start
            return result

        def _calculate_rewards_from_functions(self, *a, **k):
            start = time.perf_counter()
            result = super()._calculate_rewards_from_functions(*a, **k)
            phase["reward"] = phase.get("reward", 0.0) + time.perf_counter() - start
            return result

    class StepTimes(TrainerCallback):
        def on_step_begin(self, args_, state, control, **kw):
            phase.clear()
            phase["begin"] = time.time()
            phase["t0"] = time.perf_counter()

        def on_step_end(self, args_, state, control, **kw):
            step = time.perf_counter() - phase.pop("t0")
            row = {"step": state.global_step, "begin": phase.pop("begin"), "end": time.time(), "timing/step": step}
            for name in ("generate", "reference", "reward"):
                row[f"timing/{name}"] = phase.get(name, 0.0)
            row["timing/train"] = step - sum(row[f"timing/{n}"] for n in ("generate", "reference", "reward"))
            row["prompt_lens"], row["response_lens"] = phase["prompt_lens"], phase["response_lens"]
            out.write(json.dumps(row) + "\n")
            out.flush()

    tok = load_tokenizer(str(w.TOKENIZER))
    torch.manual_seed(w.POLICY_SEED)
    policy = LlamaForCausalLM(llama_config(reward=False))
    torch.manual_seed(w.REWARD_SEED)
    reward = LlamaForSequenceClassification(llama_config(reward=True))
    config = OnlineDPOConfig(
        output_dir=str(args.workdir / "trl_out"),
        per_device_train_batch_size=w.PROMPTS_PER_ITER,
        gradient_accumulation_steps=1,
        max_steps=args.iters,
        learning_rate=w.LR,
        lr_scheduler_type="constant",
        max_grad_norm=w.MAX_GRAD_NORM,
        beta=w.BETA,
        loss_type="sigmoid",
        missing_eos_penalty=w.MISSING_EOS_PENALTY,
        max_new_tokens=w.NEW_TOKENS,
        max_length=w.MAX_LENGTH,
        temperature=w.TEMPERATURE,
        top_p=w.TOP_P,
        top_k=w.TOP_K,
        gradient_checkpointing=False,
        disable_dropout=True,
        bf16=False,
        fp16=False,
        use_cpu=True,
        train_sampling_strategy="sequential",  # file order, as the project's no_shuffle
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=w.POLICY_SEED,
    )
    dataset = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": q}]} for q in prompts])
    trainer = TimedTrainer(
        model=policy, reward_funcs=reward, args=config, train_dataset=dataset,
        processing_class=tok, reward_processing_classes=load_tokenizer(str(w.TOKENIZER)), callbacks=[StepTimes()],
    )  # fmt: skip
    trainer.train()
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
