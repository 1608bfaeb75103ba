"""Issue 28 end to end: a MindSpeed-LLM Online DPO setup, built from scratch the way the original's
tools build it, runs here as it is.

The setup (../shared/reference/seed-formats.md): a Hydra config pair in its layout
(``online_dpo_trainer_*.yaml`` + ``model/*.yaml``), prompts preprocessed into a Megatron indexed
dataset (``<prefix>_packed_input_ids_document.bin/.idx``, written by megatron-core's own
``IndexedDatasetBuilder``, each record a Llama-3-template prompt), and a policy and a reward model
saved as ``model_optim_rng.pt`` from Megatron-core's own ``state_dict_for_save_checkpoint()``: the
policy at TP 1 (the reference) and both at TP 2 x PP 2 (a real 4-rank world). It is imported with
``tools.from_mindspeed`` and trained 2 iterations of ``tiny`` size through Ray; the trained ``final/``
is written back in MindSpeed's format and read back bit for bit.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_recipe
from test_mindspeed_checkpoint import _save

from common.run.outputs import read_jsonl

TOKENIZER = ROOT / "assets" / "llama3_tokenizer"
KINDS = ("policy", "reward")
# The tiny recipe's model (Llama-3 vocabulary and RoPE scaling, 2 layers), untied: Megatron-core
# cannot build tied embeddings with PP > 1 on CPU (common/device/megatron_cpu_patches.py).
ARCH = dict(vocab_size=128256, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5, tie_word_embeddings=False)  # fmt: skip
ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}  # fmt: skip


def _hf_model(kind: str):
    import transformers

    cfg = transformers.LlamaConfig(**ARCH, num_labels=1, rope_parameters=ROPE, bos_token_id=128000,
                                   eos_token_id=128009, pad_token_id=128009)  # fmt: skip
    torch.manual_seed({"policy": 5, "reward": 6}[kind])
    cls = transformers.LlamaForSequenceClassification if kind == "reward" else transformers.LlamaForCausalLM
    model = cls(cfg).eval()
    if kind == "reward":  # O(1) scores, so that a wrong weight shows
        with torch.no_grad():
            model.score.weight.normal_(0.0, 1.0)
    return model


def _ids() -> torch.Tensor:
    return torch.randint(0, ARCH["vocab_size"], (2, 10), generator=torch.Generator().manual_seed(3))


@torch.no_grad()
def _hf_outputs(model) -> torch.Tensor:
    """Logits [B, T, V] of a policy, per-position scores [B, T] of a reward model."""
    if hasattr(model, "score"):
        return model.score(model.model(_ids()).last_hidden_state)[..., 0]
    return model(_ids()).logits


def megatron_state_dicts(hf_root: str) -> dict:
    """On every rank of a Megatron world: each HF model loaded into Megatron-core's GPT, and what
    MindSpeed's saver stores of it (``state_dict_for_save_checkpoint()``, stage-local layer
    indices; a reward model's head as the row-parallel ``rm_head`` with its zero bias)."""
    from megatron.core import parallel_state as ps

    from common.model.llama import build_policy, build_reward_model
    from common.weights.convert import arch_from_path
    from common.weights.hf_format import load_hf_into_model

    tp, pp = ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size()
    out = {"rank": (ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank())}
    for kind in KINDS:
        arch, reward = arch_from_path(Path(hf_root) / kind)
        model = (build_reward_model if reward else build_policy)(arch, dtype=torch.float32, seed=0)
        load_hf_into_model(model, Path(hf_root) / kind, arch)
        gpt = model.gpt if reward else model
        sd = {k: v.clone() for k, v in gpt.state_dict_for_save_checkpoint().items() if not k.endswith("_extra_state")}
        if reward and "output_layer.weight" in sd:  # last stage: the head, split by columns as RowParallelLinear
            head = sd.pop("output_layer.weight")
            sd["rm_head.weight"] = head.chunk(tp, dim=1)[out["rank"][0]].clone()
            sd["rm_head.bias"] = torch.zeros(1)
        out[kind] = (sd, arch, (tp, pp))
    return out


