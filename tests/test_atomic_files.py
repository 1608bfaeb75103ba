"""common/util/atomic_files.py: the one way files and folders are written (checkpoints, exports, datasets, run files)."""

from __future__ import annotations

import pytest

from common.util.atomic_files import atomic_dir, publish_dir, temp_dir, temp_path, write_text


def test_write_text_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "latest"
    write_text(path, "iter_000001\n")
    write_text(path, "iter_000002\n")
    assert path.read_text() == "iter_000002\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]


def test_folder_appears_only_when_the_block_completes(tmp_path):
    out = tmp_path / "export"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert not out.exists() and not temp_path(out).exists()
    with atomic_dir(out) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.txt").write_text("a")
    assert (out / "sub" / "a.txt").read_text() == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_existing_folder_is_replaced_only_when_the_rule_accepts_it(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    tmp = temp_dir(out)
    (tmp / "new.txt").write_text("new")
    with pytest.raises(ValueError, match="not empty"):  # default rule: only an empty folder is replaced
        publish_dir(tmp, out)
    assert (out / "notes.txt").read_text() == "the user's"

    def refuse(path):
        raise ValueError(f"{path}: not ours")

    with pytest.raises(ValueError, match="not ours"):
        publish_dir(tmp, out, refuse)
    assert (out / "notes.txt").is_file()
    publish_dir(tmp, out, lambda _: None)  # a writer's own older output
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .tmp / .old left


def test_leftover_temporary_from_a_crash_is_cleared(tmp_path):
    out = tmp_path / "ds"
    stale = temp_path(out)
    stale.mkdir()
    (stale / "partial").write_text("x")
    assert list(temp_dir(out).iterdir()) == []
