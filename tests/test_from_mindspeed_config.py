"""`python -m tools.from_mindspeed`: a MindSpeed-LLM Ray Online DPO config (trainer file + model file,
written here exactly as shared/reference/seed-formats.md section 1 lists them) becomes an overlay that
this project's own loader (`common.config.load.load_config`, what `./run.sh --overlay` calls) takes
over a recipe; every key lands in the key table; what the original would refuse, or this project
cannot do, stops with a message naming the key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from common.config.load import load_config
from common.config.roles import max_new_tokens
from tools.from_mindspeed import main, reference_markdown

# ------------------------------------------------------------------ the original's files (seed-formats.md 1.1-1.3)


def llama32_1b_trainer() -> dict:
    """configs/rlxf/online_dpo_trainer_llama32_1b.yaml, every key (1.1)."""
    return {
        "defaults": [{"model": ["llama32-1b"]}],
        "training": {
            "global_batch_size": 4, "seq_length": 512, "tokenizer_type": "PretrainedFromHF",
            "tokenizer_name_or_path": "./models/llama-3.2-1b-instruct/", "train_iters": 1000,
            "distributed_backend": "nccl", "no_shared_storage": True, "save_interval": 10000, "no_load_optim": True,
            "no_load_rng": True, "bf16": True, "is_instruction_dataset": True, "variable_seq_lengths": True,
            "stage": "ray_online_dpo",
        },
        "actor_rollout_ref": {
            "actor_rollout": {
                "model": "llama32-1b", "micro_batch_size": 4, "ppo_mini_batch_size": 4, "max_prompt_length": 256,
                "ppo_epochs": 1, "clip_ratio": 0.2, "entropy_coeff": 0.001, "do_sample": True, "shuffle": False,
                "use_kv_cache": True, "num_samples_per_step": 4, "tensor_model_parallel_size": 1,
                "pipeline_model_parallel_size": 1, "lr": 1e-7, "lr_decay_style": "constant", "min_lr": 0.0,
                "weight_decay": 0.0, "lr_warmup_fraction": 0.0, "clip_grad": 10000.0, "adam_beta1": 0.9,
                "adam_beta2": 0.999, "initial_loss_scale": 4096, "finetune": True,
                "load": "./models/llama-3.2-1b-instruct-tp1-pp1", "save": "./ckpt", "num_gpus_for_train": 1,
                "num_gpus_for_infer": 1, "pad_to_multiple_of": 1, "inference_tensor_model_parallel_size": 1,
                "data_path": "./dataset/descriptiveness/descriptiveness", "split": "100,0,0", "no_shuffle": True,
                "missing_eos_penalty": 1.0,
            },
            "ref": {
                "model": "llama32-1b", "tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1,
                "micro_batch_size": 4, "load": "./models/llama-3.2-1b-instruct-tp1-pp1",
            },
        },
        "reward": {
            "model": "llama32-1b", "tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1,
            "micro_batch_size": 4, "sequence_parallel": False, "load": "./models/llama-3.2-1b-rm-mcore-tp1-pp1",
        },
        "algorithm": {
            "gamma": 1.0, "lam": 0.95, "adv_estimator": "gae", "kl_penalty": "kl",
            "kl_ctrl": {"type": "fixed", "kl_coef": 0.05}, "missing_eos_penalty": 1.0,
        },
        "resource_pool": {"actor_rollout": [2], "ref": [1], "reward": [1]},
    }  # fmt: skip


def llama32_1b_model() -> dict:
    """configs/rlxf/model/llama32-1b.yaml (1.2): no untie key, so tied."""
    return {
        "llama32-1b": {
            "use_mcore_models": True, "sequence_parallel": True, "use_mc2": True, "use_flash_attn": True,
            "use_rotary_position_embeddings": True, "use_fused_rmsnorm": True, "use_fused_swiglu": True,
            "rope_scaling_type": "llama3", "rope_scaling_factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192, "max_position_embeddings": 8192,
            "num_layers": 16, "hidden_size": 2048, "ffn_hidden_size": 8192, "num_attention_heads": 32,
            "group_query_attention": True, "num_query_groups": 8, "make_vocab_size_divisible_by": 1,
            "padded_vocab_size": 128256, "disable_bias_linear": True, "attention_dropout": 0.0,
            "init_method_std": 0.01, "hidden_dropout": 0.0, "position_embedding_type": "rope", "rotary_base": 500000,
            "normalization": "RMSNorm", "norm_epsilon": 1e-5, "swiglu": True, "no_masked_softmax_fusion": True,
            "attention_softmax_in_fp32": True, "no_gradient_accumulation_fusion": True, "bf16": True,
        }
    }  # fmt: skip


def llama3_8b_model() -> dict:
    """configs/rlxf/model/llama3-8b.yaml (1.2): the 1B file's keys without use_mc2 and the fused
    rmsnorm/swiglu flags, with its differences (untied, rope scaling 8, seed 42, vocab_size too)."""
    args = {
        k: v
        for k, v in llama32_1b_model()["llama32-1b"].items()
        if k not in ("use_mc2", "use_fused_rmsnorm", "use_fused_swiglu")
    }
    args.update(
        num_layers=32, hidden_size=4096, ffn_hidden_size=14336, num_attention_heads=32, num_query_groups=8,
        rope_scaling_factor=8.0, rotary_percent=1.0, init_method_std=0.02, untie_embeddings_and_output_weights=True,
        seed=42, vocab_size=128256, padded_vocab_size=128256,
    )  # fmt: skip
    return {"llama3-8b": args}


def ppo_trainer_llama3_8b() -> dict:
    """configs/rlxf/ppo_trainer_llama3_8b.yaml (1.3), plus lr 1e-7 constant and ppo_epochs 1 (seed-system.md's
    8B values; section 1.3 does not list the optimizer keys)."""
    common = {
        k: v
        for k, v in llama32_1b_trainer()["training"].items()
        if k not in ("global_batch_size", "tokenizer_name_or_path")
    }
    return {
        "defaults": [{"model": ["llama3-8b"]}],
        "training": {
            **common, "global_batch_size": 2, "seq_length": 512, "tokenizer_name_or_path": "./models/llama-3-8b/",
            "train_iters": 1000, "no_shuffle": True, "stage": "ray_ppo", "sequence_parallel": False,
        },
        "actor_rollout_ref": {
            "actor_rollout": {
                "model": "llama3-8b", "do_sample": False, "micro_batch_size": 1, "ppo_mini_batch_size": 1,
                "num_samples_per_step": 1, "max_prompt_length": 256, "shuffle_minibatch": False,
                "tensor_model_parallel_size": 2, "pipeline_model_parallel_size": 2, "clip_grad": 1.0, "load": "./ckpt",
                "save": "./ckpt", "num_gpus_for_train": 4, "num_gpus_for_infer": 4,
                "data_path": "./dataset/descriptiveness/descriptiveness", "lr": 1e-7, "lr_decay_style": "constant",
                "ppo_epochs": 1,
            },
            "ref": {"model": "llama3-8b", "tensor_model_parallel_size": 2, "pipeline_model_parallel_size": 1, "micro_batch_size": 1},
        },
        "critic": {
            "model": "llama3-8b", "tensor_model_parallel_size": 2, "pipeline_model_parallel_size": 2,
            "use_distributed_optimizer": True, "cliprange_value": 0.2, "critic_mini_batch_size": 1,
            "critic_update_epochs": 1, "initial_loss_scale": 1,
        },
        "reward": {"model": "llama3-8b", "tensor_model_parallel_size": 2, "pipeline_model_parallel_size": 1, "micro_batch_size": 1},
        "algorithm": {**llama32_1b_trainer()["algorithm"], "missing_eos_penalty": 0.0},
        "resource_pool": {"actor_rollout": [8], "ref": [2], "critic": [4], "reward": [2]},
    }  # fmt: skip


# ------------------------------------------------------------------------------------------ helpers


def write_setup(root: Path, trainer: dict, models: dict) -> Path:
    """The original's layout under ``root`` (where ray_gpt.py runs): configs/rlxf/<trainer>.yaml + model/."""
    rlxf = root / "configs" / "rlxf"
    (rlxf / "model").mkdir(parents=True, exist_ok=True)
    for name, args in models.items():  # one file per model, its one top-level key the model's name
        (rlxf / "model" / f"{name}.yaml").write_text(yaml.safe_dump({name: args}, sort_keys=False))
    config = rlxf / "online_dpo_trainer.yaml"
    config.write_text(yaml.safe_dump(trainer, sort_keys=False))
    return config


