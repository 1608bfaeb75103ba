"""Reward functions given as ``"module:callable"`` (``reward.function``).

The callable takes ``(prompts: list[str], responses: list[str])`` and returns one float per
response. The module is imported from the current directory or ``PYTHONPATH`` and checked before
any model is built, so a typo fails in seconds.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from typing import Callable

RewardFn = Callable[[list[str], list[str]], list[float]]


def load_reward_function(spec: str) -> RewardFn:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"reward.function={spec!r}: expected 'module:callable', e.g. myrewards:score")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ValueError(
            f"reward.function={spec!r}: cannot import module {module_name!r} ({e}); put {module_name}.py "
            "in the current directory or add its folder to PYTHONPATH"
        ) from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"reward.function={spec!r}: module {module_name!r} has no callable {attr!r}")
    return fn


def call_reward_function(fn: RewardFn, prompts: list[str], responses: list[str]) -> list[float]:
    scores = list(fn(prompts, responses))
    if len(scores) != len(responses):
        raise ValueError(
            f"reward function {getattr(fn, '__name__', fn)} returned {len(scores)} scores for "
            f"{len(responses)} responses; return one float per response"
        )
    out = []
    for i, s in enumerate(scores):
        try:
            v = float(s)
        except (TypeError, ValueError) as e:
            raise ValueError(f"reward function returned a non-number for response {i}: {s!r}") from e
        if math.isnan(v):
            raise ValueError(f"reward function returned NaN for response {i}: {responses[i][:80]!r}")
        out.append(v)
    return out
