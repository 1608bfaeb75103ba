"""Checked messages -> prompt token ids, fast, and identical to ``common.prompts.tokenizer.render_prompt_ids``.

Two engines give the same ids:

- ``hf``: render the text (the Llama-3 template by string formatting, any other template by the
  tokenizer's Jinja ``apply_chat_template``) and batch-encode it with the Hugging Face fast
  tokenizer (Rust). Always available; the reference.
- ``tiktoken``: for the Llama-3 template on a byte-level BPE tokenizer converted from tiktoken
  (Llama 3's own): the special tokens split the text into pieces that are encoded independently,
  so the ids are ``[BOS] + [SH] role [EH] enc("\\n\\n" + content) [EOT] ... + assistant header``
  with only ``enc(...)`` computed per message, by tiktoken, ~4x faster per core than the HF
  tokenizer here. The tiktoken encoding is built from the tokenizer's own vocabulary (ranks =
  ids) and pre-tokenizer regex; ``auto`` uses it only when the tokenizer has exactly that shape,
  and ``spot_check`` compares a sample of every chunk with the ``hf`` engine.
"""

import json

from common.prompts.tokenizer import LLAMA3_CHAT_TEMPLATE

LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
ENGINES = ("auto", "tiktoken", "hf")
TEMPLATES = ("tokenizer", "llama3")


def llama3_text(messages: list[dict]) -> str:
    """``LLAMA3_CHAT_TEMPLATE`` with ``add_generation_prompt=True``, by string formatting (messages
    already checked by ``normalize_prompt``, so no empty system turn is left)."""
    turns = "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>" for m in messages)
    return f"<|begin_of_text|>{turns}<|start_header_id|>assistant<|end_header_id|>\n\n"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte <-> printable character table used by byte-level BPE vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tiktoken_encoding(tok):
    """A tiktoken Encoding equal to ``tok`` on ordinary text, or ``(None, reason)`` when ``tok``
    is not a tiktoken-shaped byte-level BPE (then the ``hf`` engine is used). Built once per
    tokenizer object (about a second for a 128k vocabulary) and kept on it."""
    cached = getattr(tok, "_prompt_tiktoken", None)
    if cached is None or cached[0] != len(tok):
        cached = (len(tok), _build_tiktoken(tok))
        tok._prompt_tiktoken = cached
    return cached[1]


def _build_tiktoken(tok):
    try:
        import tiktoken
    except ImportError:
        return None, "tiktoken is not installed"
    spec = json.loads(tok.backend_tokenizer.to_str())
    model, pre = spec["model"], spec.get("pre_tokenizer") or {}
    if spec.get("normalizer") is not None:
        return None, "the tokenizer has a normalizer"
    if (
        model.get("type") != "BPE"
        or not model.get("ignore_merges")
        or model.get("dropout")
        or model.get("continuing_subword_prefix")
        or model.get("end_of_word_suffix")
        or model.get("byte_fallback")
    ):
        return None, "the model is not a plain byte-level BPE with ignore_merges"
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if (
        len(steps) != 2
        or steps[0].get("type") != "Split"
        or "Regex" not in steps[0].get("pattern", {})
        or steps[0].get("behavior") != "Isolated"
        or steps[0].get("invert")
        or steps[1].get("type") != "ByteLevel"
        or steps[1].get("use_regex")
        or steps[1].get("add_prefix_space")
    ):
        return None, "the pre-tokenizer is not Split(regex) + ByteLevel"
    for t in spec["added_tokens"]:
        if not t["special"] or t["lstrip"] or t["rstrip"] or t["single_word"] or t["normalized"]:
            return None, f"added token {t['content']!r} is not a plain special token"
    u2b = {c: b for b, c in _bytes_to_unicode().items()}
    try:
        ranks = {bytes(u2b[c] for c in piece): i for piece, i in model["vocab"].items()}
    except KeyError:
        return None, "the vocabulary is not byte-level"
    # tiktoken merges by the rank of the merged token; the HF model by merge order. They agree
    # when merges are ordered by the rank of their result, as tiktoken conversions write them.
    merged = [
        ranks.get(bytes(u2b[c] for c in (a + b)))
        for a, b in (m if isinstance(m, list) else m.split(" ", 1) for m in model["merges"])
    ]
    if None in merged or any(x > y for x, y in zip(merged, merged[1:])):
        return None, "the merges are not ordered by token rank"
    pattern = steps[0]["pattern"]["Regex"]
    return tiktoken.Encoding(name="prompt-encoder", pat_str=pattern, mergeable_ranks=ranks, special_tokens={}), ""


