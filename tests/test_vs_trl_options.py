"""bench/vs_trl.py's workload and device options (issue #30 item 4), without running either side: the
one_gpu workload's settings on TRL's side (bench/trl_side.py's HF model config and OnlineDPOConfig
arguments) and on this project's (the ./run.sh command it launches, loaded back by the project's
config loader) come from recipes/llama32_1b/config.yaml + one_gpu.yaml, at full size and at the toy
size bench/device_run.sh rehearses; the BENCH CONFIG's settings are still the constants it always ran;
`--device cuda` on a machine without CUDA stops, naming what is missing, before anything is written."""

import re

import pytest
import torch
from conftest import ROOT
from omegaconf import OmegaConf

import bench.trl_side as trl_side
import bench.vs_trl as vs_trl
import bench.workload as w
from common.config.load import load_config, overlay_file

RECIPE = ROOT / "recipes" / "llama32_1b"


def recipe_config(*overrides: str):
    """The recipe's config + the one_gpu overlay, loaded here independently of bench/workload.py."""
    return load_config(RECIPE / "config.yaml", list(overrides), overlay_file(RECIPE, "one_gpu"))


def assert_trl_side_matches(wl: w.Workload, cfg) -> None:
    """TRL's models and trainer arguments carry the config's shape, dtype, batch and sampling."""
    m, ar, t = cfg.model, cfg.actor_rollout_ref.actor_rollout, cfg.training
    for reward in (False, True):
        hf = trl_side.hf_config(wl, reward=reward)
        shape = (hf["num_hidden_layers"], hf["hidden_size"], hf["intermediate_size"], hf["num_attention_heads"],
                 hf["num_key_value_heads"], hf["vocab_size"], hf["max_position_embeddings"], hf["rms_norm_eps"])  # fmt: skip
        assert shape == (m.num_layers, m.hidden_size, m.ffn_hidden_size, m.num_attention_heads, m.num_query_groups,
                         m.vocab_size, m.max_position_embeddings, m.rms_norm_eps)  # fmt: skip
        assert hf["tie_word_embeddings"] is m.tie_word_embeddings is True  # Llama-3.2-1B shares them
        assert hf["rope_parameters"] == {
            "rope_type": "llama3", "rope_theta": m.rope_theta, "factor": m.rope_scaling_factor,
            "low_freq_factor": m.rope_low_freq_factor, "high_freq_factor": m.rope_high_freq_factor,
            "original_max_position_embeddings": m.rope_original_max_position_embeddings,
        }  # fmt: skip
    args = trl_side.trainer_settings(wl, 6, ROOT / "unused")
    assert args["per_device_train_batch_size"] == t.global_batch_size and ar.n_samples_per_prompt == 2
    assert args["max_new_tokens"] == t.seq_length - ar.max_prompt_length and args["max_length"] == t.seq_length
    sampling = ("temperature", "top_p", "top_k", "missing_eos_penalty")
    assert [args[k] for k in sampling] == [ar[k] for k in sampling]
    assert (args["learning_rate"], args["max_grad_norm"], args["beta"], args["loss_type"]) == (
        ar.lr, ar.clip_grad, cfg.algorithm.beta, cfg.algorithm.loss_type
    )  # fmt: skip
    assert args["bf16"] is (t.dtype == "bf16") and args["use_cpu"] is (t.device == "cpu") and not args["fp16"]
    assert args["max_steps"] == 6 and args["seed"] == t.seed
    assert trl_side.unsupported(wl) == []


