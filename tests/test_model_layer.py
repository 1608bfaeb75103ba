"""Model layer on CPU: Megatron Llama, log-probs, KV-cache generation, sampler, reward model.

Run: cd /work/main && .venv/bin/python -m pytest tests/test_model_layer.py -x -q

A TP=1 world lives in the pytest process (module fixture); TP=2 runs as a spawned 2-rank gloo
world that computes the same scenario, and the tests compare the two.
"""

from __future__ import annotations

import pytest
import torch

from tests._dist import run_world

VOCAB = 1000  # padded to 1024 inside: exercises the padded-id masking
ARCH = dict(
    num_layers=2,
    hidden_size=64,
    ffn_hidden_size=128,
    num_attention_heads=4,
    num_query_groups=2,
    vocab_size=VOCAB,
    max_position_embeddings=256,
    # Llama-3 scaling with a short original context, so it changes frequencies at test lengths.
    rope_scaling_factor=8.0,
    rope_original_max_position_embeddings=32,
)
PROMPT_LENGTHS = (5, 9, 3, 12)


def _arch(**overrides):
    from common.model.llama import LlamaArch

    return LlamaArch(**{**ARCH, **overrides})


def _batch():
    """Right-padded ids [4, 14] with valid mask, and mixed-length prompts."""
    g = torch.Generator().manual_seed(123)
    lengths = torch.tensor([14, 9, 11, 4])
    ids_BT = torch.randint(0, VOCAB, (4, 14), generator=g)
    valid_BT = torch.arange(14)[None, :] < lengths[:, None]
    ids_BT = ids_BT.masked_fill(~valid_BT, 0)
    prompts = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in PROMPT_LENGTHS]
    return ids_BT, valid_BT, prompts


def _hf_llama(tie: bool, seq_cls: bool = False):
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
        tie_word_embeddings=tie,
        num_labels=1,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    )
    torch.manual_seed(7)
    cls = transformers.LlamaForSequenceClassification if seq_cls else transformers.LlamaForCausalLM
    return cls(cfg).eval()


def scenario() -> dict:
    """Everything the TP comparisons look at, computed on this rank's world."""
    from common.generate.generation import generate
    from common.model.llama import build_policy, build_reward_model, load_hf_llama_state_dict
    from common.train.logprobs import causal_padding_mask, token_logprobs

    arch = _arch()
    ids_BT, valid_BT, prompts = _batch()
    position_ids_BT = torch.arange(14).expand(4, 14)
    mask = causal_padding_mask(valid_BT)
    policy = build_policy(arch, dtype=torch.float32, seed=0)
    reward = build_reward_model(arch, dtype=torch.float32, seed=1)
    out = {}
    with torch.no_grad():
        out["logits"] = policy(ids_BT, position_ids_BT, mask, runtime_gather_output=True)
        out["scores"] = reward(ids_BT, position_ids_BT, mask)
    out["logps"] = token_logprobs(policy, ids_BT, valid_BT).detach()
    out["shared_scores"], out["full_scores"] = _shared_and_full_scores(reward)
    gen = dict(max_new_tokens=12, top_p=1.0, eos_token_ids=[VOCAB + 5])
    keys = _keys(len(prompts), 5)
    out["greedy"] = generate(policy, prompts, temperature=1.0, top_k=1, sample_keys=keys, **gen)
    out["sampled"] = generate(policy, prompts, temperature=0.9, top_k=0, sample_keys=keys, **gen)
    out["sampled_static"] = generate(
        policy, prompts, temperature=0.9, top_k=0, sample_keys=keys, decode="static", **gen
    )
    out["layer0"] = {
        name: p.detach().clone()
        for name, p in policy.named_parameters()
        if name.startswith("decoder.layers.0.") or name.startswith("embedding.")
    }
    hf = _hf_llama(tie=True)
    tied = build_policy(_arch(tie_word_embeddings=True), dtype=torch.float32, seed=3)
    load_hf_llama_state_dict(tied, hf.state_dict(), _arch(tie_word_embeddings=True))
    full_mask = causal_padding_mask(torch.ones_like(valid_BT))  # HF runs it unpadded
    with torch.no_grad():
        out["hf_logits"] = tied(ids_BT, position_ids_BT, full_mask, runtime_gather_output=True)
    return out


