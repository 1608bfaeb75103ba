"""Reward functions given as ``"module:callable"`` (``reward.function``).

The callable takes ``(prompts: list[str], responses: list[str])`` and returns one float per
response. The module is imported as any other (``PYTHONPATH``, the installed packages) or, when that
finds none, from the current directory (``myrewards:score`` -> ``./myrewards.py``, ``pkg.mod:fn`` ->
``./pkg/mod.py``), without adding that folder to ``sys.path``; it is checked before any model is
built, so a typo fails in seconds.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import math
import os
import sys
import time
from collections.abc import Callable

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
    not_found = ValueError(
        f"{where}: no module {module_name!r}; put {module_name.replace('.', '/')}.py in the current directory "
        f"({os.getcwd()}) or add its folder to PYTHONPATH"
    )
    try:
        module = _import(module_name)
    except SyntaxError as e:
        raise ValueError(f"{where}: {e.filename} line {e.lineno}: SyntaxError: {e.msg}; fix the module") from None
    except ImportError as e:
        if isinstance(e, ModuleNotFoundError) and e.name and (module_name + ".").startswith(e.name + "."):
            raise not_found from None  # the module itself (or its package) is missing
        # the module is there; something it imports is not
        missing = f"No module named {e.name!r}" if isinstance(e, ModuleNotFoundError) and e.name else str(e)
        raise ValueError(
            f"{where}: importing {_origin(module_name)} failed: {missing}; install it in this project's environment "
            f"(.venv/bin/pip install <package>) or remove the import"
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"{where}: module {module_name!r} has no callable {attr!r}")
    call_reward_function(fn, PROBE_PROMPTS, PROBE_RESPONSES, where=f"{where}, called on a dummy pair before the run,")
    return fn


def _import(module_name: str):
    """``importlib.import_module``, except that a top-level package or module that is not importable
    is loaded from the current directory (``./top.py``, ``./top/__init__.py`` or a folder ``./top``);
    its submodules then import from there through the package's ``__path__``."""
    top = module_name.partition(".")[0]
    if top not in sys.modules and importlib.util.find_spec(top) is None:
        spec = _spec_in_cwd(top)
        if spec is None:
            raise ModuleNotFoundError(f"No module named {top!r}", name=top)
        module = importlib.util.module_from_spec(spec)
        sys.modules[top] = module  # as the import system does: the module sees itself while it runs
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[top]
            raise
    return importlib.import_module(module_name)


def _spec_in_cwd(name: str):
    """The spec of top-level module ``name`` in the current directory, or None."""
    folder = os.path.join(os.getcwd(), name)
    if os.path.isfile(folder + ".py"):
        return importlib.util.spec_from_file_location(name, folder + ".py")
    if os.path.isfile(os.path.join(folder, "__init__.py")):
        return importlib.util.spec_from_file_location(
            name, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder]
        )
    if os.path.isdir(folder):  # a folder without __init__.py: a namespace package, as on sys.path
        return importlib.machinery.PathFinder.find_spec(name, [os.getcwd()])
    return None


def _origin(module_name: str) -> str:
    """The file of ``module_name`` (or of the first of its packages that can be found) for a message."""
    parts = module_name.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):  # a package above it fails to import
            spec = None
        if spec is None and n == 1:
            spec = _spec_in_cwd(name)
        if spec is not None and spec.origin:
            return spec.origin
    return module_name


class RewardFunctionError(ValueError):
    """A reward function failed during the run: raised, or returned something that is not one finite
    float per response. The message names the function and the prompt (the run adds the iteration)."""


def call_reward_function(
    fn: RewardFn,
    prompts: list[str],
    responses: list[str],
    where: str | None = None,
    prompt_index: list[int] | None = None,
    retries: int = 0,
    sleep: Callable[[float], None] = time.sleep,
) -> list[float]:
    """``fn(prompts, responses)`` checked: one finite float per response. A function that raises is
    called again up to ``retries`` times (``reward.function_retries``), after 1, 2, 4, ... s (at most
    ``MAX_BACKOFF_S``): a scorer that calls a service may time out once. ``prompt_index[i]``, for the
    messages, is the index of response i's prompt in the run's prompt set (from 0, after prompts
    too long for ``max_prompt_length`` are dropped: the line of a ``.jsonl`` file when none is)."""
    where = where or f"reward function {getattr(fn, '__name__', fn)}"
    for attempt in range(retries + 1):
        try:
            scores = fn(prompts, responses)
            break
        except Exception as e:
            if attempt == retries:
                tried = f" (called {retries + 1} times, reward.function_retries={retries})" if retries else ""
                prompts_of = f" on the prompts of index {_indices(prompt_index)}" if prompt_index else ""
                raise RewardFunctionError(
                    f"{where} raised{prompts_of}{tried}: {type(e).__name__}: {last_line(e)}"
                ) from e
            wait = min(2.0**attempt, MAX_BACKOFF_S)
            print(
                f"{where} raised {type(e).__name__}: {last_line(e)}; calling it again in {wait:g} s "
                f"({attempt + 1} of reward.function_retries={retries})",
                file=sys.stderr,
                flush=True,
            )
            sleep(wait)
    if isinstance(scores, (str, bytes)) or not hasattr(scores, "__len__"):
        raise RewardFunctionError(
            f"{where} returned {type(scores).__name__}; return a list with one float per response"
        )
    scores = list(scores)
    if len(scores) != len(responses):
        raise RewardFunctionError(
            f"{where} returned {len(scores)} scores for {len(responses)} responses; return one float per response"
        )
    out = []
    for i, s in enumerate(scores):
        prompt = f" (prompt index {prompt_index[i]})" if prompt_index else ""
        try:
            v = float(s)
        except (TypeError, ValueError) as e:
            raise RewardFunctionError(
                f"{where} returned a non-number for response {i}{prompt}: {s!r}; return floats"
            ) from e
        if math.isnan(v):
            raise RewardFunctionError(
                f"{where} returned NaN for response {i}{prompt}: {responses[i][:80]!r}; return finite scores"
            )
        out.append(v)
    return out


MAX_BACKOFF_S = 30.0


def _indices(index: list[int]) -> str:
    unique = list(dict.fromkeys(index))
    return ", ".join(map(str, unique[:8])) + (f" ... ({len(unique)} in all)" if len(unique) > 8 else "")


def last_line(e: BaseException) -> str:
    """An exception's message as a user reads it first: its last line."""
    lines = str(e).strip().splitlines()
    return lines[-1] if lines else "(no message)"
