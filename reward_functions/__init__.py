"""Reward functions shipped with the project, for ``reward.function=reward_functions.<module>:<callable>``.

Each takes ``(prompts: list[str], responses: list[str])`` and returns one float per response.
"""
