"""The tokenizer: load it, render chat prompts to ids, and say which ids end a response.

The Llama-3 tokenizer directory is made once by ``python -m tools.fetch_tokenizer --out <dir>``
(Meta's tiktoken file converted to a Hugging Face fast tokenizer). ``LLAMA3_CHAT_TEMPLATE`` is
written here, the single source the tool copies into ``tokenizer_config.json``.
"""

import os
from typing import TYPE_CHECKING

from common.prompts.messages import normalize_prompt

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# Llama-3 chat format: <|begin_of_text|>, then per message
#   <|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>
# and, to ask for a reply, the assistant header. Unlike Meta's Hugging Face template, content
# is not trimmed (a prompt is rendered exactly as given) and an empty system turn is skipped.
# The '\n\n' below are Jinja string escapes, as in every Hugging Face chat template.
LLAMA3_CHAT_TEMPLATE = (
    "{{- '<|begin_of_text|>' -}}"
    "{%- for message in messages -%}"
    "{%- if not (message['role'] == 'system' and message['content'] == '') -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}"
    "{%- endif -%}"
)


def load_tokenizer(path: str) -> "PreTrainedTokenizerFast":
    """Load a local Hugging Face fast-tokenizer directory (never downloads from the Hub).

    transformers is imported here, not at module level, so reading the template (as
    tools/fetch_tokenizer does to see whether there is work to do) costs no transformers import.
    """
    from transformers import AutoTokenizer

    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        raise ValueError(
            f"tokenizer {path}: no tokenizer.json there; create it with "
            f"`python -m tools.fetch_tokenizer --out {path}` (or point to another Hugging Face tokenizer directory)"
        )
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if not tok.is_fast:
        raise ValueError(f"tokenizer {path}: not a fast tokenizer; give a directory with tokenizer.json")
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer {path}: no eos_token; set eos_token in its tokenizer_config.json")
    if not tok.chat_template:
        raise ValueError(
            f"tokenizer {path}: no chat_template; re-create it with "
            f"`python -m tools.fetch_tokenizer --out {path}` or add one to tokenizer_config.json"
        )
    return tok


def stop_token_ids(tok) -> list[int]:
    """Ids that end a response: the eos token (<|eot_id|> for Llama-3 chat) and <|end_of_text|>,
    which a base model emits instead."""
    ids = {tok.eos_token_id}
    end_of_text = tok.convert_tokens_to_ids("<|end_of_text|>")
    if end_of_text is not None and end_of_text != tok.unk_token_id:
        ids.add(end_of_text)
    return sorted(ids)


def render_prompt_ids(tok, prompt) -> list[int]:
    """Render a prompt (string or messages) with the chat template, ready for the assistant reply.

    The template writes its special tokens itself (Llama 3: <|begin_of_text|>), so the text is
    encoded without special tokens added, as ``apply_chat_template(tokenize=True)`` does; encoding
    it the default way would start it with two BOS tokens. A BOS is prepended only for a tokenizer
    that adds one to plain text and a template that did not write it. (SmolLM2's BOS is
    <|im_start|>, which its ChatML template writes at every turn.)
    """
    messages = normalize_prompt(prompt, "prompt")
    specials = _special_token_strings(tok)
    for m in messages:
        # A literal "<|eot_id|>" in a prompt would be read as the control token and break the turn
        # structure; refuse rather than train on a silently different prompt.
        found = [s for s in specials if s in m["content"]]
        if found:
            raise ValueError(
                f"prompt {m['content'][:60]!r}: contains the special token {found[0]}; remove it from the prompt text"
            )
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    bos = tok.bos_token_id
    if bos is not None:
        if (not ids or ids[0] != bos) and _adds_bos(tok):
            ids = [bos] + ids
        assert not (len(ids) > 1 and ids[0] == ids[1] == bos), "BOS doubled at the start of a rendered prompt"
    return ids


def _adds_bos(tok) -> bool:
    """Whether the tokenizer starts plain text with BOS (then the model expects one)."""
    cached = getattr(tok, "_dpo_adds_bos", None)
    if cached is None:
        cached = tok("a")["input_ids"][:1] == [tok.bos_token_id]
        tok._dpo_adds_bos = cached
    return cached


def _special_token_strings(tok) -> list[str]:
    cached = getattr(tok, "_dpo_special_strings", None)
    if cached is None:
        cached = [t.content for t in tok.added_tokens_decoder.values() if t.special]
        tok._dpo_special_strings = cached
    return cached
