"""Fixed responses: generation replaced by stored responses (the accuracy-comparison mode).

``actor_rollout_ref.actor_rollout.fixed_responses`` names a JSONL file of
``{"prompt": <str>, "responses": [<str>, ...]}``. Each response is tokenized without special
tokens and ends with the EOS token, as a finished generation would. Everything is checked when
the run starts, before Ray: every prompt of the data needs exactly ``n_samples_per_prompt``
responses that fit in ``max_new_tokens``.
"""

from __future__ import annotations

from common.prompts.dataset import load_fixed_responses
from common.prompts.messages import prompt_text


def fixed_response_ids(path: str, tok, raw_prompts: list, n: int, max_new_tokens: int) -> list[list[list[int]]]:
    """``ids[prompt index][sample]`` for every prompt of the data, in data order."""
    table = load_fixed_responses(path)
    out = []
    for i, raw in enumerate(raw_prompts):
        key = prompt_text(raw)
        if key not in table:
            raise ValueError(
                f"fixed_responses {path}: no responses for prompt {i + 1} of the data ({key[:60]!r}); "
                "add a line for every prompt, or unset actor_rollout_ref.actor_rollout.fixed_responses"
            )
        texts = table[key]
        if len(texts) != n:
            raise ValueError(
                f"fixed_responses {path}: prompt {key[:60]!r} has {len(texts)} responses but "
                f"n_samples_per_prompt={n}; give exactly {n} or change n_samples_per_prompt"
            )
        ids = [tok.encode(t, add_special_tokens=False) + [tok.eos_token_id] for t in texts]
        too_long = [len(r) for r in ids if len(r) > max_new_tokens]
        if too_long:
            raise ValueError(
                f"fixed_responses {path}: a response of prompt {key[:60]!r} is {max(too_long)} tokens with EOS, "
                f"more than seq_length - max_prompt_length = {max_new_tokens}; raise training.seq_length"
            )
        out.append(ids)
    return out
