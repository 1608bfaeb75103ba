"""Convert Llama-3-family checkpoints between Hugging Face format and this project's Megatron format.

    python -m tools.convert_checkpoint hf-to-mcore --hf DIR --out DIR --tp N --pp N [--dtype fp32|bf16|fp16]
    python -m tools.convert_checkpoint mcore-to-hf --ckpt DIR --out DIR [--tokenizer DIR] [--dtype ...]
    python -m tools.convert_checkpoint reshard     --ckpt DIR --out DIR --tp N --pp N
    python -m tools.convert_checkpoint mcore-to-mindspeed --ckpt DIR --out DIR --tp N --pp N [--dtype ...]

The kind follows the HF config: LlamaForCausalLM -> policy, LlamaForSequenceClassification with
num_labels=1 -> reward model (its `score` head is our ScalarHead). Tensors keep their dtype unless
--dtype is given (the workers cast on load). The Megatron format (one safetensors file per
(TP rank, PP stage) + arch.json + meta.json) is described in common/weights/convert.py; it loads into any
TP/PP, so --tp/--pp here only choose the fast path (a direct shard copy). Every --ckpt may also be a
MindSpeed-LLM Megatron checkpoint (latest_checkpointed_iteration.txt + iter_*/mp_rank_*), and
mcore-to-mindspeed writes one (as its convert_ckpt.py --save-model-type mg does), for a trained final/
to go back to MindSpeed-LLM (docs/from_mindspeed.md). Runs in one process on
CPU, no torch.distributed; peak memory is about two pipeline stages' weights.

--out is a new or empty folder, or this command's own earlier output of the same kind, which is
replaced (a checkpoint: meta.json + arch.json; an HF export: odpo_export.json); it is never an
input, inside one or around one. Every error is one `convert_checkpoint: error: ...` line, exit 2.

Examples (Llama-3.2-1B: 8 KV heads, 16 layers; Llama-3-8B: 8 KV heads, 32 layers):

    python -m tools.convert_checkpoint hf-to-mcore --hf models/Llama-3.2-1B-Instruct --out ckpt/llama32_1b_tp4 --tp 4 --pp 1
    python -m tools.convert_checkpoint hf-to-mcore --hf models/Meta-Llama-3-8B-Instruct --out ckpt/llama3_8b_tp8_pp2 --tp 8 --pp 2
    python -m tools.convert_checkpoint mcore-to-hf --ckpt ckpt/llama3_8b_tp8_pp2 --out export/llama3_8b --tokenizer models/Meta-Llama-3-8B-Instruct --dtype bf16
    python -m tools.convert_checkpoint mcore-to-mindspeed --ckpt runs/llama32_1b/final --out ckpt/llama32_1b_mg_tp1 --tp 1 --pp 1 --dtype bf16
"""

from __future__ import annotations

import argparse
import sys

from common.config.dtypes import DTYPE_NAMES


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="tensor", file=sys.stderr)


