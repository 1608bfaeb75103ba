"""The original system's preprocessed prompts (MindSpeed-LLM ``preprocess_data.py --handler-name
PPOAlpacaStyleInstructionHandler``): a Megatron indexed dataset, read with megatron-core's own reader.

For a prefix ``P`` (the original's ``data_path``, e.g. ``./dataset/descriptiveness/descriptiveness``)
the files are ``P_packed_input_ids_document.bin/.idx`` (int32, one sequence per document) and
``P_packed_attention_mask_document.bin/.idx`` (all ones, same lengths; only checked when present).
Each record is the Llama-3 rendering of one prompt, ready for the reply and without EOS:
``<|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\n{prompt}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n``
(a system turn, when the data had one, before the user's). Facts and sources:
``../shared/reference/seed-formats.md`` section 2.

The stored ids are what generation uses, unchanged. The prompt text (for rollouts.jsonl, reward
re-rendering and reward functions) is recovered by splitting each record at the header special
tokens and decoding the pieces in between. Two checks keep the two in step:

- The recovered messages, rendered with the Llama-3 template (the one the original used), must give
  back exactly the stored ids, for every record, or loading fails: a mismatch means the ids do not
  decode to the text that made them (another tokenizer made the data), so a reward model or function
  would score a prompt the policy never saw.
- Rendering them with this run's own renderer (``render_prompt_ids``: the tokenizer's chat template)
  is compared on the first records only, and a difference is a warning: the text is right, the
  tokenizer's template just formats prompts differently (Meta's adds a dated system turn), and the
  original's own format, which the stored ids keep, is what the user ran before.

Documents are numbered from 0 in messages, as ``IndexedDataset[i]`` numbers them.
"""

import os
import struct
import warnings

import numpy as np

from common.prompts.messages import normalize_prompt
from common.prompts.tokenizer import render_prompt_ids

IDS = "_packed_input_ids_document"  # preprocess_data.py: f"{prefix}_packed_{key}_{level}"
MASK = "_packed_attention_mask_document"
HEADER_TOKENS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
# what the original writes, for the error messages: preprocess_data.py --handler-name ... --prompt-type llama3
LLAMA3_RECORD = "<|begin_of_text|>[<|start_header_id|>system<|end_header_id|>\\n\\n...<|eot_id|>]<|start_header_id|>user<|end_header_id|>\\n\\n...<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n"
HANDLER = "preprocess_data.py --handler-name PPOAlpacaStyleInstructionHandler --prompt-type llama3"
TEMPLATE_CHECKS = 8  # records compared with render_prompt_ids (the warning); the Llama-3 check covers all


# ----------------------------------------------------------------------------- names on disk


def indexed_prefix(path) -> str | None:
    """The user prefix ``P`` when ``path`` names the original's indexed prompt dataset, else None.

    ``path`` may be ``P`` itself (the original's ``data_path``), ``P_packed_input_ids_document`` (the
    prefix ``IndexedDataset`` takes) or one of the files (``.bin``/``.idx``, attention-mask ones too).
    It counts as a dataset when either input_ids file exists, so that a half-copied pair reaches
    ``read_indexed`` and its clear error instead of "not found".
    """
    p = os.fspath(path)
    for field in (IDS, MASK):
        for tail in (field + ".bin", field + ".idx", field):
            if p.endswith(tail):
                p = p[: -len(tail)]
                break
        else:
            continue
        break
    if not p or p.endswith(os.sep):
        return None
    return p if any(os.path.isfile(p + IDS + ext) for ext in (".bin", ".idx")) else None


def is_indexed_prefix(path) -> bool:
    return indexed_prefix(path) is not None


def indexed_files(prefix: str) -> list[str]:
    """The input_ids ``.idx`` and ``.bin`` of ``prefix`` (either form), both checked to exist."""
    p = indexed_prefix(prefix)
    if p is None:
        raise ValueError(
            f"indexed dataset {prefix}: no {prefix}{IDS}.bin/.idx; give the prefix preprocess_data.py "
            f"wrote (its --output-prefix, without `_packed`)"
        )
    idx, bin_ = p + IDS + ".idx", p + IDS + ".bin"
    for have, missing in ((bin_, idx), (idx, bin_)):
        if not os.path.isfile(missing):
            raise ValueError(
                f"indexed dataset {p}: {os.path.basename(have)} is there but {os.path.basename(missing)} is missing; "
                f"the two are one dataset: copy the missing file from where the data was preprocessed, "
                f"or run {HANDLER} again"
            )
    return [idx, bin_]


