"""Make the Llama-3 tokenizer directory from PyPI alone (no Hugging Face Hub access needed).

    python -m tools.fetch_tokenizer --out assets/llama3_tokenizer

Meta's tiktoken BPE file ``llama3/tokenizer.model`` ships inside the ``llama-models==0.3.0``
wheel. We fetch the wheel with ``pip download --no-deps`` and read the one file out of the zip,
so neither the package nor its dependencies get installed (an installed copy of that exact
version is used as a shortcut). The file's sha256 is checked against the pinned value, then
transformers' tiktoken converter turns it into ``tokenizer.json``; ``tokenizer_config.json``
gets the special tokens (bos <|begin_of_text|>, eos and pad <|eot_id|>) and our chat template.
The result is checked against tiktoken itself and known ids before it is moved into place.

Running it again is a no-op when the directory is complete and current (``--force`` rebuilds).
"""

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile

PACKAGE, VERSION = "llama-models", "0.3.0"
MEMBER = "llama_models/llama3/tokenizer.model"
TOKENIZER_MODEL_SHA256 = "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55"
PIP_COMMAND = [
    sys.executable,
    "-m",
    "pip",
    "download",
    "--no-deps",
    "--disable-pip-version-check",
    "--quiet",
    f"{PACKAGE}=={VERSION}",
]

# From llama_models/llama3/tokenizer.py (0.3.0): Tokenizer.pat_str and the special tokens.
PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_SPECIAL_TOKENS = 256
NAMED_SPECIAL_TOKENS = [
    "<|begin_of_text|>",  # 128000
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",  # 128006
    "<|end_header_id|>",
    "<|eom_id|>",  # 128008, end of message
    "<|eot_id|>",  # 128009, end of turn
    "<|python_tag|>",
    "<|image|>",
]
BOS, EOS = "<|begin_of_text|>", "<|eot_id|>"
OUTPUT_FILES = ("tokenizer.json", "tokenizer_config.json", "source.json")


def llama3_special_tokens() -> list[str]:
    """All 256 special tokens in id order (128000..128255), named as Meta's tokenizer.py names them."""
    reserved = [f"<|reserved_special_token_{2 + i}|>" for i in range(NUM_SPECIAL_TOKENS - len(NAMED_SPECIAL_TOKENS))]
    return NAMED_SPECIAL_TOKENS + reserved


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_complete(out: str) -> bool:
    """True when ``out`` holds a tokenizer built from the pinned file with the current template."""
    from common.prompts.tokenizer import LLAMA3_CHAT_TEMPLATE

    if not all(os.path.isfile(os.path.join(out, f)) for f in OUTPUT_FILES):
        return False
    try:
        with open(os.path.join(out, "source.json")) as f:
            source = json.load(f)
        with open(os.path.join(out, "tokenizer_config.json")) as f:
            config = json.load(f)
    except json.JSONDecodeError:
        return False  # a damaged file: rebuild
    return source.get("sha256") == TOKENIZER_MODEL_SHA256 and config.get("chat_template") == LLAMA3_CHAT_TEMPLATE


def read_from_wheel(wheel_path: str) -> bytes:
    if not zipfile.is_zipfile(wheel_path):
        raise SystemExit(
            f"fetch_tokenizer: {wheel_path} is not a wheel (zip) file; give the {PACKAGE}=={VERSION} wheel"
        )
    with zipfile.ZipFile(wheel_path) as wheel:
        if MEMBER not in wheel.namelist():
            raise SystemExit(f"fetch_tokenizer: {wheel_path} has no {MEMBER}; give the {PACKAGE}=={VERSION} wheel")
        return wheel.read(MEMBER)


def read_tokenizer_model(force_download: bool, wheel: str | None) -> tuple[bytes, str]:
    """Return (bytes of tokenizer.model, where they came from)."""
    if wheel:
        return read_from_wheel(wheel), f"wheel {wheel}"
    if not force_download:
        spec = importlib.util.find_spec("llama_models")  # locates the package without importing it
        if spec is not None and spec.origin and _installed_version() == VERSION:
            path = os.path.join(os.path.dirname(spec.origin), "llama3", "tokenizer.model")
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    data = f.read()
                if sha256(data) == TOKENIZER_MODEL_SHA256:
                    return data, f"installed {PACKAGE}=={VERSION} ({path})"
    with tempfile.TemporaryDirectory(prefix="fetch_tokenizer_") as tmp:
        print(f"downloading {PACKAGE}=={VERSION} (wheel only, no dependencies) ...", flush=True)
        result = subprocess.run(PIP_COMMAND + ["--dest", tmp], capture_output=True, text=True)
        wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if result.returncode != 0 or not wheels:
            raise SystemExit(
                f"fetch_tokenizer: could not download the {PACKAGE}=={VERSION} wheel from PyPI "
                f"(pip exit code {result.returncode}):\n{result.stderr.strip()}\n"
                f"Check network access to PyPI and retry, or fetch the wheel where PyPI is reachable with "
                f"`pip download --no-deps {PACKAGE}=={VERSION} -d DIR` and pass it with "
                f"`--wheel DIR/llama_models-{VERSION}-py3-none-any.whl`"
            )
        return read_from_wheel(os.path.join(tmp, wheels[0])), f"PyPI wheel {wheels[0]}"


def _installed_version():
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None