def _dtype(name: str | None):
    from common.config.dtypes import torch_dtype

    return None if name is None else torch_dtype(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.convert_checkpoint",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    sub = parser.add_subparsers(dest="command", required=True)
    to_mcore = sub.add_parser("hf-to-mcore", help="HF model directory -> Megatron checkpoint (TP x PP)")
    to_mcore.add_argument("--hf", required=True, help="HF directory: config.json + *.safetensors")
    to_mcore.add_argument(
        "--out",
        required=True,
        help="checkpoint folder to write: new, empty, or a checkpoint of this project (replaced)",
    )
    to_mcore.add_argument("--tp", type=int, default=1, help="tensor-parallel size (divides the KV-head count)")
    to_mcore.add_argument("--pp", type=int, default=1, help="pipeline-parallel size (divides the layer count)")
    to_mcore.add_argument("--dtype", choices=DTYPE_NAMES, help="cast tensors (default: keep)")
    to_hf = sub.add_parser("mcore-to-hf", help="Megatron checkpoint (any TP x PP) -> HF model directory")
    to_hf.add_argument(
        "--ckpt", required=True, help="checkpoint directory (meta.json, arch.json, model_tp*_pp*.safetensors)"
    )
    to_hf.add_argument(
        "--out", required=True, help="HF folder to write: new, empty, or an earlier mcore-to-hf export (replaced)"
    )
    to_hf.add_argument("--tokenizer", help="HF tokenizer directory whose files (and chat template) are copied")
    to_hf.add_argument("--dtype", choices=DTYPE_NAMES, help="cast tensors (default: keep)")
    reshard = sub.add_parser("reshard", help="Megatron checkpoint -> the same weights for another TP x PP")
    reshard.add_argument("--ckpt", required=True)
    reshard.add_argument("--out", required=True)
    reshard.add_argument("--tp", type=int, required=True)
    reshard.add_argument("--pp", type=int, required=True)
    to_ms = sub.add_parser("mcore-to-mindspeed", help="checkpoint -> MindSpeed-LLM Megatron folder (TP x PP)")
    to_ms.add_argument("--ckpt", required=True, help="checkpoint directory (e.g. a run's final/)")
    to_ms.add_argument(
        "--out", required=True, help="folder to write: new, empty, or an earlier mcore-to-mindspeed output"
    )
    to_ms.add_argument("--tp", type=int, default=1, help="tensor-parallel size of the MindSpeed role that loads it")
    to_ms.add_argument("--pp", type=int, default=1, help="pipeline-parallel size of that role")
    to_ms.add_argument(
        "--dtype", choices=DTYPE_NAMES, help="cast tensors (default: keep; MindSpeed's converter writes bf16)"
    )
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except ValueError as e:  # every problem with the inputs, argparse-style: one line, exit 2
        parser.error(str(e))
    except OSError as e:  # e.g. --out on a read-only file system
        parser.error(f"{e.filename or args.out}: {e.strerror}; pick a writable --out")


def _run(args: argparse.Namespace) -> int:
    from common.model import weight_layout
    from common.weights import convert, hf_format

    if args.command == "hf-to-mcore":
        cfg = hf_format.read_hf_config(args.hf)
        arch = hf_format.arch_from_hf_config(cfg)
        reward = hf_format.is_reward_config(cfg)
        weight_layout.check_layout(arch, args.tp, args.pp)
        convert.check_output_dir(args.out, "checkpoint", {"--hf": args.hf})
        total = len(weight_layout.megatron_param_names(arch, reward=reward)) + (
            1 if arch.tie_word_embeddings and args.pp > 1 else 0
        )
        with _progress(total, f"hf-to-mcore tp={args.tp} pp={args.pp}") as bar:
            convert.import_hf(args.hf, args.out, tp=args.tp, pp=args.pp, dtype=_dtype(args.dtype), progress=bar.update)
        kind = "reward model" if reward else "policy"
        print(f"wrote {args.out}: {kind}, {arch.num_layers} layers, tp={args.tp} pp={args.pp}")
    elif args.command == "mcore-to-hf":
        reader = convert.open_checkpoint(args.ckpt)
        convert.check_output_dir(args.out, "hf-export", {"--ckpt": args.ckpt, "--tokenizer": args.tokenizer})
        total = len(weight_layout.megatron_param_names(reader.arch, reward=reader.reward))
        with _progress(total, "mcore-to-hf") as bar:
            convert.export_hf(args.ckpt, args.out, args.tokenizer, dtype=_dtype(args.dtype), progress=bar.update)
        note = "" if args.tokenizer else " (no --tokenizer: add tokenizer files before loading it with a tokenizer)"
        print(f"wrote {args.out}{note}")
    elif args.command == "mcore-to-mindspeed":
        from common.weights.mindspeed import write_mindspeed

        reader = convert.open_checkpoint(args.ckpt)
        weight_layout.check_layout(reader.arch, args.tp, args.pp)
        convert.check_output_dir(args.out, "mindspeed", {"--ckpt": args.ckpt})
        total = len(weight_layout.megatron_param_names(reader.arch, reward=reader.reward)) + (
            1 if reader.arch.tie_word_embeddings and args.pp > 1 else 0
        )
        with _progress(total, f"mcore-to-mindspeed tp={args.tp} pp={args.pp}") as bar:
            write_mindspeed(args.out, reader, reader.arch, reward=reader.reward, tp=args.tp, pp=args.pp,
                            dtype=_dtype(args.dtype), progress=bar.update,
                            may_replace=convert.may_replace("mindspeed"))  # fmt: skip
        kind = "reward model" if reader.reward else "policy"
        print(f"wrote {args.out}: MindSpeed-LLM Megatron checkpoint, {kind}, tp={args.tp} pp={args.pp}")
    else:
        reader = convert.open_checkpoint(args.ckpt)
        weight_layout.check_layout(reader.arch, args.tp, args.pp)
        convert.check_output_dir(args.out, "checkpoint", {"--ckpt": args.ckpt})
        total = len(weight_layout.megatron_param_names(reader.arch, reward=reader.reward)) + (
            1 if reader.arch.tie_word_embeddings and args.pp > 1 else 0
        )
        with _progress(total, f"reshard tp={args.tp} pp={args.pp}") as bar:
            convert.write_checkpoint(
                args.out,
                reader,
                reader.arch,
                reward=reader.reward,
                tp=args.tp,
                pp=args.pp,
                hf_config=reader.optional_json("hf_config.json"),
                hf_generation_config=reader.optional_json("hf_generation_config.json"),
                progress=bar.update,
            )
        print(f"wrote {args.out}: tp={args.tp} pp={args.pp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