def assert_our_side_matches(wl: w.Workload, cfg, tmp_path) -> None:
    """The ./run.sh command vs_trl launches loads (as run.sh would load it) to the same settings."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Say hi."}\n')
    cmd = vs_trl.ours_command(wl, 5, prompts, tmp_path / "run")
    assert cmd[:4] == [str(ROOT / "run.sh"), "llama32_1b", "--overlay", "one_gpu"] and cmd[4] == "--out"
    ran = load_config(RECIPE / "config.yaml", cmd[6:], overlay_file(RECIPE, cmd[3]))
    assert w.settings_from_config(ran) == w.settings_from_config(cfg) == wl.shared()
    assert ran.training.train_iters == 5 and ran.training.save_interval == 0  # no 17 GB checkpoint in the bench
    assert ran.actor_rollout_ref.actor_rollout.data_path == str(prompts)
    assert vs_trl.workload_differences(ran, wl) == []


def test_one_gpu_workload_on_both_sides_is_the_recipes_config_and_overlay(tmp_path):
    cfg = recipe_config("training.device=cuda")
    wl = w.workload("one_gpu", "full", "cuda")
    assert (wl.device, wl.dtype, wl.arch["num_layers"], wl.arch["hidden_size"]) == ("cuda", "bf16", 16, 2048)
    assert (wl.prompts_per_iter, wl.samples, wl.new_tokens, wl.max_length) == (4, 2, 256, 512)
    assert wl.prompts == cfg.actor_rollout_ref.actor_rollout.data_path  # the overlay's prompts, in file order
    assert wl.tokenizer == cfg.training.tokenizer_name_or_path
    assert_trl_side_matches(wl, cfg)
    assert_our_side_matches(wl, cfg, tmp_path)


def test_toy_scale_is_device_run_shs_toy_model_in_fp32(tmp_path):
    cfg = recipe_config("training.device=cpu", *w.TOY_OVERRIDES)
    wl = w.workload("one_gpu", "toy", "cpu")
    assert (wl.dtype, wl.arch["num_layers"], wl.arch["hidden_size"], wl.arch["ffn_hidden_size"]) == ("fp32", 2, 64, 256)
    assert (wl.arch["num_attention_heads"], wl.arch["num_query_groups"]) == (4, 2)
    assert wl.reward_arch == wl.arch and wl.arch["tie_word_embeddings"]
    assert_trl_side_matches(wl, cfg)
    assert_our_side_matches(wl, cfg, tmp_path)
    # bench/device_run.sh's SCALE=toy loop runs the same model: every toy override is among its loop args
    script = (ROOT / "bench" / "device_run.sh").read_text()
    toy_args = re.search(r"^\s*toy\) loop_args=\((.*?)\)", script, re.S | re.M).group(1).split()
    assert set(w.TOY_OVERRIDES) <= set(toy_args), set(w.TOY_OVERRIDES) - set(toy_args)


def test_a_run_of_another_workload_is_not_taken_as_ours(tmp_path):
    wl = w.workload("one_gpu", "toy", "cpu")
    other = OmegaConf.to_container(recipe_config("training.device=cpu", *w.TOY_OVERRIDES, "model.num_layers=3"))
    other["actor_rollout_ref"]["actor_rollout"]["temperature"] = 1.0
    diff = vs_trl.workload_differences(OmegaConf.create(other), wl)
    assert any(d.startswith("arch:") for d in diff) and any(d.startswith("temperature: 1.0") for d in diff), diff


def test_bench_workload_is_the_bench_config_it_always_ran(tmp_path):
    wl = w.workload("bench")
    assert (wl.device, wl.dtype, wl.prompts_per_iter, wl.new_tokens, wl.temperature) == ("cpu", "fp32", 8, 64, 0.9)
    # the LlamaConfig arguments trl_side.py passed before it had workloads
    assert trl_side.hf_config(wl, reward=True) == dict(
        vocab_size=w.ARCH["vocab_size"], hidden_size=w.ARCH["hidden_size"], intermediate_size=w.ARCH["ffn_hidden_size"],
        num_hidden_layers=w.ARCH["num_layers"], num_attention_heads=w.ARCH["num_attention_heads"],
        num_key_value_heads=w.ARCH["num_query_groups"], max_position_embeddings=w.ARCH["max_position_embeddings"],
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": w.ARCH["rope_theta"]},
        tie_word_embeddings=False, attention_dropout=0.0, num_labels=1,
        bos_token_id=128000, eos_token_id=128009, pad_token_id=128009,
    )  # fmt: skip
    args = trl_side.trainer_settings(wl, 12, tmp_path)
    assert (args["use_cpu"], args["bf16"], args["learning_rate"], args["max_grad_norm"]) == (True, False, w.LR, 1.0)
    prompts, run = tmp_path / "p.jsonl", tmp_path / "run"
    assert vs_trl.ours_command(wl, 12, prompts, run) == [  # the command it always ran
        str(ROOT / "run.sh"), "tiny", "--overlay", "bench", "--out", str(run), "training.train_iters=12",
        f"actor_rollout_ref.actor_rollout.data_path={prompts}",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="BENCH CONFIG runs on CPU"):
        w.workload("bench", "full", "cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: --device cuda would run")
def test_device_cuda_without_cuda_stops_before_anything_starts(tmp_path):
    out, report = tmp_path / "out", tmp_path / "report.md"
    argv = ["--device", "cuda", "--workload", "one_gpu", "--iters", "5", "--out", str(out), "--report", str(report)]
    with pytest.raises(SystemExit) as stop:
        vs_trl.main(argv)
    message = str(stop.value.code)
    assert message.startswith("error: --device cuda:") and "Nothing was run" in message, message
    assert "CUDA" in message and "--device cpu" in message, message
    assert not out.exists() and not report.exists()  # nothing written: no side started
    with pytest.raises(SystemExit) as trl_stop:  # TRL's side, run on its own, refuses the same way
        trl_side.main(["--prompts", "p.jsonl", "--iters", "5", "--out", str(out / "t.jsonl"),
                       "--workdir", str(out), "--workload", "one_gpu", "--device", "cuda"])  # fmt: skip
    assert str(trl_stop.value.code) == message
    assert not out.exists()


def test_gpu_report_gives_totals_per_phase_the_gpu_its_peak_memory_and_the_commit():
    """The report of a GPU bench, from rows of the shape both sides write (TRL's with its process's
    GPU fields); this project's GPU memory is said to be unrecorded, not made up."""
    wl = w.workload("one_gpu", "full", "cuda")
    gpu = {"device_name": "NVIDIA H100 80GB HBM3", "peak_flops": 989e12, "peak_source": "datasheet",
           "gpu_max_allocated": 30 * 2**30}  # fmt: skip

    def row(step: float, generate: float, **extra) -> dict:
        rest = (step - generate) / 3
        timings = {"timing/step": step, "timing/generate": generate, "timing/reference": rest,
                   "timing/reward": rest, "timing/train": rest}  # fmt: skip
        return timings | {"prompt_lens": [20] * 8, "response_lens": [256] * 8, **extra}

    trl = {"rows": [row(10.0, 7.0, **gpu) for _ in range(5)], "peak_rss": 8 * 2**30, "peak_pss": 7 * 2**30,
           "launch_to_first_s": 20.0}  # fmt: skip
    ours = {"rows": [row(4.0, 1.0) for _ in range(5)], "peak_rss": 6 * 2**30, "peak_pss": 5 * 2**30,
            "launch_to_first_s": 40.0}  # fmt: skip
    meta = {"prompts": "p.jsonl", "num_prompts": 64, "prompt_len_min": 20, "prompt_len_max": 20,
            "prompt_len_mean": 20, "workload": wl, "commit": "abc123 (clean tree)", "ours_from": None,
            **vs_trl.device_meta(wl, None, {"trl": trl, "ours": ours})}  # fmt: skip
    text = vs_trl.report(trl, ours, meta)
    assert "| **total seconds** | 30.0 | 12.0 | **2.50x** |" in text  # iterations 3-5
    assert "| generate: total seconds | 21.00 | 3.00 | 7.00x |" in text
    assert "| generated tokens/s | 293 | 2048 | 7.00x |" in text  # 3 x 8 x 256 tokens over 21 s and 3 s
    assert "| peak GPU memory, torch.cuda.max_memory_allocated (GiB) | 30.00 | not recorded | - |" in text
    assert "GPU: NVIDIA H100 80GB HBM3" in text and "Commit: abc123 (clean tree)" in text
    assert "TFLOP/s (share of peak)" in text and "16 layers, hidden 2048" in text and "bf16 on cuda" in text
