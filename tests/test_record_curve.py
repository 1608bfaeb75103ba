"""tools/record_curve.py's own logic (the recording itself is a real run: see docs/testing.md)."""

import argparse

import pytest

from tools.record_curve import environment, launch_args, max_diff


def test_launch_args_keep_nodes_overlay_and_overrides_in_order():
    args = argparse.Namespace(nodes=2, overlay="cpu_scale", overrides=["a=1", "b=2"])
    assert launch_args(args) == ["--nodes", "2", "--overlay", "cpu_scale", "a=1", "b=2"]
    assert launch_args(argparse.Namespace(nodes=1, overlay=None, overrides=[])) == []


def test_max_diff_and_step_count_mismatch():
    assert max_diff([0.5, 0.6], [0.5, 0.7]) == pytest.approx(0.1)
    with pytest.raises(SystemExit, match="step count"):
        max_diff([0.5], [0.5, 0.6])


def test_environment_names_cpu_versions_and_commit():
    env = environment()
    assert env["cpu"] and env["packages"]["torch"] and len(env["git_commit"]) == 40