def _rollout_like():
    """Sequences as a rollout has them: 2 responses per prompt (different lengths, one ending in
    EOS at its first token), prompts of 1 to 12 tokens; with their score positions."""
    from common.train.sequences import Sequence, score_positions

    g = torch.Generator().manual_seed(9)
    eos = VOCAB - 1
    seqs = []
    for n in (*PROMPT_LENGTHS, 1):
        prompt = torch.randint(0, VOCAB - 1, (n,), generator=g).tolist()
        seqs.append(Sequence(prompt, torch.randint(0, VOCAB - 1, (7,), generator=g).tolist()))
        seqs.append(Sequence(prompt, torch.randint(0, VOCAB - 1, (n % 4,), generator=g).tolist() + [eos]))
    return seqs, [score_positions(seqs, {eos}, where).tolist() for where in ("eos", "before_eos")]


def _shared_and_full_scores(reward):
    """common.reward.forward's scores (one group, and one prompt per group) and the full forward's
    scores at the same positions."""
    from common.reward.forward import shared_prompt_scores
    from common.train.logprobs import causal_padding_mask
    from common.train.sequences import pad_batch

    seqs, positions = _rollout_like()
    b = pad_batch(seqs)
    T = b.ids_BT.shape[1]
    with torch.no_grad():
        full_BT = reward(b.ids_BT, torch.arange(T).expand(len(seqs), T), causal_padding_mask(b.valid_BT))
    full = torch.stack([full_BT[torch.arange(len(seqs)), torch.tensor(p)] for p in positions])
    shared = torch.tensor(
        [[shared_prompt_scores(reward, seqs, p, max_rows) for p in positions] for max_rows in (16, 2)]
    )
    return shared, full


@pytest.fixture(scope="module")
def tp1(world1):
    return scenario()


@pytest.fixture(scope="module")
def tp2():
    return run_world(scenario, world_size=2, tp=2)


@pytest.fixture(scope="module")
def policy(world1):
    from common.model.llama import build_policy

    return build_policy(_arch(), dtype=torch.float32, seed=0)


# ------------------------------------------------------------------------------------ device


def test_device_resolution_and_dtype():
    from common.device.backend import resolve_device

    cpu = resolve_device("cpu")
    assert (cpu.kind, cpu.backend, cpu.ray_resource) == ("cpu", "gloo", None)
    assert resolve_device("auto").kind in ("cpu", "cuda", "npu")
    assert cpu.compute_dtype("fp32") == torch.float32
    with pytest.raises(ValueError, match="fp32"):
        cpu.compute_dtype("bf16")
    with pytest.raises(ValueError, match="unknown kind"):
        resolve_device("tpu")
    if torch.cuda.is_available():
        assert resolve_device("cuda").kind == "cuda"
    else:
        with pytest.raises(ValueError, match="cuda"):
            resolve_device("cuda")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_have_one_dtype(world1, dtype):
    """Every weight of a half-precision policy and reward model has the model's dtype, the norms'
    too (Megatron's local spec builds them in fp32; its own training casts the model afterwards):
    Megatron's mixed-precision optimizer keeps fp32 main copies of half-precision weights only,
    and torch's fused RMSNorm needs one dtype for input and weight."""
    from common.model.llama import build_policy, build_reward_model

    for model in (build_policy(_arch(), dtype=dtype, seed=0), build_reward_model(_arch(), dtype=dtype, seed=1)):
        dtypes = {name: p.dtype for name, p in model.named_parameters()}
        assert set(dtypes.values()) == {dtype}, {n: d for n, d in dtypes.items() if d != dtype}
        assert any("layernorm" in name for name in dtypes)


# ------------------------------------------------------------------------------------ RoPE


def test_llama3_rope_scaling_matches_transformers():
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from common.model.llama import LlamaArch, llama3_inv_freq

    arch = LlamaArch(
        num_layers=1,
        hidden_size=2048,
        ffn_hidden_size=8192,
        num_attention_heads=32,
        num_query_groups=8,
        vocab_size=128256,
        max_position_embeddings=131072,
        rope_scaling_factor=32.0,
        rope_low_freq_factor=1.0,
        rope_high_freq_factor=4.0,
        rope_original_max_position_embeddings=8192,
    )
    cfg = transformers.LlamaConfig(
        hidden_size=2048,
        num_attention_heads=32,
        max_position_embeddings=131072,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, torch.device("cpu"))
    ours = llama3_inv_freq(arch)
    unscaled = llama3_inv_freq(LlamaArch(**{**arch.__dict__, "rope_scaling_factor": None}))
    assert not torch.allclose(ours, unscaled)  # the scaling really does something
    torch.testing.assert_close(ours, expected.float(), rtol=1e-6, atol=0)


