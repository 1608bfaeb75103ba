"""The run's reward: a reward model, reward functions, or a weighted sum of several.

Config keys (``common/config/schema.py``, section ``reward``):

- ``reward.function``: ``"module:callable"``; a single function that replaces the reward model.
- ``reward.functions``: a list of ``"module:callable"``, added to the terms.
- ``reward.weights``: one float per term, in the order *reward model* (when one is built),
  ``reward.function``, then ``reward.functions``; default all 1.0.

A reward model is built unless ``reward.function`` is set, or ``reward.functions`` is set without
``reward.load`` (a random-init reward model only makes sense alone, as in ``tiny``). Examples:

    reward.function=mymod:score                                       # one function
    reward.load=models/rm reward.functions=[mymod:brevity] reward.weights=[1.0,0.5]   # model + function
    reward.function=a:f reward.functions=[b:g] reward.weights=[0.7,0.3]              # two functions

The score of a response is ``sum_i weight_i * term_i`` (TRL's weighted sum; a function may not
return NaN here), then the missing-EOS penalty is subtracted (``common/train/pairs.py``). With one term
of weight 1 the score is that term's value bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from common.config.roles import reward_section_uses_model, reward_term_names
from common.prompts.messages import prompt_text
from common.reward.functions import RewardFn, call_reward_function, load_reward_function
from common.reward.tokenize import RewardRetokenizer, load_reward_retokenizer
from common.train.sequences import Sequence

# (sequences, stop ids) -> one score per sequence: the reward worker group, or an in-process model
ModelScorer = Callable[[list[Sequence], list[int]], list[float]]


@dataclass
class Rewards:
    model_weight: float | None  # None: no reward model
    functions: list[tuple[str, RewardFn, float]]  # (spec, callable, weight)
    retokenizer: RewardRetokenizer | None  # None: the reward model reads the policy's own ids
    function_retries: int = 0  # reward.function_retries: calls again after a function raises

    def describe(self) -> str:
        terms = (
            [f"{self.model_weight:g} x reward model" + (" (re-tokenized)" if self.retokenizer else "")]
            if self.model_weight is not None
            else []
        )
        return " + ".join(terms + [f"{w:g} x {spec}" for spec, _, w in self.functions])

    def score(
        self,
        prompts: list,
        texts: list[str],
        seqs: list[Sequence],
        eos_ids: list[int],
        model: ModelScorer | None,
        prompt_index: list[int] | None = None,
    ) -> list[float]:
        """One score per response. ``prompts`` raw (str or messages), ``texts`` the decoded
        responses, ``seqs`` the policy's prompt + response ids (all flat, same order);
        ``prompt_index`` the dataset index of each response's prompt (for a failing function's message)."""
        total = [0.0] * len(texts)
        if self.model_weight is not None:
            if self.retokenizer is None:
                values = model(seqs, eos_ids)
            else:
                values = model(
                    [self.retokenizer.sequence(p, t) for p, t in zip(prompts, texts)], self.retokenizer.eos_ids
                )
            total = [x + self.model_weight * v for x, v in zip(total, values)]
        if self.functions:
            as_text = [prompt_text(p) for p in prompts]
            for spec, fn, weight in self.functions:
                values = call_reward_function(
                    fn,
                    as_text,
                    texts,
                    where=f"reward function {spec}",
                    prompt_index=prompt_index,
                    retries=self.function_retries,
                )
                total = [x + weight * v for x, v in zip(total, values)]
        return total


def build_rewards(reward_cfg, policy_tok, function_override: str | None = None) -> Rewards:
    """The run's reward terms (functions imported now, so a typo fails before Ray starts).
    ``function_override`` (``tools.evaluate --reward``) replaces every term with that function."""
    if function_override is not None:
        return Rewards(None, [(function_override, load_reward_function(function_override), 1.0)], None)
    names = reward_term_names(reward_cfg)
    weights = list(reward_cfg.weights) if reward_cfg.weights is not None else [1.0] * len(names)
    with_model = reward_section_uses_model(reward_cfg)
    specs = names[1:] if with_model else names
    functions = [(s, load_reward_function(s), float(w)) for s, w in zip(specs, weights[len(names) - len(specs) :])]
    retok = (
        load_reward_retokenizer(reward_cfg.tokenizer_name_or_path, reward_cfg.load, policy_tok) if with_model else None
    )
    return Rewards(float(weights[0]) if with_model else None, functions, retok, reward_cfg.function_retries)
