"""``reward.function=module:callable`` imports (common/reward/functions.py): a module in the current
directory (top-level, or a package's ``pkg.mod``) loads without the folder being put on ``sys.path``;
a module importable the ordinary way imports the ordinary way; a missing module, dependency or
callable, and a SyntaxError, fail with a message that says what to fix."""

import os
import subprocess
import sys

import pytest

from common.reward.functions import load_reward_function

SCORE = "def score(prompts, responses):\n    return [float(len(r)) for r in responses]\n"


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    """An empty current directory; sys.path checked unchanged after the test, and the modules the
    test imported from it forgotten."""
    monkeypatch.chdir(tmp_path)
    path_before, modules_before = list(sys.path), set(sys.modules)
    yield tmp_path
    assert sys.path == path_before
    for name in set(sys.modules) - modules_before:
        del sys.modules[name]


def test_module_in_the_current_directory(cwd):
    (cwd / "odpo_test_rw_top.py").write_text(SCORE)
    fn = load_reward_function("odpo_test_rw_top:score")
    assert fn(["p"], ["abc"]) == [3.0]
    assert sys.modules["odpo_test_rw_top"].__file__ == str(cwd / "odpo_test_rw_top.py")


@pytest.mark.parametrize("init", [True, False], ids=["package", "namespace_package"])
def test_dotted_module_in_the_current_directory(cwd, init):
    pkg = cwd / f"odpo_test_rw_pkg_{init}"
    pkg.mkdir()
    if init:
        (pkg / "__init__.py").write_text("")
    (pkg / "helper.py").write_text("SCALE = 2.0\n")
    (pkg / "mod.py").write_text(
        "from .helper import SCALE\n\ndef score(prompts, responses):\n    return [SCALE * len(r) for r in responses]\n"
    )
    fn = load_reward_function(f"{pkg.name}.mod:score")
    assert fn(["p"], ["abc"]) == [6.0]
    assert sys.modules[f"{pkg.name}.mod"].__file__ == str(pkg / "mod.py")


def test_importable_module_imports_the_ordinary_way(cwd, tmp_path_factory):
    """A module on PYTHONPATH wins over one of the same name in the current directory (a fresh
    interpreter; -P: the current directory is not put on its sys.path)."""
    elsewhere = tmp_path_factory.mktemp("on_path")
    (elsewhere / "odpo_test_rw_both.py").write_text(
        "def score(prompts, responses):\n    return [1.0 for r in responses]\n"
    )
    (cwd / "odpo_test_rw_both.py").write_text(SCORE)
    code = (
        "import sys; before = list(sys.path)\n"
        "from common.reward.functions import load_reward_function\n"
        "print(load_reward_function('odpo_test_rw_both:score')(['p'], ['abc']), sys.path == before)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(elsewhere)}
    proc = subprocess.run(
        [sys.executable, "-P", "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["[1.0]", "True"]


@pytest.mark.parametrize(
    "files, spec, message",
    [
        ({}, "odpo_test_rw_none:score", "no module 'odpo_test_rw_none'; put odpo_test_rw_none.py in the current"),
        ({}, "odpo_test_rw_nopkg.mod:score", "no module 'odpo_test_rw_nopkg.mod'; put odpo_test_rw_nopkg/mod.py"),
        ({"odpo_test_rw_sub/__init__.py": ""}, "odpo_test_rw_sub.nomod:score", "no module 'odpo_test_rw_sub.nomod'"),
        ({"odpo_test_rw_ok.py": SCORE}, "odpo_test_rw_ok:nope", "module 'odpo_test_rw_ok' has no callable 'nope'"),
        (
            {"odpo_test_rw_dep.py": "import odpo_no_such_dependency\n" + SCORE},
            "odpo_test_rw_dep:score",
            "odpo_test_rw_dep.py failed: No module named 'odpo_no_such_dependency'; install it",
        ),
        (
            {"odpo_test_rw_pdep/__init__.py": "", "odpo_test_rw_pdep/m.py": "import odpo_no_such_dependency\n"},
            "odpo_test_rw_pdep.m:score",
            "m.py failed: No module named 'odpo_no_such_dependency'",
        ),
        (
            {"odpo_test_rw_syntax.py": "def score(prompts, responses):\n    return [0.0 for r in responses\n"},
            "odpo_test_rw_syntax:score",
            "odpo_test_rw_syntax.py line 2: SyntaxError",
        ),
    ],
    ids=[
        "missing",
        "missing_dotted",
        "missing_submodule",
        "no_callable",
        "missing_dep",
        "missing_dep_dotted",
        "syntax",
    ],
)
def test_bad_module_says_what_to_fix(cwd, files, spec, message):
    for name, text in files.items():
        (cwd / name).parent.mkdir(parents=True, exist_ok=True)
        (cwd / name).write_text(text)
    with pytest.raises(ValueError) as e:
        load_reward_function(spec)
    assert message in str(e.value)
    assert str(e.value).startswith(f"reward.function={spec!r}: ")


def test_module_fixed_after_an_error_loads(cwd):
    """A module that failed to run is not left half-imported: fixed, it loads."""
    (cwd / "odpo_test_rw_fixed.py").write_text("def score(prompts, responses):\n    return [0.0 for r in responses\n")
    with pytest.raises(ValueError, match="SyntaxError"):
        load_reward_function("odpo_test_rw_fixed:score")
    assert "odpo_test_rw_fixed" not in sys.modules
    (cwd / "odpo_test_rw_fixed.py").write_text(SCORE)
    assert load_reward_function("odpo_test_rw_fixed:score")(["p"], ["ab"]) == [2.0]


def test_retries_call_a_raising_function_again_with_a_growing_back_off():
    from common.reward.functions import RewardFunctionError, call_reward_function

    calls, waits = [], []

    def flaky(prompts, responses):
        calls.append(1)
        if len(calls) <= 2:
            raise ConnectionError("service unavailable\nretry later")
        return [1.0] * len(responses)

    assert call_reward_function(flaky, ["p"] * 2, ["a", "b"], retries=2, sleep=waits.append) == [1.0, 1.0]
    assert len(calls) == 3 and waits == [1.0, 2.0]

    calls.clear()
    with pytest.raises(RewardFunctionError) as e:
        call_reward_function(flaky, ["p"] * 2, ["a", "b"], where="reward function m:f", prompt_index=[7, 7], retries=1,
                             sleep=waits.append)  # fmt: skip
    assert str(e.value) == (
        "reward function m:f raised on the prompts of index 7 (called 2 times, reward.function_retries=1): "
        "ConnectionError: retry later"
    )
    assert isinstance(e.value.__cause__, ConnectionError)  # failure.txt keeps the function's own traceback


def test_a_bad_score_names_the_response_and_its_prompt():
    from common.reward.functions import RewardFunctionError, call_reward_function

    with pytest.raises(RewardFunctionError, match=r"returned NaN for response 1 \(prompt index 4\): 'b'"):
        call_reward_function(lambda p, r: [0.0, float("nan")], ["x", "y"], ["a", "b"], prompt_index=[3, 4])
