"""A reward function written by the user (reward.function=module:fn) works without code changes,
and the tiny model learns from it: the mean reward of the last iterations is clearly above the
first ones."""

from common.outputs import read_jsonl
from conftest import run_recipe

USER_MODULE = '''
def ascii_letters(prompts, responses):
    """Fraction of characters that are plain ASCII letters or spaces."""
    return [sum(c.isascii() and (c.isalpha() or c == " ") for c in r) / max(len(r), 1) for r in responses]
'''


def test_user_reward_function_and_learning(tmp_path):
    (tmp_path / "myrewards.py").write_text(USER_MODULE)
    out = tmp_path / "run"
    proc = run_recipe("tiny", out, "reward.function=myrewards:ascii_letters", "training.train_iters=40", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = read_jsonl(out / "metrics.jsonl")
    scores = [r["objective/scores"] for r in rows]
    first, last = sum(scores[:8]) / 8, sum(scores[-8:]) / 8
    assert last > first + 0.1, f"mean score first 8 iterations {first:.3f}, last 8 {last:.3f}"
    # the rollouts hold the function's own scores (no reward model involved)
    roll = read_jsonl(out / "rollouts.jsonl")
    assert all(0.0 - 1.0 <= s <= 1.0 for r in roll for s in r["scores"])
