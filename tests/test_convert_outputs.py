"""tools.convert_checkpoint never deletes what it did not write: --out that is, contains or lies
inside an input is refused, and an existing --out is replaced only when it is this project's own
output of the same kind (a checkpoint: meta.json + arch.json; an HF export: odpo_export.json)."""

import pytest

from tools.convert_checkpoint import main


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A 2-layer, 4-head Llama in Hugging Face format (random weights)."""
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    path = tmp_path_factory.mktemp("models") / "hf"
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, argv, fragment):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "convert_checkpoint: error:" in err and fragment in err, err
    assert "Traceback" not in err


def test_hf_to_mcore_keeps_a_folder_that_is_not_a_checkpoint(hf_dir, tmp_path, capsys):
    out = tmp_path / "X"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    refused(capsys, ["hf-to-mcore", "--hf", str(hf_dir), "--out", str(out)], "is not only a checkpoint of this project")
    assert snapshot(out) == {out.relative_to(out) / "notes.txt": b"mine"}


def test_out_equal_to_inside_or_around_the_input_is_refused(hf_dir, tmp_path, capsys):
    before = snapshot(hf_dir)
    for out in (hf_dir, hf_dir / "ckpt", hf_dir.parent):
        refused(capsys, ["hf-to-mcore", "--hf", str(hf_dir), "--out", str(out)], "is, contains or lies inside --hf")
    assert snapshot(hf_dir) == before

    ckpt = tmp_path / "ckpt"
    assert main(["hf-to-mcore", "--hf", str(hf_dir), "--out", str(ckpt)]) == 0
    saved = snapshot(ckpt)
    refused(capsys, ["mcore-to-hf", "--ckpt", str(ckpt), "--out", str(ckpt)], "is, contains or lies inside --ckpt")
    refused(
        capsys,
        ["reshard", "--ckpt", str(ckpt), "--out", str(ckpt), "--tp", "2", "--pp", "1"],
        "is, contains or lies inside --ckpt",
    )
    refused(
        capsys,
        ["mcore-to-hf", "--ckpt", str(ckpt), "--out", str(tmp_path / "e"), "--tokenizer", str(tmp_path)],
        "is, contains or lies inside --tokenizer",
    )
    assert snapshot(ckpt) == saved


def test_own_outputs_are_replaced_others_are_not(hf_dir, tmp_path, capsys):
    ckpt, export = tmp_path / "ckpt", tmp_path / "export"
    assert main(["hf-to-mcore", "--hf", str(hf_dir), "--out", str(ckpt)]) == 0
    assert main(["hf-to-mcore", "--hf", str(hf_dir), "--out", str(ckpt), "--tp", "2"]) == 0  # its own kind: replaced
    assert main(["mcore-to-hf", "--ckpt", str(ckpt), "--out", str(export)]) == 0
    assert (export / "odpo_export.json").is_file()
    assert main(["mcore-to-hf", "--ckpt", str(ckpt), "--out", str(export)]) == 0  # an earlier export: replaced

    # a user's model folder (no marker) is never replaced by an export, nor a checkpoint by an export
    before = snapshot(hf_dir)
    other = tmp_path / "other"
    assert main(["hf-to-mcore", "--hf", str(hf_dir), "--out", str(other)]) == 0
    refused(
        capsys,
        ["mcore-to-hf", "--ckpt", str(ckpt), "--out", str(other)],
        "is not only a Hugging Face folder written by mcore-to-hf",
    )
    refused(
        capsys,
        ["reshard", "--ckpt", str(ckpt), "--out", str(export), "--tp", "1", "--pp", "1"],
        "is not only a checkpoint",
    )
    # a checkpoint a user added a file to
    (other / "notes.txt").write_text("mine")
    refused(capsys, ["reshard", "--ckpt", str(ckpt), "--out", str(other), "--tp", "1", "--pp", "1"], "notes.txt")
    assert (other / "notes.txt").read_text() == "mine" and (other / "meta.json").is_file()
    assert snapshot(hf_dir) == before


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["hf-to-mcore", "--hf", "{tmp}/missing", "--out", "{tmp}/o"], "folder not found"),
        (["hf-to-mcore", "--hf", "{hf}", "--out", "{tmp}/o", "--tp", "3"], "TP=3 must divide the 4 attention heads"),
        (["hf-to-mcore", "--hf", "{hf}", "--out", "{tmp}/o", "--pp", "3"], "PP=3 must divide the 2 layers"),
        (["mcore-to-hf", "--ckpt", "{tmp}", "--out", "{tmp}/o"], "no meta.json/arch.json"),
        (["mcore-to-hf", "--ckpt", "{hf}", "--out", "{tmp}/o"], "is a Hugging Face model folder"),
        (["hf-to-mcore", "--hf", "{hf}", "--out", "{file}"], "is a file"),
    ],
)
def test_errors_are_argparse_style(hf_dir, tmp_path, capsys, argv, fragment):
    (tmp_path / "f.txt").write_text("x")
    fill = {"tmp": str(tmp_path), "hf": str(hf_dir), "file": str(tmp_path / "f.txt")}
    refused(capsys, [a.format(**fill) for a in argv], fragment)
    assert not (tmp_path / "o").exists()
