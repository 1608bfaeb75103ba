"""A reward model with its own tokenizer or chat template: decode, re-render, re-tokenize (as TRL).

When the reward model's tokenizer is the policy's (same vocabulary and merges, same chat
template), it reads the policy's own prompt + response ids: nothing is decoded, and the recipes'
curves stay what they were. Otherwise each response is decoded with the policy tokenizer (special
tokens skipped: ``Rollout.texts_PN``), the conversation ``prompt messages + {"role": "assistant",
"content": response}`` is rendered with the reward tokenizer's chat template, and that text is
tokenized with the reward tokenizer without adding special tokens (the template writes them),
exactly TRL's ``OnlineDPOTrainer`` path for a reward model.

The re-rendered ids are split into (prompt, response) at the end of the reward template's
rendering of the prompt alone (with the generation prompt), so ``reward.score_position`` keeps its
meaning: ``eos`` reads the score at the reward tokenizer's end-of-turn token that closes the
assistant message, ``before_eos`` at the token before it (TRL's reading when the pad token is the
end-of-turn token, as with Llama 3).
"""

from __future__ import annotations

from pathlib import Path

from common.prompts.messages import normalize_prompt
from common.prompts.tokenizer import load_tokenizer, stop_token_ids
from common.train.sequences import Sequence


def same_tokenization(a, b) -> bool:
    """True when two fast tokenizers give the same ids for every conversation: same tokenizer.json
    (vocabulary, merges, normalizer, special tokens) and the same chat template."""
    return a.chat_template == b.chat_template and a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()


class RewardRetokenizer:
    """Renders (prompt, decoded response) into the reward model's own ids."""

    def __init__(self, tok):
        self.tok = tok
        self.eos_ids = stop_token_ids(tok)

    def _ids(self, messages: list[dict], add_generation_prompt: bool) -> list[int]:
        text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def conversation_ids(self, prompt, response_text: str) -> list[int]:
        """The ids the reward tokenizer gives for the re-rendered conversation (what TRL scores)."""
        messages = normalize_prompt(prompt, "prompt") + [{"role": "assistant", "content": response_text}]
        return self._ids(messages, add_generation_prompt=False)

    def sequence(self, prompt, response_text: str) -> Sequence:
        full = self.conversation_ids(prompt, response_text)
        head = self._ids(normalize_prompt(prompt, "prompt"), add_generation_prompt=True)
        k = 0  # split where the prompt's own rendering stops agreeing with the conversation's
        while k < min(len(head), len(full)) and head[k] == full[k]:
            k += 1
        return Sequence(full[:k], full[k:])


def reward_tokenizer_path(reward_tokenizer: str | None, reward_load: str | None) -> str | None:
    """``reward.tokenizer_name_or_path``, else the reward model folder's own tokenizer when it ships
    one (a HF reward model directory usually does), else None (the policy's)."""
    if reward_tokenizer is not None:
        return reward_tokenizer
    if reward_load is not None and (Path(reward_load) / "tokenizer.json").is_file():
        return reward_load
    return None


def load_reward_retokenizer(
    reward_tokenizer: str | None, reward_load: str | None, policy_tok
) -> RewardRetokenizer | None:
    """None when the reward model reads the policy's ids unchanged (same tokenization)."""
    path = reward_tokenizer_path(reward_tokenizer, reward_load)
    if path is None:
        return None
    tok = load_tokenizer(path)
    return None if same_tokenization(tok, policy_tok) else RewardRetokenizer(tok)