def _args(arch, tp: int, pp: int, reward: bool):
    from common.weights.mindspeed import mindspeed_args

    args = mindspeed_args(arch, reward=reward, tp=tp, pp=pp, dtype=torch.float32)
    args.make_vocab_size_divisible_by = 128  # Megatron's default, which the models above were built with
    return args


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The original-style folders: HF models, MindSpeed checkpoints at TP 1 and TP 2 x PP 2."""
    from tests._dist import run_world

    root = tmp_path_factory.mktemp("mindspeed_setup")
    expected = {}
    for kind in KINDS:
        model = _hf_model(kind)
        model.save_pretrained(root / "hf" / kind)
        expected[kind] = _hf_outputs(model)
    folders = {}
    for tp, pp in ((1, 1), (2, 2)):
        ranks = run_world(megatron_state_dicts, str(root / "hf"), world_size=tp * pp, tp=tp, pp=pp)
        for kind in KINDS:
            files = {r["rank"]: r[kind][0] for r in ranks}
            arch = ranks[0][kind][1]
            name = f"{kind}-mcore-tp{tp}-pp{pp}"
            folders[name] = _save(root / "models" / name, files, _args(arch, tp, pp, kind == "reward"), pp=pp)
    return root, folders, expected


@pytest.mark.slow
@pytest.mark.parametrize("name", ["policy-mcore-tp1-pp1", "policy-mcore-tp2-pp2", "reward-mcore-tp2-pp2"])
def test_the_original_checkpoints_give_transformers_outputs(setup, world1, name):
    from common.model.llama import build_policy, build_reward_model
    from common.weights.convert import arch_from_path, load_into_model

    _, folders, expected = setup
    arch, reward = arch_from_path(folders[name])
    model = (build_reward_model if reward else build_policy)(arch, dtype=torch.float32, seed=1)
    load_into_model(model, folders[name], arch)
    from common.train.logprobs import causal_padding_mask

    ids = _ids()
    position = torch.arange(ids.shape[1]).expand_as(ids)
    with torch.no_grad():
        got = model(ids, position, causal_padding_mask(torch.ones_like(ids, dtype=torch.bool)))
    got = got if reward else got[..., : ARCH["vocab_size"]]
    want = expected["reward" if reward else "policy"]
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-4


MODEL_YAML = """\
tiny-llama:
  use_mcore_models: true
  sequence_parallel: true
  use_flash_attn: true
  use_rotary_position_embeddings: true
  use_fused_rmsnorm: true
  use_fused_swiglu: true
  rope_scaling_type: llama3
  rope_scaling_factor: 32.0
  low_freq_factor: 1.0
  high_freq_factor: 4.0
  original_max_position_embeddings: 8192
  max_position_embeddings: 1024
  num_layers: 2
  hidden_size: 64
  ffn_hidden_size: 256
  num_attention_heads: 4
  group_query_attention: true
  num_query_groups: 2
  make_vocab_size_divisible_by: 1
  padded_vocab_size: 128256
  untie_embeddings_and_output_weights: true
  disable_bias_linear: true
  attention_dropout: 0.0
  init_method_std: 0.02
  hidden_dropout: 0.0
  position_embedding_type: rope
  rotary_base: 500000
  normalization: RMSNorm
  norm_epsilon: 1e-5
  swiglu: true
  no_masked_softmax_fusion: true
  attention_softmax_in_fp32: true
  no_gradient_accumulation_fusion: true
  bf16: true
"""

# The original's online_dpo_trainer_llama32_1b.yaml at tiny scale: the same keys, the tiny model,
# 8 prompts an iteration, responses of up to 32 tokens, fp32, the weights and data made above.
TRAINER_YAML = """\
defaults:
  - model:
    - tiny-llama

training:
  global_batch_size: 8
  seq_length: 96
  tokenizer_type: PretrainedFromHF
  tokenizer_name_or_path: ./models/tokenizer/
  train_iters: 2
  distributed_backend: nccl
  no_shared_storage: true
  save_interval: 10000
  no_load_optim: true
  no_load_rng: true
  bf16: false  # fp32 on this CPU (the 1B file has true; false overrides the model file's, as there)
  is_instruction_dataset: true
  variable_seq_lengths: true
  stage: ray_online_dpo

actor_rollout_ref:
  actor_rollout:
    model: tiny-llama
    micro_batch_size: 4
    ppo_mini_batch_size: 8
    max_prompt_length: 64
    ppo_epochs: 1
    clip_ratio: 0.2
    entropy_coeff: 0.001
    do_sample: true
    shuffle: false
    use_kv_cache: true
    num_samples_per_step: 4
    tensor_model_parallel_size: 1
    pipeline_model_parallel_size: 1
    lr: 1e-3
    lr_decay_style: constant
    min_lr: 0.0
    weight_decay: 0.0
    lr_warmup_fraction: 0.0
    clip_grad: 10000.0
    adam_beta1: 0.9
    adam_beta2: 0.999
    initial_loss_scale: 4096
    finetune: true
    load: ./models/policy-mcore-tp2-pp2
    save: ./ckpt
    num_gpus_for_train: 1
    num_gpus_for_infer: 1
    pad_to_multiple_of: 1
    inference_tensor_model_parallel_size: 1
    data_path: ./dataset/tiny/tiny
    split: 100,0,0
    no_shuffle: true
    missing_eos_penalty: 1.0

  ref:
    model: tiny-llama
    tensor_model_parallel_size: 1
    pipeline_model_parallel_size: 1
    micro_batch_size: 4
    load: ./models/policy-mcore-tp1-pp1