# ------------------------------------------------------------------------------------ sampler


def _keys(n: int, salt: int) -> list[int]:
    from common.generate.sampling import sample_key

    return [sample_key(salt, row) for row in range(n)]


def _frequencies(ids_B: torch.Tensor, n: int) -> torch.Tensor:
    return torch.bincount(ids_B, minlength=n).double() / ids_B.numel()


def test_keyed_sampler_reproduces_distribution():
    from common.generate.sampling import sample_tokens

    # 130 ids: two blocks of the two-level draw, the second holding two likely ids
    p = torch.zeros(130)
    p[[0, 1, 2, 3, 4, 5, 128, 129]] = torch.tensor([0.3, 0.2, 0.15, 0.1, 0.06, 0.04, 0.1, 0.05])
    draws = 100_000
    logits_BV = p.log().expand(draws, -1).contiguous()
    keys_B = torch.tensor(_keys(draws, 0))
    ids_B = sample_tokens(logits_BV, temperature=1.0, top_k=0, top_p=1.0, keys_B=keys_B, position=0)
    counts = torch.bincount(ids_B, minlength=130).double()
    likely = p > 0
    assert counts[~likely].sum() == 0  # zero-probability ids are never drawn
    expected = p[likely].double() * draws
    chi2 = ((counts[likely] - expected) ** 2 / expected).sum().item()
    assert chi2 < 35.0, chi2  # 7 degrees of freedom: P(chi2 > 35) ~ 1e-5

    # temperature 2 -> p^(1/2), renormalised; another position draws other noise
    ids_B = sample_tokens(logits_BV, temperature=2.0, top_k=0, top_p=1.0, keys_B=keys_B, position=1)
    target = p.sqrt() / p.sqrt().sum()
    torch.testing.assert_close(_frequencies(ids_B, 130), target.double(), atol=6e-3, rtol=0)


