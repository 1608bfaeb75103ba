"""MindSpeed-LLM Megatron checkpoints load as they are (issue 28, weights): the folder layout of
``convert_ckpt.py --save-model-type mg`` (tracker, ``iter_0000001/mp_rank_XX[_YYY]/model_optim_rng.pt``),
the saved dict (``args`` as an argparse Namespace with Megatron's enums, ``model`` = Megatron-core's
own ``state_dict_for_save_checkpoint()`` with stage-local layer indices, ``rm_head`` for a reward
model), read by the restricted unpickler. Small HF models of every kind; outputs compared with
transformers'."""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import pytest
import torch
from test_convert import KINDS, _build, _close, _forward, _hf_model, _hf_outputs, _trim


def _args(arch, tp: int, pp: int) -> argparse.Namespace:
    """The arguments a MindSpeed run saves, as far as they describe the model (plus an enum)."""
    from megatron.core.enums import ModelType

    return argparse.Namespace(
        num_layers=arch.num_layers, hidden_size=arch.hidden_size, ffn_hidden_size=arch.ffn_hidden_size,
        num_attention_heads=arch.num_attention_heads, group_query_attention=True,
        num_query_groups=arch.num_query_groups, max_position_embeddings=arch.max_position_embeddings,
        padded_vocab_size=-(-arch.vocab_size // (128 * tp)) * 128 * tp, vocab_size=arch.vocab_size,
        make_vocab_size_divisible_by=128, position_embedding_type="rope", rotary_base=arch.rope_theta,
        rope_scaling_type="llama3", rope_scaling_factor=arch.rope_scaling_factor,
        low_freq_factor=arch.rope_low_freq_factor, high_freq_factor=arch.rope_high_freq_factor,
        original_max_position_embeddings=arch.rope_original_max_position_embeddings, norm_epsilon=arch.rms_norm_eps,
        untie_embeddings_and_output_weights=not arch.tie_word_embeddings, normalization="RMSNorm", swiglu=True,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, params_dtype=torch.float32,
        model_type=ModelType.encoder_or_decoder, transformer_impl="local",
    )  # fmt: skip


def _mindspeed_state_dict(model, reward: bool) -> dict[str, torch.Tensor]:
    """What MindSpeed's saver stores in ``model``: Megatron-core's own state dict for saving (the
    GPT trunk; for a reward model the row-parallel ``rm_head`` with its bias, 0 from a HF model)."""
    gpt = model.gpt if reward else model
    sd = {k: v for k, v in gpt.state_dict_for_save_checkpoint().items() if not k.endswith("_extra_state")}
    if reward:  # this project's scalar head sits where the output layer would
        sd["rm_head.weight"] = sd.pop("output_layer.weight").clone()
        sd["rm_head.bias"] = torch.zeros(1)
    return sd


def _save(root: Path, files: dict[tuple[int, int], dict], args, pp: int, tracker: str = "1") -> Path:
    (root / "latest_checkpointed_iteration.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "latest_checkpointed_iteration.txt").write_text(tracker)
    for (t, p), sd in files.items():
        rank = f"mp_rank_{t:02d}" + (f"_{p:03d}" if pp > 1 else "")
        folder = root / "iter_0000001" / rank
        folder.mkdir(parents=True)
        saved = {"args": args, "checkpoint_version": 3.0, "iteration": 1, "model": sd,
                 "num_floating_point_operations_so_far": 0}  # fmt: skip
        torch.save(saved, folder / "model_optim_rng.pt")
    return root


@pytest.fixture(scope="module")
def tp1(tmp_path_factory, world1):
    """kind -> (MindSpeed TP 1 folder, transformers' outputs), made from a real Megatron-core model."""
    from common.weights.convert import arch_from_path
    from common.weights.hf_format import load_hf_into_model

    root = tmp_path_factory.mktemp("mindspeed")
    out = {}
    for kind in KINDS:
        hf_model = _hf_model(kind)
        hf_model.save_pretrained(root / f"{kind}_hf")
        arch, reward = arch_from_path(root / f"{kind}_hf")
        model = _build(arch, reward)
        load_hf_into_model(model, root / f"{kind}_hf", arch)
        sd = _mindspeed_state_dict(model, reward)
        folder = _save(root / kind, {(0, 0): sd}, _args(arch, 1, 1), pp=1)
        out[kind] = (folder, _hf_outputs(hf_model), arch, reward, sd)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_a_mindspeed_checkpoint_loads_and_gives_transformers_outputs(tp1, world1, kind):
    from common.weights.convert import arch_from_path, load_into_model

    folder, expected, arch, reward, _ = tp1[kind]
    read_arch, read_reward = arch_from_path(folder)  # what every *.load key does first
    assert (read_arch, read_reward) == (arch, reward)
    model = _build(read_arch, read_reward)
    load_into_model(model, folder, read_arch)
    _close(_trim(_forward(model, reward)), expected)


def _stage_local(name: str, offset: int) -> str:
    import re

    m = re.match(r"decoder\.layers\.(\d+)\.(.*)", name)
    return f"decoder.layers.{int(m.group(1)) - offset}.{m.group(2)}" if m else name


@pytest.mark.parametrize("kind", KINDS)
def test_tp2_pp2_folders_read_as_the_tp1_one(tp1, tmp_path, kind):
    """The same weights laid out at TP 2 x PP 2 as MindSpeed's saver lays them out (vocab rows
    padded and split, QKV groups and [gate; up] per rank, row-parallel columns, stage-local layer
    indices, a tied output layer copied to the last stage, rm_head split by columns): every full
    tensor equals the TP 1 folder's, bit for bit."""
    from common.model.weight_layout import megatron_param_names, padded_vocab_size, shard
    from common.weights.mindspeed import MindSpeedReader

    folder, _, arch, reward, _ = tp1[kind]
    one = MindSpeedReader(folder)
    tp, pp, per_stage = 2, 2, arch.num_layers // 2
    files = {}
    for p in range(pp):
        for t in range(tp):
            sd = {}
            for name in megatron_param_names(arch, reward=reward, pp=pp, pp_rank=p):
                full = one.full(name)
                if reward and name == "output_layer.weight":
                    sd["rm_head.weight"] = full.chunk(tp, dim=1)[t].clone()
                    sd["rm_head.bias"] = torch.zeros(1)
                    continue
                value = shard(name, full, padded_vocab_size(arch.vocab_size, tp), reward, rank=t, tp=tp)
                sd[_stage_local(name, p * per_stage)] = value.clone()
            files[(t, p)] = sd
    four = MindSpeedReader(_save(tmp_path / "tp2pp2", files, _args(arch, tp, pp), pp=pp))
    assert (four.tp, four.pp, four.arch, four.reward) == (2, 2, arch, reward)
    expected = one.full_state_dict()
    got = four.full_state_dict()
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def test_tools_convert_checkpoint_takes_a_mindspeed_folder(tp1, tmp_path):
    """``reshard --ckpt <MindSpeed folder>`` writes this project's format with the same tensors."""
    import subprocess
    import sys

    from conftest import ROOT

    from common.weights.convert import CheckpointReader

    folder = tp1["untied"][0]
    out = tmp_path / "own"
    proc = subprocess.run(
        [sys.executable, "-m", "tools.convert_checkpoint", "reshard", "--ckpt", str(folder), "--out", str(out),
         "--tp", "2", "--pp", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    from common.weights.mindspeed import MindSpeedReader

    a, b = MindSpeedReader(folder).full_state_dict(), CheckpointReader(out).full_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _RunsCode:
    """A pickle payload: unpickling it would call os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_and_does_not_run(tp1, tmp_path):
    from common.weights.convert import arch_from_path

    folder = shutil.copytree(tp1["tied"][0], tmp_path / "evil")
    file = folder / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt"
    saved = torch.load(file, weights_only=False)  # our own test file
    marker = tmp_path / "ran"
    saved["payload"] = _RunsCode(marker)
    torch.save(saved, file)
    with pytest.raises(ValueError, match=r"asks for (posix|os)\.system.*refused without running it"):
        arch_from_path(folder)
    assert not marker.exists()


def test_incomplete_and_misnamed_folders_are_refused(tp1, tmp_path):
    from common.weights.mindspeed import MindSpeedReader

    folder = shutil.copytree(tp1["untied"][0], tmp_path / "c")
    (folder / "latest_checkpointed_iteration.txt").write_text("2")
    with pytest.raises(ValueError, match=r"names iter_0000002, which is not there \(found: iter_0000001\)"):
        MindSpeedReader(folder)
    (folder / "latest_checkpointed_iteration.txt").write_text("1")
    shutil.copytree(folder / "iter_0000001" / "mp_rank_00", folder / "iter_0000001" / "mp_rank_01_001")
    with pytest.raises(
        ValueError, match=r"TP 2 x PP 2 needs every rank's model_optim_rng.pt; missing: mp_rank_00_001, mp_rank_01_000"
    ):
        MindSpeedReader(folder)


def test_a_reward_head_with_a_bias_is_refused(tp1, tmp_path):
    from common.weights.mindspeed import MindSpeedReader

    folder = shutil.copytree(tp1["reward"][0], tmp_path / "rm")
    file = folder / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt"
    saved = torch.load(file, weights_only=False)
    saved["model"]["rm_head.bias"] = torch.tensor([0.25])
    torch.save(saved, file)
    with pytest.raises(ValueError, match=r"the reward head has a bias \(0.25\)"):
        MindSpeedReader(folder)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 2)])
def test_written_back_in_mindspeed_format_it_reads_back_bit_for_bit(tp1, tmp_path, kind, tp, pp):
    """The way back (``write_mindspeed``, what ``mcore-to-mindspeed`` runs): the folder is laid out
    and named as MindSpeed's saver lays it out, and every tensor reads back exactly."""
    from common.weights.convert import CheckpointReader, write_checkpoint
    from common.weights.mindspeed import MindSpeedReader, safe_load, write_mindspeed

    folder, _, arch, reward, _ = tp1[kind]
    own = tmp_path / "own"  # this project's format, as a run's final/ is
    write_checkpoint(own, MindSpeedReader(folder), arch, reward=reward, tp=1, pp=1)
    expected = CheckpointReader(own).full_state_dict()
    out = tmp_path / "mg"
    write_mindspeed(out, CheckpointReader(own), arch, reward=reward, tp=tp, pp=pp)
    assert (out / "latest_checkpointed_iteration.txt").read_text() == "1"
    ranks = sorted(p.name for p in (out / "iter_0000001").iterdir())
    assert ranks == (
        ["mp_rank_00"] if pp == 1 else ["mp_rank_00_000", "mp_rank_00_001", "mp_rank_01_000", "mp_rank_01_001"]
    )
    last = safe_load(out / "iter_0000001" / ranks[-1] / "model_optim_rng.pt")  # the restricted unpickler takes it
    assert (last["iteration"], last["checkpoint_version"], last["args"].tensor_model_parallel_size) == (1, 3.0, tp)
    layers = {int(k.split(".")[2]) for k in last["model"] if k.startswith("decoder.layers.")}
    assert layers == set(range(arch.num_layers // pp))  # stage-local indices
    if reward:
        assert last["model"]["rm_head.weight"].shape == (1, arch.hidden_size // tp)
        assert torch.equal(last["model"]["rm_head.bias"], torch.zeros(1))
    else:
        assert ("output_layer.weight" in last["model"]) == (not arch.tie_word_embeddings or pp > 1)
    got = MindSpeedReader(out).full_state_dict()
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def test_mcore_to_mindspeed_command(tp1, tmp_path):
    """``tools.convert_checkpoint mcore-to-mindspeed`` with a dtype, and its refusal to overwrite a
    folder that is not its own output."""
    import subprocess
    import sys

    from conftest import ROOT

    from common.weights.mindspeed import MindSpeedReader

    folder = tp1["untied"][0]
    out = tmp_path / "mg"

    def convert(*extra: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "tools.convert_checkpoint", "mcore-to-mindspeed", "--ckpt", str(folder),
               "--out", str(out), "--tp", "2", "--pp", "1", *extra]  # fmt: skip
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)

    proc = convert("--dtype", "bf16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MindSpeed-LLM Megatron checkpoint, policy, tp=2 pp=1" in proc.stdout
    back = MindSpeedReader(out)
    assert back.tp == 2 and back.full("decoder.final_layernorm.weight").dtype == torch.bfloat16
    source = MindSpeedReader(folder).full_state_dict()
    assert all(torch.equal(back.full(k), v.to(torch.bfloat16)) for k, v in source.items())
    assert convert().returncode == 0  # its own earlier output is replaced
    (out / "notes.txt").write_text("mine")
    proc = convert()
    assert proc.returncode == 2 and "nothing there is deleted" in proc.stderr