# ----------------------------------------------------------------------------- opening (no tokenizer)


def _header(idx_path: str) -> str:
    """What the .idx starts with, for an error message only (megatron-core reads the file)."""
    try:
        with open(idx_path, "rb") as f:
            head = f.read(18)
    except OSError as e:
        return f"a file that cannot be opened ({e.strerror})"
    magic = head[:9]
    version = struct.unpack("<Q", head[9:17])[0] if len(head) >= 17 else None
    code = head[17] if len(head) >= 18 else None
    return f"magic {magic!r}, version {version}, dtype code {code} ({os.path.getsize(idx_path)} bytes)"


def _open(path_prefix: str, idx_path: str):
    from common.util.quiet import filter_library_warnings

    filter_library_warnings()  # Megatron's "Transformer Engine and Apex are not installed" on import
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset.__new__(IndexedDataset)
    try:
        ds.__init__(path_prefix, mmap=True)
        return ds
    except (AssertionError, ValueError, KeyError, IndexError, struct.error, OSError) as e:
        # megatron-core's __del__ deletes both unconditionally: without them a refused file would
        # also print "Exception ignored in: IndexedDataset.__del__" with a traceback
        for name in ("bin_reader", "index"):
            if not hasattr(ds, name):
                setattr(ds, name, None)
        # megatron-core asserts on the magic and version; DType(code) raises ValueError for an unknown dtype
        raise ValueError(
            f"indexed dataset {idx_path}: megatron-core's IndexedDataset cannot read it ({e or type(e).__name__}; "
            f"found {_header(idx_path)}); supported: magic b'MMIDIDX\\x00\\x00', version 1, an integer dtype "
            f"code (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 8 uint16; {HANDLER} writes 4, int32): "
            "copy the file again, or run the preprocessing again"
        ) from e


def open_indexed(prefix: str):
    """Open the input_ids dataset of ``prefix`` with megatron-core's ``IndexedDataset`` (memory-mapped)
    after every check that needs no tokenizer: both files there, not empty, a header megatron-core
    reads, integer ids, one sequence per document, a ``.bin`` of the size the ``.idx`` describes,
    and, when present, attention-mask files of the same lengths. Returns ``(dataset, prefix)``."""
    idx, bin_ = indexed_files(prefix)
    p = idx[: -len(IDS + ".idx")]
    if os.path.getsize(bin_) == 0:
        raise ValueError(
            f"indexed dataset {p}: {os.path.basename(bin_)} is empty (no records); "
            "preprocess a prompt file with at least one row"
        )
    ds = _open(p + IDS, idx)
    dtype = np.dtype(ds.index.dtype)
    if dtype.kind not in "iu":
        raise ValueError(
            f"indexed dataset {idx}: holds {dtype} values; token ids must be integers "
            f"({HANDLER} writes int32): this is not a tokenized prompt dataset"
        )
    n = len(ds)
    if n == 0:
        raise ValueError(f"indexed dataset {p}: no records; preprocess a prompt file with at least one row")
    lengths = ds.sequence_lengths
    if not np.array_equal(ds.document_indices, np.arange(n + 1)):
        raise ValueError(
            f"indexed dataset {p}: {len(ds.document_indices) - 1} documents hold {n} sequences; {HANDLER} "
            "writes one prompt per document (this looks like pretraining data or --split-sentences): "
            "preprocess the prompts with that handler"
        )
    expected = int(lengths.sum(dtype=np.int64)) * dtype.itemsize
    if os.path.getsize(bin_) != expected:
        raise ValueError(
            f"indexed dataset {p}: {os.path.basename(bin_)} has {os.path.getsize(bin_)} bytes but its .idx "
            f"describes {expected}; the two files are not one pair (or a copy was cut short): copy both again"
        )
    mask_idx, mask_bin = p + MASK + ".idx", p + MASK + ".bin"
    if os.path.isfile(mask_idx) and os.path.isfile(mask_bin):  # optional: only the input_ids are used
        mask = _open(p + MASK, mask_idx)
        if not np.array_equal(mask.sequence_lengths, lengths):
            raise ValueError(
                f"indexed dataset {p}: the attention_mask files hold {len(mask)} records whose lengths differ "
                f"from the {n} input_ids records; they come from different runs of the preprocessing: "
                f"delete the {MASK} files (they are not needed) or preprocess again"
            )
    return ds, p