def test_keyed_sampler_is_a_function_of_key_and_position():
    from common.generate.sampling import sample_tokens

    logits_BV = torch.randn(6, 1000, generator=torch.Generator().manual_seed(0))
    keys_B = torch.tensor(_keys(6, 1))
    kw = dict(temperature=1.0, top_k=0, top_p=1.0)
    ids_B = sample_tokens(logits_BV, keys_B=keys_B, position=3, **kw)
    # a row's draw does not depend on the other rows of the batch (data-parallel split)
    for row in range(6):
        alone = sample_tokens(logits_BV[row : row + 1], keys_B=keys_B[row : row + 1], position=3, **kw)
        assert alone.item() == ids_B[row].item()
    # rounding-size changes of the logits (another CPU's kernels) do not move the draw
    nudged_BV = logits_BV * (1 + 1e-6 * torch.randn(6, 1000, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(sample_tokens(nudged_BV, keys_B=keys_B, position=3, **kw), ids_B)
    # the decode step's vocabulary-major layout (strides (1, B)) draws what the row-major one draws
    vocab_major_BV = logits_BV[:, :896].t().contiguous().t()  # 896 = 7 blocks of 128
    assert vocab_major_BV.stride() == (1, 6)
    for temperature in (1.0, 0.7):
        row_major = sample_tokens(
            logits_BV[:, :896].contiguous(), keys_B=keys_B, position=3, temperature=temperature, top_k=0, top_p=1.0
        )
        assert torch.equal(
            sample_tokens(vocab_major_BV, keys_B=keys_B, position=3, temperature=temperature, top_k=0, top_p=1.0),
            row_major,
        )
    # other positions and other keys draw other noise
    assert not torch.equal(sample_tokens(logits_BV, keys_B=keys_B, position=4, **kw), ids_B)
    assert not torch.equal(sample_tokens(logits_BV, keys_B=keys_B + 1, position=3, **kw), ids_B)


def test_top_k_and_top_p_filters():
    from common.generate.sampling import sample_tokens

    p = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    logits_BV = p.log().expand(50_000, -1).contiguous()
    gen = dict(keys_B=torch.tensor(_keys(50_000, 2)), position=0)

    freq = _frequencies(sample_tokens(logits_BV, temperature=1.0, top_k=2, top_p=1.0, **gen), 6)
    torch.testing.assert_close(
        freq, torch.tensor([0.4, 0.25, 0, 0, 0, 0], dtype=torch.float64) / 0.65, atol=8e-3, rtol=0
    )
    # top_p=0.7: 0.4 (mass before 0) and 0.25 (before 0.4) kept; 0.15 (before 0.65) kept; rest not
    freq = _frequencies(sample_tokens(logits_BV, temperature=1.0, top_k=0, top_p=0.7, **gen), 6)
    torch.testing.assert_close(
        freq, torch.tensor([0.4, 0.25, 0.15, 0, 0, 0], dtype=torch.float64) / 0.8, atol=8e-3, rtol=0
    )
    freq = _frequencies(sample_tokens(logits_BV, temperature=1.0, top_k=0, top_p=0.3, **gen), 6)
    assert freq[0] == 1.0
    greedy = sample_tokens(logits_BV[:4], temperature=1.0, top_k=1, top_p=1.0, **gen)
    assert greedy.tolist() == [0, 0, 0, 0]


# ------------------------------------------------------------------------------------ logprobs


def test_token_logprobs_match_naive_log_softmax(policy):
    from common.train.logprobs import causal_padding_mask, token_logprobs

    ids_BT, valid_BT, _ = _batch()
    logps_BT1 = token_logprobs(policy, ids_BT, valid_BT)
    assert logps_BT1.shape == (4, 13) and logps_BT1.dtype == torch.float32
    target_valid_BT1 = valid_BT[:, 1:]
    with torch.no_grad():
        for row in range(4):
            n = int(valid_BT[row].sum())
            ids_1N = ids_BT[row : row + 1, :n]
            mask = causal_padding_mask(torch.ones(1, n, dtype=torch.bool))
            logits_1NV = policy(ids_1N, torch.arange(n)[None], mask)[..., :VOCAB]
            naive_N1 = logits_1NV.log_softmax(-1)[0, :-1].gather(-1, ids_1N[0, 1:, None])[:, 0]
            # Each row alone, unpadded, equals its padded-batch result.
            torch.testing.assert_close(logps_BT1[row][target_valid_BT1[row]], naive_N1, atol=1e-5, rtol=0)


def test_token_logprobs_differentiable_and_trimmed(policy):
    from common.train.logprobs import token_logprobs

    ids_BT, valid_BT, _ = _batch()
    # Extra all-padding columns change nothing (the computation is trimmed to the longest row).
    wide_ids = torch.nn.functional.pad(ids_BT, (0, 6))
    wide_valid = torch.nn.functional.pad(valid_BT, (0, 6))
    with torch.no_grad():
        narrow = token_logprobs(policy, ids_BT, valid_BT)
        wide = token_logprobs(policy, wide_ids, wide_valid)
    assert wide.shape == (4, 19)
    torch.testing.assert_close(wide[:, :13], narrow, atol=1e-6, rtol=0)
    assert (wide[:, 13:] == 0).all()

    policy.zero_grad()
    logps = token_logprobs(policy, ids_BT, valid_BT)
    (logps * valid_BT[:, 1:]).sum().backward()
    grads = [p.grad for p in policy.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert policy.decoder.layers[0].mlp.linear_fc1.weight.grad.abs().sum() > 0
    policy.zero_grad()


# ------------------------------------------------------------------------------------ generation


def _greedy_without_cache(policy, prompt, max_new_tokens, eos):
    from common.train.logprobs import causal_padding_mask

    ids = list(prompt)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            n = len(ids)
            mask = causal_padding_mask(torch.ones(1, n, dtype=torch.bool))
            logits = policy(torch.tensor([ids]), torch.arange(n)[None], mask)[0, -1, :VOCAB]
            ids.append(int(logits.argmax()))
            if ids[-1] in eos:
                break
    return ids[len(prompt) :]


@pytest.mark.parametrize("tied", [False, True])
def test_greedy_kv_cache_equals_full_forward(policy, tied):
    from common.generate.generation import generate
    from common.model.llama import build_policy

    if tied:
        policy = build_policy(_arch(tie_word_embeddings=True), dtype=torch.float32, seed=4)
    _, _, prompts = _batch()
    eos = [VOCAB + 5]  # never generated: a padded id
    out = generate(
        policy,
        prompts,
        max_new_tokens=10,
        temperature=1.0,
        top_k=1,
        top_p=1.0,
        eos_token_ids=eos,
        sample_keys=_keys(len(prompts), 0),
    )
    assert out == [_greedy_without_cache(policy, p, 10, eos) for p in prompts]
    assert policy.training  # generate restores the mode it found
    assert "forward" not in vars(policy.output_layer)  # and the output layer's own forward


@pytest.mark.parametrize("top_k", [1, 0])  # greedy, and the recipes' unfiltered sampling
def test_static_decode_step_gives_the_eager_tokens(policy, top_k, monkeypatch):
    """The fixed-shape decode step (what a CUDA graph replays) attends to the whole cache with the
    unwritten positions masked: same tokens as the eager step, even when the cache memory
    Megatron allocates (torch.empty) holds NaN, as fresh device memory can."""
    from megatron.core.transformer.attention import Attention

    from common.generate.generation import generate

    allocate = Attention._allocate_memory
    monkeypatch.setattr(
        Attention, "_allocate_memory", lambda self, *a, **k: allocate(self, *a, **k).fill_(float("nan"))
    )
    _, _, prompts = _batch()  # of different lengths: left-padded
    prompts = [p for p in prompts for _ in range(2)]  # two samples per prompt: the shared prefill
    kw = dict(
        max_new_tokens=10,
        temperature=1.0,
        top_k=top_k,
        top_p=1.0,
        eos_token_ids=[VOCAB + 5],
        sample_keys=_keys(len(prompts), 3),
    )
    eager = generate(policy, prompts, decode="eager", **kw)
    assert generate(policy, prompts, decode="static", **kw) == eager
    assert generate(policy, prompts, **kw) == eager  # "auto" on CPU: eager
    for decode in ("graph", "compiled"):  # a graph needs CUDA; an unknown name is refused
        with pytest.raises(ValueError, match="decode="):
            generate(policy, prompts, decode=decode, **kw)


@pytest.mark.parametrize("read_copy", [False, True])  # W_VH as it is, or its [H, V] copy
@pytest.mark.parametrize("rows", [4, 16])
def test_generation_output_layer_gives_the_models_logits(policy, rows, read_copy, monkeypatch):
    from common.generate import generation

    V, H = policy.output_layer.weight.shape
    monkeypatch.setitem(generation._READ_COPY, (rows, V, H), read_copy)
    hidden_SBH = torch.randn(1, rows, H, generator=torch.Generator().manual_seed(rows))
    with torch.no_grad():
        own_SBV, _ = policy.output_layer(hidden_SBH)
        with generation._vocab_major_output_layer(policy):
            vocab_major_SBV, _ = policy.output_layer(hidden_SBH)
    assert vocab_major_SBV.shape == own_SBV.shape and vocab_major_SBV.stride()[-1] == rows  # a view of [V, rows]
    torch.testing.assert_close(vocab_major_SBV, own_SBV, rtol=1e-5, atol=1e-5)


def test_generation_output_layer_layout_is_measured_once_per_row_count(policy, monkeypatch):
    from common.generate import generation

    V, H = policy.output_layer.weight.shape
    monkeypatch.setattr(generation, "_READ_COPY", {})
    timed = []
    monkeypatch.setattr(generation, "_copy_is_faster", lambda w, c, rows: timed.append(rows) or rows == 5)
    with torch.no_grad(), generation._vocab_major_output_layer(policy):
        for rows in (3, 5, 3, 5):
            logits_SBV, _ = policy.output_layer(torch.randn(1, rows, H))
            assert logits_SBV.shape == (1, rows, V)
    assert timed == [3, 5] and generation._READ_COPY == {(3, V, H): False, (5, V, H): True}


@pytest.mark.parametrize(
    "as_is, copy, expected",
    [
        ((3.0, 1.0, 5.0), (0.8, 2.0, 0.9), True),  # best 0.8 x COPY_MARGIN 1.2 = 0.96 < best 1.0
        ((1.0, 3.0, 5.0), (0.85, 0.9, 2.0), False),  # faster, but 0.85 x 1.2 = 1.02 > 1.0: not by the margin
        ((0.5, 3.0, 3.0), (1.0, 1.0, 1.0), False),  # slower everywhere but in one round: the best counts
    ],
)
def test_generation_output_layer_copy_is_read_where_its_best_time_beats_the_weights_by_the_margin(
    policy, monkeypatch, as_is, copy, expected
):
    """``_copy_is_faster`` on the model's real weight and its [H, V] copy, with a clock that makes
    each product take a chosen time (rounds interleaved: as it is, then the copy): True only where the
    copy's best time x COPY_MARGIN is below the weight's best time."""
    import types

    from common.generate import generation

    assert generation.COPY_MARGIN == 1.2  # the cases above are worked out for this margin
    ticks, now = [], 0.0
    for durations in zip(as_is, copy):
        for d in durations:
            ticks += [now, now + d]
            now += d + 10.0
    clock = iter(ticks)
    monkeypatch.setattr(generation, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    weight_VH = policy.output_layer.weight
    assert generation._copy_is_faster(weight_VH, weight_VH.t().contiguous(), 4, rounds=3) is expected
    assert next(clock, None) is None  # three rounds of two timed products: every tick read


def test_eos_stops_row_and_is_kept(policy):
    from common.generate.generation import generate

    _, _, prompts = _batch()
    kw = dict(temperature=1.0, top_k=1, top_p=1.0, sample_keys=_keys(len(prompts), 0))
    free = generate(policy, prompts, max_new_tokens=10, eos_token_ids=[VOCAB + 5], **kw)
    eos = free[0][3]
    out = generate(policy, prompts, max_new_tokens=10, eos_token_ids=[eos], **kw)
    for row_free, row in zip(free, out):
        expected = row_free[: row_free.index(eos) + 1] if eos in row_free else row_free
        assert row == expected
    assert out[0][-1] == eos and len(out[0]) <= 4
    # Every row stops on its first token: the loop ends after one step.
    first = sorted({row[0] for row in free})
    out = generate(policy, prompts, max_new_tokens=10, eos_token_ids=first, **kw)
    assert out == [row[:1] for row in free]


def test_sampling_is_seeded_and_never_picks_padded_ids(policy):
    from common.generate.generation import generate

    _, _, prompts = _batch()
    kw = dict(max_new_tokens=16, top_k=0, top_p=1.0, eos_token_ids=[VOCAB + 5])
    a = generate(policy, prompts, temperature=0.9, sample_keys=_keys(4, 1), **kw)
    b = generate(policy, prompts, temperature=0.9, sample_keys=_keys(4, 1), **kw)
    c = generate(policy, prompts, temperature=0.9, sample_keys=_keys(4, 2), **kw)
    assert a == b and a != c
    # a row's response depends on its prompt and key only, not on the rest of the batch
    assert generate(policy, prompts[1:3], temperature=0.9, sample_keys=_keys(4, 1)[1:3], **kw) == a[1:3]
    # Nearly uniform sampling: unmasked, the 24 padded ids would get ~2 % of the 512 draws.
    hot = generate(policy, prompts * 8, temperature=100.0, sample_keys=_keys(32, 3), **kw)
    drawn = [t for row in hot for t in row]
    assert len(drawn) == 32 * 16 and max(drawn) < VOCAB


def test_samples_of_a_prompt_share_its_prefill(policy):
    """Repeated prompts are prefilled once and their KV-cache rows copied: every row samples exactly
    what it samples alone (greedy and sampled, prompts of unequal lengths, repeats not adjacent)."""
    from common.generate.generation import generate

    _, _, prompts = _batch()
    rows = [prompts[0], prompts[1], prompts[0], prompts[2], prompts[1], prompts[0]]
    kw = dict(max_new_tokens=12, top_p=1.0, eos_token_ids=[VOCAB + 5])
    for temperature, top_k in ((1.0, 1), (0.9, 0)):
        keys = _keys(len(rows), 7)
        shared = generate(policy, rows, temperature=temperature, top_k=top_k, sample_keys=keys, **kw)
        alone = [
            generate(policy, [p], temperature=temperature, top_k=top_k, sample_keys=[k], **kw)[0]
            for p, k in zip(rows, keys)
        ]
        assert shared == alone
        assert temperature == 1.0 or shared[0] != shared[2]  # same prompt, other key: another sample


# ------------------------------------------------------------------------------------ reward


def test_reward_model_scores_per_position(tp1):
    assert tp1["scores"].shape == (4, 14) and tp1["scores"].dtype == torch.float32
    assert tp1["scores"].std() > 0


def test_shared_prompt_scores_equal_the_full_forward(tp1):
    """Each prompt once and the last layer at the score positions only give the full forward's
    scores: both score positions, prompts of 1-12 tokens, one group or one prompt per group."""
    full = tp1["full_scores"]  # [where, B]
    assert full.std() > 0.05 and not torch.equal(full[0], full[1])
    for shared in tp1["shared_scores"]:
        torch.testing.assert_close(shared, full, atol=1e-5, rtol=0)


def test_shared_prompt_scores_reject_positions_inside_the_prompt(world1):
    from common.model.llama import build_reward_model
    from common.reward.forward import shared_prompt_scores

    seqs, _ = _rollout_like()
    reward = build_reward_model(_arch(), dtype=torch.float32, seed=1)
    with pytest.raises(ValueError, match="outside the last prompt token"):
        shared_prompt_scores(reward, seqs[:1], [0], 16)


# ------------------------------------------------------------------------------------ HF parity


def test_hf_llama_weights_give_hf_logits(tp1, world1):
    from common.model.llama import build_policy, build_reward_model, load_hf_llama_state_dict
    from common.train.logprobs import causal_padding_mask

    ids_BT, _, _ = _batch()
    with torch.no_grad():
        expected = _hf_llama(tie=True)(ids_BT).logits
    torch.testing.assert_close(tp1["hf_logits"][..., :VOCAB], expected, atol=1e-4, rtol=0)

    arch = _arch()
    hf = _hf_llama(tie=False)
    policy = build_policy(arch, dtype=torch.float32, seed=0)
    load_hf_llama_state_dict(policy, hf.state_dict(), arch)
    mask = causal_padding_mask(torch.ones(4, 14, dtype=torch.bool))
    pos = torch.arange(14).expand(4, 14)
    with torch.no_grad():
        torch.testing.assert_close(policy(ids_BT, pos, mask)[..., :VOCAB], hf(ids_BT).logits, atol=1e-4, rtol=0)
        hf_cls = _hf_llama(tie=False, seq_cls=True)
        reward = build_reward_model(arch, dtype=torch.float32, seed=1)
        load_hf_llama_state_dict(reward, hf_cls.state_dict(), arch)
        expected_scores = hf_cls.score(hf_cls.model(ids_BT).last_hidden_state)[..., 0]
        torch.testing.assert_close(reward(ids_BT, pos, mask), expected_scores, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------ TP=2


@pytest.mark.slow
def test_tp2_equals_tp1(tp1, tp2):
    for rank, out in enumerate(tp2):
        torch.testing.assert_close(out["logits"], tp1["logits"], atol=1e-5, rtol=0)
        torch.testing.assert_close(out["logps"], tp1["logps"], atol=1e-5, rtol=0)
        torch.testing.assert_close(out["scores"], tp1["scores"], atol=1e-5, rtol=0)
        torch.testing.assert_close(out["shared_scores"], tp1["shared_scores"], atol=1e-5, rtol=0)
        torch.testing.assert_close(out["hf_logits"], tp1["hf_logits"], atol=1e-5, rtol=0)
        assert out["greedy"] == tp1["greedy"], rank
        assert out["sampled"] == tp1["sampled"], rank
        assert out["sampled_static"] == tp1["sampled_static"] == tp1["sampled"], rank  # what TP > 1 decodes on a device


@pytest.mark.slow
def test_tp2_shards_are_the_tp1_weights_split(tp1, tp2):
    full, ranks = tp1["layer0"], [out["layer0"] for out in tp2]
    for name, weight in full.items():
        if name.endswith("linear_fc1.weight"):  # each rank holds [gate shard ; up shard]
            gate, up = weight.chunk(2)
            shards = [torch.cat([g, u]) for g, u in zip(gate.chunk(2), up.chunk(2))]
        elif name.endswith(("linear_qkv.weight", "word_embeddings.weight")):
            shards = list(weight.chunk(2, dim=0))
        elif name.endswith(("linear_proj.weight", "linear_fc2.weight")):
            shards = list(weight.chunk(2, dim=1))
        else:
            shards = [weight, weight]
        for rank in range(2):
            assert torch.equal(ranks[rank][name], shards[rank]), (name, rank)
    padded_rows = full["embedding.word_embeddings.weight"][VOCAB:]
    assert padded_rows.shape[0] == 24 and (padded_rows == 0).all()


# ------------------------------------------------------------------------------------ Megatron schedules


def _logprob_step(data_iterator, model):
    """forward_step_func for Megatron's schedules: mean NLL loss, per-token log-probs out."""
    from common.train.logprobs import logprob_inputs

    ids_BT, valid_BT = next(data_iterator)
    position_ids_BT, mask, labels_BT = logprob_inputs(ids_BT, valid_BT)
    nll_BT = model(ids_BT, position_ids_BT, mask, labels=labels_BT)

    def loss_func(nll_BT):
        loss = (nll_BT[:, :-1] * valid_BT[:, 1:]).sum() / valid_BT[:, 1:].sum()
        return loss, {"loss": loss.detach(), "logps": -nll_BT[:, :-1].detach()}

    return nll_BT, loss_func


def train_steps(steps: int = 2) -> dict:
    """Megatron DDP + (non-distributed) Adam with gradient clipping through the schedules."""
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from common.model import parallel
    from common.model.llama import build_policy

    model = build_policy(_arch(), dtype=torch.float32, seed=0)
    ddp = DistributedDataParallel(model.config, DistributedDataParallelConfig(), model)
    model.config.finalize_model_grads_func = finalize_model_grads
    optimizer = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-3, clip_grad=0.5), [ddp])
    ids_BT, valid_BT, _ = _batch()
    out = {"losses": [], "grad_norms": [], "logps": None}
    for _ in range(steps):
        ddp.zero_grad_buffer()
        optimizer.zero_grad()
        stats = get_forward_backward_func()(
            forward_step_func=_logprob_step,
            data_iterator=iter([(ids_BT, valid_BT)]),
            model=[ddp],
            num_microbatches=1,
            seq_length=14,
            micro_batch_size=4,
            forward_only=False,
        )
        _, grad_norm, _ = optimizer.step()
        out["grad_norms"].append(grad_norm)
        if parallel.is_pipeline_last_stage():
            out["losses"].append(float(stats[0]["loss"]))
            out["logps"] = out["logps"] if out["logps"] is not None else stats[0]["logps"]
    out["tp_tagged"] = sorted(
        name for name, p in model.named_parameters() if getattr(p, "tensor_model_parallel", False)
    )
    return out


@pytest.fixture(scope="module")
def train_tp1(world1):
    return train_steps()


def test_tp_shards_are_tagged_for_megatron(train_tp1):
    # Untagged shards count as TP duplicates (e.g. only rank 0's would enter the grad norm).
    tagged = set(train_tp1["tp_tagged"])
    layer = "decoder.layers.1."
    expected = {
        "embedding.word_embeddings.weight",
        "output_layer.weight",
        layer + "self_attention.linear_qkv.weight",
        layer + "self_attention.linear_proj.weight",
        layer + "mlp.linear_fc1.weight",
        layer + "mlp.linear_fc2.weight",
    }
    assert expected <= tagged
    assert not any("layernorm" in name for name in tagged)


def test_schedule_logps_equal_token_logprobs(train_tp1, policy):
    from common.train.logprobs import token_logprobs

    ids_BT, valid_BT, _ = _batch()
    with torch.no_grad():
        expected = token_logprobs(policy, ids_BT, valid_BT)
    torch.testing.assert_close(train_tp1["logps"], expected, atol=1e-6, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)])
def test_megatron_train_steps_match_tp1(train_tp1, tp, pp):
    ranks = run_world(train_steps, world_size=2, tp=tp, pp=pp)
    last = next(out for out in ranks if out["losses"])
    torch.testing.assert_close(last["logps"], train_tp1["logps"], atol=1e-5, rtol=0)
    assert last["losses"] == pytest.approx(train_tp1["losses"], abs=1e-5)
    assert train_tp1["grad_norms"][0] > 0.5  # so clip_grad=0.5 really clipped
    for out in ranks:
        assert out["grad_norms"] == pytest.approx(train_tp1["grad_norms"], rel=1e-5)
