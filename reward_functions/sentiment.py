"""Sentiment rewards from the VADER lexicon (PyPI ``vaderSentiment==3.3.2``, MIT; no model, no download).

    ./run.sh smollm2_135m                                                    # reward.function=reward_functions.sentiment:vader
    ./run.sh smollm2_135m reward.function=reward_functions.sentiment:negative   # the same loop, the opposite goal

VADER's ``compound`` score is in [-1, 1] (clearly positive text ~ +0.8, negative ~ -0.8, neutral 0).
It mirrors the original system's sentiment/descriptiveness example with a reward that needs no
reward model, so the smollm2_135m recipe fits on 2 CPU cores.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader(prompts: list[str], responses: list[str]) -> list[float]:
    """Positive sentiment of each response: VADER's compound score in [-1, 1]."""
    analyzer = _analyzer()
    return [analyzer.polarity_scores(r)["compound"] for r in responses]


def negative(prompts: list[str], responses: list[str]) -> list[float]:
    """Negative sentiment (minus VADER's compound): another goal for the same recipe."""
    return [-s for s in vader(prompts, responses)]