def read_records(ds, start: int = 0, stop: int | None = None) -> list[list[int]]:
    """Records ``start..stop`` of an open dataset as lists of ints (one read of the memory map)."""
    stop = len(ds) if stop is None else stop
    if stop <= start:
        return []
    return [a.tolist() for a in ds[start:stop]]


# ----------------------------------------------------------------------------- records -> prompts


def check_vocab(ids: list[list[int]], tok, prefix: str, first: int = 0) -> None:
    """Every id is a token of ``tok`` (``0 <= id < len(tok)``); else an error naming the document."""
    vocab = len(tok)
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter((t for x in ids for t in x), dtype=np.int64, count=int(lengths.sum()))
    bad = np.flatnonzero((flat < 0) | (flat >= vocab))
    if bad.size == 0:
        return
    ends = np.cumsum(lengths)
    docs = np.unique(np.searchsorted(ends, bad, side="right"))
    i = int(docs[0])
    value = int(flat[bad[0]])
    raise ValueError(
        f"indexed dataset {prefix} document {first + i}: token id {value} is outside the tokenizer's "
        f"vocabulary (0..{vocab - 1}, {getattr(tok, 'name_or_path', '')}); {docs.size} of {len(ids)} documents "
        "read have such ids: use the tokenizer the data was preprocessed with (preprocess_data.py "
        "--tokenizer-name-or-path), or prepare the raw prompts with `python -m data.prepare`"
    )


def _special_ids(tok, label: str) -> tuple[int, int, int, int]:
    ids = []
    for token in HEADER_TOKENS:
        i = tok.convert_tokens_to_ids(token)
        if i is None or tok.convert_ids_to_tokens(i) != token:
            raise ValueError(
                f"{label}: the tokenizer {getattr(tok, 'name_or_path', '')} has no {token} token, "
                f"and the records are in the Llama-3 chat format ({HANDLER}); use the Llama-3 tokenizer the data "
                "was preprocessed with"
            )
        ids.append(i)
    return tuple(ids)


def record_messages(ids: list[int], tok, where: str, specials: tuple[int, int, int, int] | None = None) -> list[dict]:
    """One stored record -> its ``{role, content}`` messages (checked by ``normalize_prompt``).

    Split at the special tokens, never by searching decoded text: a prompt may contain text that
    looks like a header. Each turn is ``<|start_header_id|>role<|end_header_id|>`` + ``\\n\\n`` +
    content + ``<|eot_id|>``; the record must open with BOS and close with the assistant header.
    """
    bos, sh, eh, eot = specials or _special_ids(tok, where)
    backend = tok.backend_tokenizer

    def text(piece: list[int]) -> str:  # the Rust decoder: no clean-up of spaces, specials kept
        return backend.decode(piece, skip_special_tokens=False)

    def fail(found: str):
        raise ValueError(
            f"{where}: {found}; expected a record in the Llama-3 format {HANDLER} writes: "
            f"{LLAMA3_RECORD}; preprocess the prompts with --prompt-type llama3, or prepare the raw prompts "
            "with `python -m data.prepare`"
        )

    if not ids or ids[0] != bos:
        fail(f"it starts with {text(ids[:1]) if ids else 'nothing'!r} instead of <|begin_of_text|>")
    messages, pos, n = [], 1, len(ids)
    while True:
        if pos >= n:
            fail("it ends without the assistant header (it was cut, or the data holds responses too)")
        if ids[pos] != sh:
            fail(f"token {pos} is {text(ids[pos : pos + 1])!r} where <|start_header_id|> should open a turn")
        end = _find(ids, eh, pos + 1)
        if end < 0:
            fail(f"the header at token {pos} has no <|end_header_id|>")
        role = text(ids[pos + 1 : end])
        close = _find(ids, eot, end + 1)
        if close < 0:  # the last header: the assistant's, then "\n\n", then nothing
            if role != "assistant" or text(ids[end + 1 :]) != "\n\n":
                fail(f"its last turn ({role!r}, token {pos}) has no <|eot_id|> and is not the bare assistant header")
            break
        body = ids[end + 1 : close]
        if bos in body or sh in body or eh in body:
            fail(f"the {role!r} turn at token {pos} holds a header token before its <|eot_id|>")
        content = text(body)
        if not content.startswith("\n\n"):
            fail(f"the {role!r} turn at token {pos} does not start with a blank line after its header")
        messages.append({"role": role, "content": content[2:]})
        pos = close + 1
    return normalize_prompt(messages, where)