class PromptEncoder:
    """Renders checked message lists to prompt ids in batches, with the chosen template and engine."""

    def __init__(self, tok, template: str = "tokenizer", engine: str = "auto"):
        if template not in TEMPLATES:
            raise ValueError(f"template {template!r}: use one of {', '.join(TEMPLATES)}")
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r}: use one of {', '.join(ENGINES)}")
        self.tok, self.backend = tok, tok.backend_tokenizer
        self.template_name = template
        self.template_text = LLAMA3_CHAT_TEMPLATE if template == "llama3" else tok.chat_template
        if not self.template_text:
            raise ValueError(
                f"tokenizer {tok.name_or_path}: no chat_template; use --template llama3 "
                "or a tokenizer directory with a chat template"
            )
        self.is_llama3 = self.template_text == LLAMA3_CHAT_TEMPLATE
        self.bos = tok.bos_token_id
        self.specials = [t.content for t in tok.added_tokens_decoder.values() if t.special]
        self._special_prefixes = sorted({s[:2] for s in self.specials})
        self.fast, reason = None, ""
        if engine != "hf":
            ids = {s: tok.convert_tokens_to_ids(s) for s in LLAMA3_SPECIALS}
            if not self.is_llama3:
                reason = "the template is not the Llama-3 template"
            elif any(s not in self.specials for s in LLAMA3_SPECIALS):
                reason = "the tokenizer lacks the Llama-3 special tokens"
            else:
                self.fast, reason = tiktoken_encoding(tok)
            if self.fast is not None:
                self._bos, sh, eh, self._eot = (ids[s] for s in LLAMA3_SPECIALS)
                enc = self.fast.encode_ordinary
                self._head = {role: [sh, *enc(role), eh] for role in ("system", "user", "assistant")}
                self._tail = self._head["assistant"] + enc("\n\n")
        if engine == "tiktoken" and self.fast is None:
            raise ValueError(
                f"engine tiktoken: not usable with this tokenizer and template ({reason}); use --engine hf"
            )
        self.engine = "tiktoken" if self.fast is not None else "hf"
        self.engine_reason = reason

    # --------------------------------------------------------------------- checks

    def special_token_in(self, messages: list[dict]) -> str | None:
        """The first special-token string found in any content (cheap prefix test first)."""
        for m in messages:
            content = m["content"]
            if any(p in content for p in self._special_prefixes):
                for s in self.specials:
                    if s in content:
                        return s
        return None

    # --------------------------------------------------------------------- encoding

    def render_text(self, messages: list[dict]) -> str:
        if self.is_llama3:
            return llama3_text(messages)
        return self.tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, chat_template=self.template_text
        )

    def encode_hf(self, batch: list[list[dict]]) -> list[list[int]]:
        """The reference: rendered text, encoded without added specials, one BOS (as render_prompt_ids)."""
        encodings = self.backend.encode_batch([self.render_text(m) for m in batch], add_special_tokens=False)
        out = []
        for e in encodings:
            ids = e.ids
            if self.bos is not None:
                if not ids or ids[0] != self.bos:
                    ids = [self.bos] + ids
                if ids.count(self.bos) != 1:
                    raise ValueError(
                        f"the template writes <BOS> {ids.count(self.bos)} times; "
                        "use a chat template that writes it at most once"
                    )
            out.append(ids)
        return out

    def encode(self, batch: list[list[dict]]) -> list[list[int]]:
        if self.fast is None:
            return self.encode_hf(batch)
        enc, head, eot = self.fast.encode_ordinary, self._head, self._eot
        out = []
        for messages in batch:
            ids = [self._bos]
            for m in messages:
                ids += head[m["role"]]
                ids += enc("\n\n" + m["content"])
                ids.append(eot)
            ids += self._tail
            out.append(ids)
        return out

    def spot_check(self, batch: list[list[dict]], ids: list[list[int]], where: list[str], every: int = 128) -> None:
        """Compare every ``every``-th row of the fast engine with the ``hf`` engine."""
        if self.fast is None:
            return
        picks = list(range(0, len(batch), every))
        reference = self.encode_hf([batch[i] for i in picks])
        for i, ref in zip(picks, reference):
            if ids[i] != ref:
                raise ValueError(
                    f"{where[i]}: the tiktoken engine gives different ids than the Hugging Face "
                    "tokenizer for this prompt; run with --engine hf (and report the row)"
                )

    def truncate_left(self, messages: list[dict], max_len: int) -> tuple[list[dict], list[int]] | None:
        """Cut tokens off the start of the last (user) message until the prompt fits ``max_len``;
        everything after it, the assistant header included, is kept. ``None`` when it cannot fit
        (the other turns and headers alone are too long, or no user text would be left)."""
        content = messages[-1]["content"]
        offsets = self.backend.encode(content, add_special_tokens=False).offsets
        over = len(self.encode([messages])[0]) - max_len
        k = over
        while 0 < k < len(offsets):
            rest = content[offsets[k][0] :]
            if not rest.strip():
                return None
            candidate = messages[:-1] + [{"role": messages[-1]["role"], "content": rest}]
            ids = self.encode([candidate])[0]
            if len(ids) <= max_len:
                return candidate, ids
            k += len(ids) - max_len  # token boundaries can shift after a cut; cut a little more
        return None