def translate(tmp_path: Path, trainer: dict, models: dict, *extra: str) -> tuple[Path, dict]:
    """Run the tool (base dir = ``tmp_path``); the overlay's path and the key table, by key."""
    config = write_setup(tmp_path, trainer, models)
    out = tmp_path / "mine.yaml"
    assert main([str(config), "--base-dir", str(tmp_path), "--out", str(out), *extra]) == 0
    rows = [row for row in json.loads((tmp_path / "mine.keys.json").read_text())["keys"] if row["key"] is not None]
    assert len({row["key"] for row in rows}) == len(rows), "one row per key"
    return out, {row["key"]: row for row in rows}


def refusal(tmp_path: Path, trainer: dict, models: dict, capsys) -> str:
    """The tool's one-line error (exit 2, nothing written)."""
    config = write_setup(tmp_path, trainer, models)
    with pytest.raises(SystemExit) as stop:
        main([str(config), "--base-dir", str(tmp_path), "--out", str(tmp_path / "mine.yaml")])
    assert stop.value.code == 2
    assert not (tmp_path / "mine.yaml").exists() and not (tmp_path / "mine.keys.json").exists()
    return capsys.readouterr().err.strip().splitlines()[-1]


def dotted(node: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        if isinstance(value, dict):
            keys += dotted(value, f"{prefix}{key}.")
        else:
            keys.append(prefix + key)
    return keys


def over(recipe: str, overlay: Path):
    return load_config(ROOT / "recipes" / recipe / "config.yaml", overlay=overlay)


# -------------------------------------------------------------------------------------------- tests


def test_llama32_1b_config_loads_over_the_recipe(tmp_path):
    out, table = translate(tmp_path, llama32_1b_trainer(), llama32_1b_model())
    cfg = over("llama32_1b", out)
    m = cfg.model
    assert (m.num_layers, m.hidden_size, m.ffn_hidden_size, m.num_attention_heads, m.num_query_groups) == (
        16,
        2048,
        8192,
        32,
        8,
    )
    assert (m.vocab_size, m.max_position_embeddings, m.rms_norm_eps, m.init_method_std) == (128256, 8192, 1e-5, 0.01)
    assert m.tie_word_embeddings is True and m.rope_theta == 500000.0
    assert (m.rope_scaling_factor, m.rope_low_freq_factor, m.rope_high_freq_factor) == (32.0, 1.0, 4.0)
    assert m.rope_original_max_position_embeddings == 8192
    actor, t = cfg.actor_rollout_ref.actor_rollout, cfg.training
    assert (t.global_batch_size, t.seq_length, t.train_iters, t.save_interval, t.dtype) == (4, 512, 1000, 10000, "bf16")
    assert max_new_tokens(cfg) == 256 and actor.max_prompt_length == 256
    assert (actor.lr, actor.min_lr, actor.lr_decay_style, actor.weight_decay, actor.clip_grad) == (
        1e-7,
        0.0,
        "constant",
        0.0,
        1e4,
    )
    assert (actor.adam_beta1, actor.adam_beta2, actor.lr_warmup_fraction, actor.ppo_epochs) == (0.9, 0.999, 0.0, 1)
    assert (actor.temperature, actor.top_k, actor.top_p, actor.n_samples_per_prompt) == (0.7, 0, 1.0, 2)
    assert (cfg.algorithm.beta, cfg.algorithm.loss_type, actor.missing_eos_penalty, actor.no_shuffle) == (
        0.1,
        "sigmoid",
        1.0,
        True,
    )
    # micro-batches: 4 prompts = 8 sequences, as the original's doubled 4 * 2
    for section in (actor, cfg.actor_rollout_ref.ref, cfg.reward):
        assert (section.micro_batch_size, section.tensor_model_parallel_size, section.pipeline_model_parallel_size) == (
            4,
            1,
            1,
        )
    assert actor.ppo_mini_batch_size == 4
    for key in (
        f"{s}.micro_batch_size" for s in ("actor_rollout_ref.actor_rollout", "actor_rollout_ref.ref", "reward")
    ):
        assert "4 means 8 sequences" in table[key]["note"] and table[key]["status"] == "mapped", key
    # placement: actor pool 2 = 1 training + 1 generating device; ref 1; reward 1; no colocation
    pool = cfg.resource_pool
    assert (pool.actor_rollout, actor.generate_devices, actor.generate_tensor_model_parallel_size) == (2, 1, 1)
    assert (pool.ref, pool.reward, list(pool.colocate)) == (1, 1, [])
    # paths: relative to the base dir, written absolute; data_path stays the indexed dataset's prefix
    assert t.tokenizer_name_or_path == str(tmp_path / "models/llama-3.2-1b-instruct")
    assert actor.data_path == str(tmp_path / "dataset/descriptiveness/descriptiveness")
    assert actor.load == cfg.actor_rollout_ref.ref.load == str(tmp_path / "models/llama-3.2-1b-instruct-tp1-pp1")
    assert cfg.reward.load == str(tmp_path / "models/llama-3.2-1b-rm-mcore-tp1-pp1")
    assert cfg.reward.model is None and cfg.reward.function is None and cfg.reward.score_position == "eos"


def test_every_key_is_in_the_table_with_its_treatment(tmp_path):
    trainer, models = llama32_1b_trainer(), llama32_1b_model()
    _, table = translate(tmp_path, trainer, models)
    written = [k for k in dotted(trainer) if k != "defaults"] + [f"model.{k}" for k in dotted(models)] + ["defaults"]
    assert sorted(k for k in table if table[k]["status"] != "default") == sorted(written)
    for key in ("algorithm.kl_ctrl.type", "algorithm.kl_ctrl.kl_coef", "algorithm.gamma", "algorithm.adv_estimator"):
        assert table[key]["status"] == "dropped" and "never reads `algorithm`" in table[key]["note"], key
    eos = table["algorithm.missing_eos_penalty"]
    assert (
        eos["status"] == "dropped" and "only actor_rollout_ref.actor_rollout.missing_eos_penalty counts" in eos["note"]
    )
    for key in ("clip_ratio", "entropy_coeff"):
        row = table[f"actor_rollout_ref.actor_rollout.{key}"]
        assert row["status"] == "dropped" and "unused by the online-DPO loss" in row["note"]
    for key in ("use_mc2", "use_fused_rmsnorm", "use_fused_swiglu"):
        assert (
            table[f"model.llama32-1b.{key}"]["status"] == "dropped"
            and "NPU-only" in table[f"model.llama32-1b.{key}"]["note"]
        )
    assert table["model.llama32-1b.bf16"] == {
        **table["model.llama32-1b.bf16"],
        "status": "dropped",
        "note": "overridden by training",
    }
    assert table["training.bf16"]["ours"] == {"training.dtype": "bf16"}
    assert table["model.llama32-1b.num_layers"]["ours"] == {"model.num_layers": 16}
    assert table["actor_rollout_ref.actor_rollout.num_gpus_for_infer"]["ours"] == {
        "actor_rollout_ref.actor_rollout.generate_devices": 1
    }
    # absent keys at the original's defaults: temperature 0.7, dpo_beta 0.1, tied embeddings
    assert table["actor_rollout_ref.actor_rollout.temperature"]["status"] == "default"
    assert table["actor_rollout_ref.actor_rollout.dpo_beta"]["ours"] == {"algorithm.beta": 0.1}
    assert table["model.llama32-1b.untie_embeddings_and_output_weights"]["ours"] == {"model.tie_word_embeddings": True}


def test_the_8b_model_file_untied(tmp_path):
    trainer = llama32_1b_trainer()
    trainer["defaults"] = [{"model": ["llama32-1b", "llama3-8b"]}]  # both files read, only the 8B used
    for section in (
        trainer["actor_rollout_ref"]["actor_rollout"],
        trainer["actor_rollout_ref"]["ref"],
        trainer["reward"],
    ):
        section["model"] = "llama3-8b"
    out, table = translate(tmp_path, trainer, {**llama32_1b_model(), **llama3_8b_model()}, "--recipe", "llama3_8b")
    cfg = over("llama3_8b", out)
    m = cfg.model
    assert (m.num_layers, m.hidden_size, m.ffn_hidden_size, m.num_attention_heads, m.num_query_groups) == (
        32,
        4096,
        14336,
        32,
        8,
    )
    assert m.tie_word_embeddings is False and m.rope_scaling_factor == 8.0 and m.vocab_size == 128256
    assert cfg.training.seed == 42  # the model file's seed reaches every role's arguments
    assert table["model.llama3-8b.padded_vocab_size"]["status"] == "dropped"
    assert table["model.llama3-8b.untie_embeddings_and_output_weights"]["ours"] == {"model.tie_word_embeddings": False}
    assert table["model.llama3-8b.rotary_percent"]["status"] == "implied"
    assert table["model.llama32-1b.num_layers"]["note"] == "no role of online DPO names this model"


def test_the_8b_ppo_file_made_online_dpo(tmp_path, capsys):
    trainer = ppo_trainer_llama3_8b()
    message = refusal(tmp_path, trainer, llama3_8b_model(), capsys)
    assert "training.stage='ray_ppo'" in message and "ray_online_dpo" in message
    trainer["training"]["stage"] = "ray_online_dpo"
    message = refusal(tmp_path, trainer, llama3_8b_model(), capsys)
    assert "actor_rollout_ref.actor_rollout.do_sample=False" in message
    trainer["actor_rollout_ref"]["actor_rollout"]["do_sample"] = True
    out, table = translate(tmp_path, trainer, llama3_8b_model(), "--recipe", "llama3_8b")
    cfg = over("llama3_8b", out)
    actor = cfg.actor_rollout_ref.actor_rollout
    assert (actor.tensor_model_parallel_size, actor.pipeline_model_parallel_size, actor.generate_devices) == (2, 2, 4)
    assert (cfg.resource_pool.actor_rollout, cfg.resource_pool.ref, cfg.resource_pool.reward) == (8, 2, 2)
    assert (cfg.actor_rollout_ref.ref.tensor_model_parallel_size, cfg.reward.tensor_model_parallel_size) == (2, 2)
    assert (actor.clip_grad, actor.micro_batch_size, actor.missing_eos_penalty, actor.weight_decay) == (
        1.0,
        1,
        0.0,
        0.01,
    )
    assert cfg.actor_rollout_ref.ref.load is None and "random weights" in table["actor_rollout_ref.ref.load"]["note"]
    for key in ("critic.cliprange_value", "critic.use_distributed_optimizer", "resource_pool.critic"):
        assert table[key]["status"] == "dropped" and "builds none" in table[key]["note"], key


def test_role_over_training_over_model(tmp_path):
    trainer = llama32_1b_trainer()
    trainer["training"].update(lr=5e-6, micro_batch_size=2, bf16=False)  # the actor's own lr wins; a false flag is off
    del trainer["actor_rollout_ref"]["ref"]["micro_batch_size"]
    out, table = translate(tmp_path, trainer, llama32_1b_model())
    cfg = over("llama32_1b", out)
    assert cfg.actor_rollout_ref.actor_rollout.lr == 1e-7 and table["training.lr"]["note"].startswith(
        "overridden by actor_rollout_ref.actor_rollout"
    )
    assert cfg.actor_rollout_ref.ref.micro_batch_size == 2 and cfg.actor_rollout_ref.actor_rollout.micro_batch_size == 4
    assert cfg.training.dtype == "fp32"  # training's bf16: false hides the model file's true, as in the original's argv
    assert table["training.bf16"]["ours"] == {"training.dtype": "fp32"} and "left out" in table["training.bf16"]["note"]
    assert table["model.llama32-1b.bf16"]["note"] == "overridden by training"


REFUSALS = {
    "pool_mismatch": (
        lambda tr, mo: tr["resource_pool"].update(actor_rollout=[3]),
        ["resource_pool.actor_rollout=[3]", "num_gpus_for_train 1 + num_gpus_for_infer 1 = 2", "the original refuses"],
    ),
    "unknown_key": (
        lambda tr, mo: tr["actor_rollout_ref"]["actor_rollout"].update(micro_batch_sise=4),
        ["actor_rollout_ref.actor_rollout.micro_batch_sise: no such key", "nearest: micro_batch_size"],
    ),
    "unknown_model_key": (
        lambda tr, mo: mo["llama32-1b"].update(num_layer=16),
        ["llama32-1b.num_layer: no such key", "nearest: num_layers"],
    ),
    "unknown_algorithm_key": (
        lambda tr, mo: tr["algorithm"]["kl_ctrl"].update(kl_coeff=0.1),
        ["algorithm.kl_ctrl.kl_coeff: no such key", "nearest: kl_coef"],
    ),
    "missing_model_file": (
        lambda tr, mo: tr.update(defaults=[{"model": ["llama32-3b"]}]),
        ["model/llama32-3b.yaml does not exist", "--model-dir"],
    ),
    "role_names_missing_model": (
        lambda tr, mo: tr["reward"].update(model="llama32-rm"),
        ["reward.model='llama32-rm': no such model", "they define: llama32-1b"],
    ),
    "pad_to_multiple_of": (
        lambda tr, mo: tr["actor_rollout_ref"]["actor_rollout"].update(pad_to_multiple_of=3),
        ["pad_to_multiple_of=3", "max_new_tokens = seq_length 512 - max_prompt_length 256 = 256 is not a multiple"],
    ),
    "hinge": (
        lambda tr, mo: tr["training"].update(dpo_loss_type="hinge"),
        ["dpo_loss_type='hinge'", "NotImplementedError"],
    ),
    "more_samples": (
        lambda tr, mo: tr["actor_rollout_ref"]["actor_rollout"].update(n_samples_per_prompt=2),
        ["n_samples_per_prompt=2", "mixes prompts"],
    ),
    "dropout_by_default": (
        lambda tr, mo: mo["llama32-1b"].pop("hidden_dropout"),
        ["model.llama32-1b.hidden_dropout absent (the original's default: 0.1)", "no dropout here"],
    ),
    "split": (
        lambda tr, mo: tr["actor_rollout_ref"]["actor_rollout"].update(split="98,2,0"),
        ["split='98,2,0'", "every prompt trains here"],
    ),
    "layout_this_project_refuses": (
        lambda tr, mo: tr["reward"].update(tensor_model_parallel_size=2),
        ["does not load over recipes/llama32_1b", "resource_pool.reward=1 is not a positive multiple of TP x PP = 2"],
    ),
    "required": (
        lambda tr, mo: tr["actor_rollout_ref"]["actor_rollout"].pop("lr"),
        ["actor_rollout_ref.actor_rollout.lr: not set"],
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_name_the_key(tmp_path, capsys, case):
    change, expected = REFUSALS[case]
    trainer, models = llama32_1b_trainer(), llama32_1b_model()
    change(trainer, models)
    message = refusal(tmp_path, trainer, models, capsys)
    assert message.startswith("python -m tools.from_mindspeed: error: ")
    for part in expected:
        assert part in message, (part, message)


def test_the_docs_hold_the_reference_table():
    doc = (ROOT / "docs" / "from_mindspeed.md").read_text()
    assert reference_markdown() in doc, "regenerate: python -m tools.from_mindspeed --reference"


def test_the_command_line_resolves_paths_from_where_it_runs(tmp_path):
    """``python -m tools.from_mindspeed`` as a user runs it, from the folder ray_gpt.py ran in (the
    default --base-dir), with the config's path relative to it."""
    write_setup(tmp_path, llama32_1b_trainer(), llama32_1b_model())
    command = [
        sys.executable,
        "-m",
        "tools.from_mindspeed",
        "configs/rlxf/online_dpo_trainer.yaml",
        "--out",
        "mine.yaml",
    ]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"relative paths of the original resolved from {tmp_path} (--base-dir)" in proc.stdout
    assert "next: ./run.sh llama32_1b --overlay mine.yaml" in proc.stdout
    cfg = over("llama32_1b", tmp_path / "mine.yaml")
    assert cfg.actor_rollout_ref.actor_rollout.data_path == str(tmp_path / "dataset/descriptiveness/descriptiveness")