def _find(ids: list[int], token: int, start: int) -> int:
    try:
        return ids.index(token, start)
    except ValueError:
        return -1


def as_raw(messages: list[dict]):
    """As ``common.prompts.prepared.raw_prompts`` gives a stored prompt: a lone user turn as its string."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return messages


def records_messages(ids: list[list[int]], tok, prefix: str, first: int = 0) -> list[list[dict]]:
    """Vocabulary check, then each record's messages (records ``first..`` of ``prefix``)."""
    check_vocab(ids, tok, prefix, first)
    specials = _special_ids(tok, f"indexed dataset {prefix}")
    return [
        record_messages(x, tok, f"indexed dataset {prefix} document {first + i}", specials) for i, x in enumerate(ids)
    ]


def first_difference(stored: list[int], other: list[int]) -> str:
    k = next((i for i, (x, y) in enumerate(zip(stored, other)) if x != y), min(len(stored), len(other)))
    return f"first difference at token {k}: {len(stored)} stored, {len(other)} again"


def check_text_round_trip(ids: list[list[int]], tok, prefix: str) -> None:
    """Each run of ordinary tokens between the header tokens decodes to text that encodes back to
    exactly those tokens. The tokenizer splits text at special tokens before anything else, so this
    is the same as rendering the recovered messages with the Llama-3 template and comparing every id,
    and the error can show the piece of text that does not come back. One batched decode and encode:
    0.4-0.9 s for 5,400 prompts (262k tokens) on 2 busy cores, about what rendering them costs."""
    specials = set(_special_ids(tok, f"indexed dataset {prefix}"))
    runs, owner = [], []
    for i, x in enumerate(ids):
        start = 0
        for k, t in enumerate(x):
            if t in specials:
                if k > start:
                    runs.append(x[start:k])
                    owner.append(i)
                start = k + 1
        if len(x) > start:
            runs.append(x[start:])
            owner.append(i)
    backend = tok.backend_tokenizer
    texts = backend.decode_batch(runs, skip_special_tokens=False)
    for run, text, again, i in zip(runs, texts, backend.encode_batch_fast(texts, add_special_tokens=False), owner):
        if again.ids != run:
            raise ValueError(
                f"indexed dataset {prefix} document {i}: its text {text[:40]!r} does not encode back to "
                f"the stored ids ({first_difference(run, again.ids)}): the ids do not decode to the text that "
                "made them, so the data was tokenized by another tokenizer; use the tokenizer the data was "
                "preprocessed with (preprocess_data.py --tokenizer-name-or-path)"
            )


# ----------------------------------------------------------------------------- what training loads


def read_indexed(prefix: str, tok) -> tuple[list[list[int]], list, dict]:
    """Read the original's indexed prompt dataset: ``(ids, raw prompts, info)``.

    ``ids`` are exactly the stored records; ``raw`` the recovered prompts (a string for a lone user
    turn, else messages); ``info`` the prefix, counts, dtype, whether the attention-mask files were
    checked and whether the tokenizer's own template renders the prompts to the same ids.
    """
    ds, p = open_indexed(prefix)
    ids = read_records(ds)
    info = {
        "prefix": p,
        "documents": len(ids),
        "tokens": int(ds.sequence_lengths.sum(dtype=np.int64)),
        "max_length": int(ds.sequence_lengths.max()),
        "dtype": np.dtype(ds.index.dtype).name,
        "attention_mask_checked": os.path.isfile(p + MASK + ".idx") and os.path.isfile(p + MASK + ".bin"),
    }
    del ds  # the lists are copies: the memory map can go
    messages = records_messages(ids, tok, p)
    check_text_round_trip(ids, tok, p)
    raw = [as_raw(m) for m in messages]
    differ = [i for i in range(min(TEMPLATE_CHECKS, len(raw))) if render_prompt_ids(tok, raw[i]) != ids[i]]
    info["template_matches"] = not differ
    if differ:
        i = differ[0]
        warnings.warn(
            f"indexed dataset {p}: the tokenizer's chat template ({getattr(tok, 'name_or_path', '')}) renders "
            f"document {i} differently from the stored ids ({first_difference(ids[i], render_prompt_ids(tok, raw[i]))}); "
            "generation uses the stored ids (the original's Llama-3 format, as the original run did); the recovered "
            "text is exact and goes to the reward and the logs",
            stacklevel=2,
        )
    return ids, raw, info