def convert(model_path: str):
    """tiktoken BPE file -> transformers fast tokenizer with Llama-3's specials and template."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from common.prompts.tokenizer import LLAMA3_CHAT_TEMPLATE

    backend = TikTokenConverter(
        vocab_file=model_path, pattern=PATTERN, extra_special_tokens=llama3_special_tokens()
    ).converted()
    # Like Meta's own tokenizer.json: plain encode() starts with <|begin_of_text|>.
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS}:0 $A:0",
                pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1",
                special_tokens=[(BOS, backend.token_to_id(BOS))],
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,  # Llama-3 has no pad token
        chat_template=LLAMA3_CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
    )


def _portable_class_name(config_path: str) -> None:
    """transformers 5 saves its own class name ("TokenizersBackend"); the name Meta's Llama-3
    repos use, "PreTrainedTokenizerFast", loads in transformers 4 and 5 alike (other tools,
    e.g. a TRL comparison run, may use an older transformers)."""
    with open(config_path) as f:
        config = json.load(f)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
        f.write("\n")


def check(out: str, model_path: str) -> None:
    """Compare the written tokenizer with tiktoken on the same file, and with known ids."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    from common.prompts.tokenizer import load_tokenizer, render_prompt_ids

    tok = load_tokenizer(out)
    specials = llama3_special_tokens()
    ranks = load_tiktoken_bpe(model_path)
    reference = tiktoken.Encoding(
        name="llama3",
        pat_str=PATTERN,
        mergeable_ranks=ranks,
        special_tokens={t: len(ranks) + i for i, t in enumerate(specials)},
    )
    samples = [
        "Hello world",
        " leading space, numbers 1234567 and émojis 🙂\n\n\tTabs  ",
        "def f(x):\n    return x**2  # it's fine, isn't it?",
        "日本語のテキストも",
    ]
    for text in samples:
        got, want = tok(text, add_special_tokens=False)["input_ids"], reference.encode(text)
        if got != want:
            raise SystemExit(
                f"fetch_tokenizer: converted tokenizer disagrees with tiktoken on {text!r}: {got} != {want}"
            )
    expected = {
        "vocab size": (len(tok), 128256),
        "'Hello world'": (tok("Hello world", add_special_tokens=False)["input_ids"], [9906, 1917]),
        "bos": (tok.bos_token_id, 128000),
        "eos": (tok.eos_token_id, 128009),
        "pad": (tok.pad_token_id, 128009),
        "<|start_header_id|>": (tok.convert_tokens_to_ids("<|start_header_id|>"), 128006),
        "<|eom_id|>": (tok.convert_tokens_to_ids("<|eom_id|>"), 128008),
        "last special": (tok.convert_tokens_to_ids(specials[-1]), 128255),
        "chat prompt": (
            render_prompt_ids(tok, "Hi"),
            [128000, 128006, 882, 128007, 271, 13347, 128009, 128006, 78191, 128007, 271],
        ),
    }
    for name, (got, want) in expected.items():
        if got != want:
            raise SystemExit(f"fetch_tokenizer: check failed for {name}: got {got}, expected {want}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory to write (e.g. assets/llama3_tokenizer)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the directory is complete")
    parser.add_argument(
        "--download", action="store_true", help=f"always download the wheel, even if {PACKAGE}=={VERSION} is installed"
    )
    parser.add_argument("--wheel", help=f"use this already downloaded {PACKAGE}=={VERSION} wheel file")
    args = parser.parse_args(argv)
    out = args.out

    if not args.force and is_complete(out):
        print(
            f"{out}: Llama-3 tokenizer already present (tokenizer.model sha256 {TOKENIZER_MODEL_SHA256[:12]}...); "
            "nothing to do"
        )
        return
    start = time.time()
    data, origin = read_tokenizer_model(force_download=args.download, wheel=args.wheel)
    digest = sha256(data)
    if digest != TOKENIZER_MODEL_SHA256:
        raise SystemExit(
            f"fetch_tokenizer: {MEMBER} from {origin} has sha256 {digest}, expected "
            f"{TOKENIZER_MODEL_SHA256}; the file is not Meta's Llama-3 tokenizer, refusing to use it"
        )
    print(f"got {MEMBER} from {origin}; sha256 ok", flush=True)

    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch_tokenizer_", dir=os.path.dirname(os.path.abspath(out))) as tmp:
        model_path = os.path.join(tmp, "tokenizer.model")
        with open(model_path, "wb") as f:
            f.write(data)
        print("converting to a Hugging Face fast tokenizer ...", flush=True)
        build = os.path.join(tmp, "build")
        convert(model_path).save_pretrained(build, save_jinja_files=False)  # template in tokenizer_config.json
        _portable_class_name(os.path.join(build, "tokenizer_config.json"))
        with open(os.path.join(build, "source.json"), "w") as f:
            json.dump(
                {
                    "package": f"{PACKAGE}=={VERSION}",
                    "member": MEMBER,
                    "sha256": digest,
                    "licence": "Llama 3 Community License (Meta)",
                },
                f,
                indent=2,
            )
            f.write("\n")
        check(build, model_path)
        # Move file by file so an existing, incomplete directory is repaired without deleting
        # anything else a user keeps there.
        os.makedirs(out, exist_ok=True)
        for name in os.listdir(build):
            os.replace(os.path.join(build, name), os.path.join(out, name))
    print(f"wrote {out} (vocab 128256, bos {BOS}, eos/pad {EOS}) in {time.time() - start:.1f}s")


if __name__ == "__main__":
    main()