reward:
  model: tiny-llama
  tensor_model_parallel_size: 1
  pipeline_model_parallel_size: 1
  micro_batch_size: 4
  sequence_parallel: False
  load: ./models/reward-mcore-tp2-pp2

algorithm:
  gamma: 1.0
  lam: 0.95
  adv_estimator: gae
  kl_penalty: kl
  kl_ctrl:
    type: fixed
    kl_coef: 0.05
  missing_eos_penalty: 1.0

resource_pool:
  actor_rollout: [2]
  ref: [1]
  reward: [1]
"""


@pytest.fixture(scope="module")
def imported(setup):
    """The original's whole setup in its layout under one folder (where ``ray_gpt.py`` would run):
    configs/rlxf (the trainer file and model/), dataset/tiny (the indexed prompts), models/ (the
    MindSpeed checkpoints, the tokenizer); imported with ``tools.from_mindspeed``."""
    from test_indexed_prompts import original_ids, write_indexed

    from common.prompts.tokenizer import load_tokenizer

    root, _, _ = setup
    base = root  # models/ is already there
    (base / "models" / "tokenizer").symlink_to(TOKENIZER.resolve(), target_is_directory=True)
    rlxf = base / "configs" / "rlxf"
    (rlxf / "model").mkdir(parents=True)
    (rlxf / "model" / "tiny-llama.yaml").write_text(MODEL_YAML)
    (rlxf / "online_dpo_trainer_tiny.yaml").write_text(TRAINER_YAML)
    tok = load_tokenizer(str(TOKENIZER))
    prompts = [row["prompt"] for row in read_jsonl(ROOT / "data" / "prompts" / "tiny_prompts.jsonl")][:24]
    records = [original_ids(tok, p) for p in prompts]
    (base / "dataset" / "tiny").mkdir(parents=True)
    prefix = write_indexed(base / "dataset" / "tiny" / "tiny", records)
    overlay = base / "mine.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "tools.from_mindspeed", str(rlxf / "online_dpo_trainer_tiny.yaml"), "--base-dir",
         str(base), "--recipe", "tiny", "--out", str(overlay)], cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return base, overlay, prompts, records, prefix


@pytest.fixture(scope="module")
def trained(imported, tmp_path_factory):
    """Two iterations of the imported setup through Ray, over the tiny recipe."""
    base, overlay, *_ = imported
    out = tmp_path_factory.mktemp("mindspeed_run") / "run"
    proc = run_recipe("tiny", out, "--overlay", str(overlay))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out, proc


@pytest.mark.slow
def test_the_imported_setup_trains_through_ray(imported, trained):
    _, _, prompts, records, prefix = imported
    out, proc = trained
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert abs(rows[0]["loss"] - math.log(2)) < 1e-4  # the actor (from TP 2 x PP 2) equals the reference (TP 1)
    placement = (out / "placement.json").read_text()
    assert '"rollout"' in placement  # num_gpus_for_infer: a dedicated generating rank, as in the original
    # the prompts, in the stored order (no_shuffle), are the text the records were made from
    rollouts = read_jsonl(out / "rollouts.jsonl")
    from common.prompts.messages import prompt_text

    assert [r["prompt"] for r in rollouts] == [prompt_text(p) for p in prompts[:16]]
    # and what generation was given is the stored ids themselves (the loader the run used)
    from common.prompts.dataset import load_prompt_dataset
    from common.prompts.tokenizer import load_tokenizer

    ids, _, dropped = load_prompt_dataset(prefix, load_tokenizer(str(TOKENIZER)), 64)
    assert (ids, dropped) == (records, 0)
    assert f"({len(records)} prompts, 0 dropped as too long)" in proc.stdout


@pytest.mark.slow
def test_the_trained_actor_goes_back_to_mindspeed_format_bit_for_bit(trained, setup, tmp_path):
    from common.weights.convert import CheckpointReader
    from common.weights.mindspeed import MindSpeedReader

    out, _ = trained
    back = tmp_path / "policy-trained-tp2-pp2"
    proc = subprocess.run(
        [sys.executable, "-m", "tools.convert_checkpoint", "mcore-to-mindspeed", "--ckpt", str(out / "final"),
         "--out", str(back), "--tp", "2", "--pp", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = CheckpointReader(out / "final").full_state_dict()
    again = MindSpeedReader(back).full_state_dict()
    assert final.keys() == again.keys()
    for name in final:
        assert torch.equal(final[name], again[name]), name
    start = MindSpeedReader(setup[1]["policy-mcore-tp2-pp2"]).full_state_dict()
    assert not torch.equal(
        final["decoder.layers.0.mlp.linear_fc1.weight"], start["decoder.layers.0.mlp.linear_fc1.weight"]
    )
