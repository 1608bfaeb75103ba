"""A reward function for the failure tests (tests/test_driver_failures.py) that fails when told to.

``reward.function=tests._scripted_reward:score``. It is called once at load time on a dummy pair
(call 1), then once per iteration and attempt (call 2 is iteration 1's first attempt, and so on,
in this driver process). ``ODPO_TEST_REWARD_RAISE=3,4`` raises on those calls (as a scoring
service that times out would), ``ODPO_TEST_REWARD_NAN=3`` returns NaN for the fourth response on
that call; unset, it scores every response the same way every time: closer to 40 characters is better.
"""

import os

_calls = 0


def _listed(name: str) -> set[int]:
    return {int(x) for x in os.environ.get(name, "").split(",") if x}


def score(prompts: list[str], responses: list[str]) -> list[float]:
    global _calls
    _calls += 1
    if _calls in _listed("ODPO_TEST_REWARD_RAISE"):
        raise TimeoutError(f"the scoring service did not answer in 30 s (call {_calls})")
    scores = [-abs(len(r) - 40) / 40.0 for r in responses]
    if _calls in _listed("ODPO_TEST_REWARD_NAN"):
        scores[3] = float("nan")
    return scores
