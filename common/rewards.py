"""Reward functions given as ``"module:callable"`` (``reward.function``).

The callable takes ``(prompts: list[str], responses: list[str])`` and returns one float per
response. The module is imported from the current directory or ``PYTHONPATH`` and checked before
any model is built, so a typo fails in seconds.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
from typing import Callable

RewardFn = Callable[[list[str], list[str]], list[float]]


# The pair every reward function is called on once at load time, so a function that returns the
# wrong number of scores (or non-numbers) fails in seconds, before Ray starts and models are built.
PROBE_PROMPTS = ["What is 2 + 2?", "What is 2 + 2?"]
PROBE_RESPONSES = ["4", "2 + 2 = 4."]


def load_reward_function(spec: str) -> RewardFn:
    """Import ``module:callable`` and call it once on a dummy pair (``PROBE_*``)."""
    module_name, _, attr = spec.partition(":")
    where = f"reward.function={spec!r}"
    if not module_name or not attr:
        raise ValueError(f"{where}: expected 'module:callable', e.g. myrewards:score")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if importlib.util.find_spec(module_name.split(".")[0]) is None:
        raise ValueError(
            f"{where}: no module {module_name!r}; put {module_name}.py in the current directory "
            f"({os.getcwd()}) or add its folder to PYTHONPATH"
        )
    try:
        module = importlib.import_module(module_name)
    except SyntaxError as e:
        raise ValueError(f"{where}: {e.filename} line {e.lineno}: SyntaxError: {e.msg}; fix the module") from None
    except ImportError as e:  # the module is there; something it imports is not
        origin = importlib.util.find_spec(module_name).origin
        missing = f"No module named {e.name!r}" if isinstance(e, ModuleNotFoundError) and e.name else str(e)
        raise ValueError(
            f"{where}: importing {origin} failed: {missing}; install it in this project's environment "
            f"(.venv/bin/pip install <package>) or remove the import"
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"{where}: module {module_name!r} has no callable {attr!r}")
    call_reward_function(fn, PROBE_PROMPTS, PROBE_RESPONSES, where=f"{where}, called on a dummy pair before the run,")
    return fn


def call_reward_function(fn: RewardFn, prompts: list[str], responses: list[str], where: str | None = None) -> list[float]:
    where = where or f"reward function {getattr(fn, '__name__', fn)}"
    scores = fn(prompts, responses)
    if isinstance(scores, (str, bytes)) or not hasattr(scores, "__len__"):
        raise ValueError(f"{where} returned {type(scores).__name__}; return a list with one float per response")
    scores = list(scores)
    if len(scores) != len(responses):
        raise ValueError(
            f"{where} returned {len(scores)} scores for {len(responses)} responses; return one float per response"
        )
    out = []
    for i, s in enumerate(scores):
        try:
            v = float(s)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where} returned a non-number for response {i}: {s!r}; return floats") from e
        if math.isnan(v):
            raise ValueError(f"{where} returned NaN for response {i}: {responses[i][:80]!r}; return finite scores")
        out.append(v)
    return out
