"""Batched sampling with Megatron-core's static KV cache.

One prefill forward over the distinct left-padded prompts (the n samples of a prompt share it: its
KV-cache rows are copied to each), then one decode step per new token for the whole batch, through
the model's own layers with keys cached after RoPE (``_RotatedKeyDecoder``). RoPE positions come
from the cache offset, so a left-padded row sees the same relative positions as an unpadded one;
padded keys are masked out. Tokens are drawn by
common/generate/sampling.py (keyed Gumbel-max: the same on every CPU, whatever the batch split).

On a CUDA device (TP = 1) each decode step is one CUDA graph replay (``_StaticDecodeStep``; other
accelerators run the same fixed-shape step without a graph).
Eager, a llama32_1b step launches ~800 small kernels from Python, and an H200 waited on the host:
17 ms per step for ~4 ms of kernels, and 74-79 ms per step through a first generation, where
cuDNN's attention also built a plan for every new key length (docs/device/h200/). One graph
replays the whole step (6.8 ms sampled, 3.4 ms greedy). A graph replays fixed shapes, so that step
attends over the whole cache with the not-yet-written positions masked, and takes its position
from a device tensor.
"""

from __future__ import annotations

import contextlib
import time

import torch
from megatron.core import parallel_state
from megatron.core.inference.contexts import StaticInferenceContext
from megatron.core.models.common.embeddings.rotary_pos_embedding import apply_rotary_pos_emb
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

from common.config.schema import DECODE_MODES
from common.generate.sampling import sample_tokens

COPY_MARGIN = 1.2  # the [H, V] copy is read only where it measured this much faster (see below)
_READ_COPY: dict[tuple[int, int, int], bool] = {}  # (rows, V, H) -> read the copy; measured once per process


def _copy_is_faster(weight_VH: torch.Tensor, copy_HV: torch.Tensor, rows: int, rounds: int = 3) -> bool:
    """Time W_VH @ h_HN on the weight as it is against the same product read from its [H, V]
    copy (best of ``rounds``, interleaved) for ``rows`` rows; True where the copy is at least
    ``COPY_MARGIN`` times faster."""
    hidden_HN = torch.ones(rows, weight_VH.shape[1], dtype=weight_VH.dtype).t()
    best = {False: float("inf"), True: float("inf")}
    for _ in range(rounds):
        for use_copy, weight in ((False, weight_VH), (True, copy_HV.t())):
            start = time.perf_counter()
            weight @ hidden_HN
            best[use_copy] = min(best[use_copy], time.perf_counter() - start)
    return best[True] * COPY_MARGIN < best[False]


@contextlib.contextmanager
def _vocab_major_output_layer(gpt):
    """While generating, compute logits as W_VH @ h_HN instead of h_NH @ W_VH^T.

    The same product (up to float rounding), but with only B rows per decode step the output
    layer is most of a decode step, and MKL's speed for this skinny product depends on the layout
    of the weight, differently on different CPUs. 16 x 256 x 128k fp32 (the BENCH CONFIG's decode
    step), best times: on a 2-core AMD EPYC, ~21 ms on W_VH as it is and ~11 ms read from an
    [H, V] row-major copy (~27 ms for h_NH @ W_VH^T); on a 2-core Intel Xeon, 12.5 ms as it is
    and 18.5 ms from the copy; with 8 rows or fewer the AMD machine too was 3-6x faster on the
    weight as it is. So on CPU both are timed once per process for each row count
    (``_copy_is_faster``: ~0.1 s, at the first rollout) and the copy (made once per rollout,
    131 MB) is read only where it is clearly faster; accelerators use W_VH @ h_HN on the weight
    itself. A layout gives the same logits up to rounding, and the keyed Gumbel-max sampler
    (common/generate/sampling.py) only ever turns a rounding difference into another token where the top
    two perturbed logits tie within it. Instance-level override; the module's forward hooks
    (padded-id masking) still run, and the original forward is restored on exit.
    """
    layer = gpt.output_layer
    gather = parallel_state.get_tensor_model_parallel_world_size() > 1
    copies: dict[int, torch.Tensor] = {}  # data_ptr of a weight -> its [H, V] copy (CPU)

    def vocab_major(weight_VH: torch.Tensor, rows: int) -> torch.Tensor:
        if weight_VH.device.type != "cpu":
            return weight_VH
        key, shape = weight_VH.data_ptr(), (rows, *weight_VH.shape)
        if key not in copies and _READ_COPY.get(shape, True):
            copies[key] = weight_VH.t().contiguous()
        if shape not in _READ_COPY:
            _READ_COPY[shape] = _copy_is_faster(weight_VH, copies[key], rows)
        return copies[key].t() if _READ_COPY[shape] else weight_VH

    def forward(hidden_SBH, weight=None, runtime_gather_output=None):
        S, B, H = hidden_SBH.shape
        weight_VH = vocab_major(layer.weight if weight is None else weight, S * B)
        logits_SBV = (weight_VH @ hidden_SBH.reshape(S * B, H).t()).t().reshape(S, B, -1)
        if gather and runtime_gather_output:
            logits_SBV = gather_from_tensor_model_parallel_region(logits_SBV.contiguous())
        return logits_SBV, None

    layer.forward = forward
    try:
        yield
    finally:
        del layer.forward


def _check_args(prompts, max_new_tokens, temperature, top_k, top_p, eos_token_ids) -> None:
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate: got an empty prompt list or an empty prompt; pass token ids")
    if max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens={max_new_tokens}; must be >= 1")
    if not temperature > 0:
        raise ValueError(f"generate: temperature={temperature}; must be > 0 (use top_k=1 for greedy)")
    if top_k < 0:
        raise ValueError(f"generate: top_k={top_k}; must be >= 0 (0 = off)")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"generate: top_p={top_p}; must be in (0, 1] (1.0 = off)")
    if not eos_token_ids:
        raise ValueError("generate: eos_token_ids is empty; pass the tokenizer's EOS id(s)")


@torch.no_grad()
def generate(
    model,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    eos_token_ids: list[int],
    sample_keys: list[int],
    decode: str = "auto",
) -> list[list[int]]:
    """Sample a response for each prompt; returns the response ids (EOS kept, no padding).

    ``decode``: how each decode step runs. "eager": the model's modules called step by step,
    attending to the cache up to the current position; "static": the same modules with fixed
    shapes (``_StaticDecodeStep``: the whole cache, later positions masked); "graph": "static"
    captured once as a CUDA graph and replayed (CUDA, TP = 1); "auto": "graph" where it applies,
    "eager" on CPU, else "static" (``decode_mode``). All give the same tokens up to rounding in the
    attention's sum.

    A row stops at its first EOS; the loop stops when every row has or after max_new_tokens.
    With TP > 1 every rank returns the same tokens (logits are gathered, and the tokens of TP
    rank 0 are broadcast so thread-count differences between ranks can never diverge them);
    ``sample_keys[row]`` (see ``sample_key``) fixes that row's sampling noise: the same key gives
    the same response whatever else is in the batch.
    """
    _check_args(prompts, max_new_tokens, temperature, top_k, top_p, eos_token_ids)
    if len(sample_keys) != len(prompts):
        raise ValueError(f"generate: {len(sample_keys)} sample keys for {len(prompts)} prompts; pass one key per row")
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        raise NotImplementedError(
            "generate: pipeline parallelism (PP > 1) is not supported for generation; "
            "generate with a PP=1 copy of the actor"
        )
    device = next(model.parameters()).device
    decode = decode_mode(decode, device)
    B, N = len(prompts), max_new_tokens
    lengths_B = torch.tensor([len(p) for p in prompts], device=device)
    L = int(lengths_B.max())

    # The n samples of a prompt share its prefill: each distinct prompt is prefilled once (row
    # ``source_B[b]`` of the prefill batch), and its KV-cache rows and last logits are then copied
    # to every row b that has it.
    rows_of: dict[tuple[int, ...], int] = {}
    source_B = [rows_of.setdefault(tuple(p), len(rows_of)) for p in prompts]
    unique = list(rows_of)

    # Left-pad the prompts; padded key columns stay masked for the whole generation.
    ids_UL = torch.zeros((len(unique), L), dtype=torch.long, device=device)
    for row, prompt in enumerate(unique):
        ids_UL[row, L - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
    columns_S = torch.arange(L + N, device=device)
    pad_key_BS = columns_S[None, :] < (L - lengths_B)[:, None]
    pad_key_US = columns_S[None, :] < (L - torch.tensor([len(p) for p in unique], device=device))[:, None]
    causal_LL = torch.ones((L, L), dtype=torch.bool, device=device).triu_(1)
    prefill_mask = causal_LL[None, None] | pad_key_US[:, None, None, :L]
    decode_mask = pad_key_BS[:, None, None, :]  # sliced to the cache length each step

    eos_E = torch.tensor(eos_token_ids, dtype=torch.long, device=device)
    out_BN = torch.empty((B, N), dtype=torch.long, device=device)  # preallocated output

    context = StaticInferenceContext(max_batch_size=B, max_sequence_length=L + N)
    was_training = model.training
    model.eval()  # Megatron only uses the KV cache's inference path in eval mode
    try:
        with _vocab_major_output_layer(model):
            steps = _decode(
                model,
                context,
                ids_UL,
                torch.tensor(source_B, device=device),
                columns_S,
                prefill_mask,
                decode_mask,
                out_BN,
                eos_E,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                keys_B=torch.tensor(sample_keys, dtype=torch.int64),
                decode=decode,
            )
    finally:
        model.train(was_training)

    # Response length: through the first EOS, else every generated step.
    is_eos_BN = torch.isin(out_BN[:, :steps], eos_E)
    first_eos_B = is_eos_BN.int().argmax(dim=1)
    response_len_B = torch.where(is_eos_BN.any(dim=1), first_eos_B + 1, steps).tolist()
    out_rows = out_BN[:, :steps].tolist()
    return [row[:n] for row, n in zip(out_rows, response_len_B)]


def decode_mode(decode: str, device: torch.device) -> str:
    """The decode mode ``generate`` runs for ``decode`` on ``device``; a clear error for an unknown
    mode or a graph where none can run. "auto": a CUDA graph on CUDA with TP = 1; fixed shapes on
    other accelerators (CUDA with TP > 1, NPU: an accelerator's libraries prepare kernels per shape,
    and eager steps bring a new key length every step; on an H200 cuDNN's attention plans made a first
    eager generation 3.8x slower than a second); eager on CPU, whose runs the recorded curves hold."""
    graph_ok = device.type == "cuda" and parallel_state.get_tensor_model_parallel_world_size() == 1
    if decode == "auto":
        return "graph" if graph_ok else "eager" if device.type == "cpu" else "static"
    if decode not in DECODE_MODES or (decode == "graph" and not graph_ok):
        raise ValueError(
            f"generate: decode={decode!r}; use one of {', '.join(DECODE_MODES)} ('graph': CUDA, TP = 1 only)"
        )
    return decode


class _RotatedKeyDecoder:
    """Decode steps through the model's own modules (embedding, each layer's norms, QKV, core
    attention, projection and MLP, final norm, output layer), with the cached keys stored after RoPE.

    Megatron-core's static-batching attention caches keys before RoPE and re-applies it to every
    cached key, in every layer, at every step: O(cache length) elementwise work per token, most of
    a decode step on CPU once the output layer is fast. RoPE of position p is the same function
    whenever it is applied, so rotating a key once, when it enters the cache, gives the same
    keys; the layers' arithmetic is otherwise Megatron's own (same modules, same order; a
    residual add is ``residual + output``, as Megatron's bias-dropout-add without bias and
    dropout). Greedy decoding equals a full forward without cache (tests/test_model_layer.py).
    """

    def __init__(self, gpt, context, prefill_len: int):
        self.gpt, self.config = gpt, gpt.config
        self.freqs = gpt.rotary_pos_emb(context.max_sequence_length)  # as GPTModel computes them for inference
        self.caches = []
        for layer in gpt.decoder.layers:
            keys, values = context.key_value_memory_dict[layer.layer_number]  # [S, B, groups, d], prefill filled
            keys[:prefill_len] = apply_rotary_pos_emb(keys[:prefill_len], self.freqs[:prefill_len], config=self.config)
            self.caches.append((keys, values))
        self.output_weight = (
            gpt.shared_embedding_or_output_weight() if gpt.share_embeddings_and_output_weights else None
        )

    def step(self, tokens_B: torch.Tensor, position: int | torch.Tensor, mask) -> torch.Tensor:
        """Logits [B, 1, V] of the next token after ``tokens_B`` placed at ``position``.

        ``position`` an int: attend to the cache up to it (``mask`` [B, 1, 1, position + 1]); a
        one-element device tensor: fixed shapes for a CUDA graph, attend to the whole cache
        (``mask`` [B, 1, 1, cache length] masks the positions after it)."""
        x_1BH = self.gpt.embedding(input_ids=tokens_B[:, None], position_ids=None)
        static = isinstance(position, torch.Tensor)
        freqs = self.freqs.index_select(0, position) if static else self.freqs[position : position + 1]
        for layer, (keys, values) in zip(self.gpt.decoder.layers, self.caches):
            attention = layer.self_attention
            query, key, value = attention.get_query_key_value_tensors(layer.input_layernorm(x_1BH))
            query = apply_rotary_pos_emb(query, freqs, config=self.config)
            key = apply_rotary_pos_emb(key, freqs, config=self.config)
            if static:
                keys.index_copy_(0, position, key)
                values.index_copy_(0, position, value)
                context = attention.core_attention(query, keys, values, mask)
            else:
                keys[position : position + 1] = key
                values[position : position + 1] = value
                context = attention.core_attention(query, keys[: position + 1], values[: position + 1], mask)
            x_1BH = residual_add(x_1BH, attention.linear_proj(context))
            x_1BH = residual_add(x_1BH, layer.mlp(layer.pre_mlp_layernorm(x_1BH)))
        x_1BH = self.gpt.decoder.final_layernorm(x_1BH)
        logits_1BV, _ = self.gpt.output_layer(x_1BH, weight=self.output_weight, runtime_gather_output=True)
        # [B, 1, V] vocabulary-major (a view, no copy): common/generate/sampling.py reads that layout as it is
        return logits_1BV.transpose(0, 1)


def residual_add(residual, output_with_bias):
    """Megatron's bias-dropout-add without dropout (eval): ``residual + output (+ bias)``; for the
    layer loops that run a model's own modules outside its forward (here and common/reward/forward.py)."""
    output, bias = output_with_bias
    return residual + (output if bias is None else output + bias)


class _StaticDecodeStep:
    """``_RotatedKeyDecoder.step`` with fixed shapes, optionally captured as a CUDA graph.

    Inputs live in fixed buffers (the tokens, the position as a one-element tensor), the mask is
    computed from them inside the step, and every layer attends to the whole cache; so one capture
    serves every step of a generation. The cache past the prompts is zeroed first: Megatron
    allocates it with ``torch.empty``, and a masked position's attention weight is 0, but 0 times
    a NaN left in that memory is not. Capture follows PyTorch's recipe: one warm-up call on a side
    stream (cuBLAS/cuDNN plans, allocator), then the capture; the warm-up writes the first decode
    position, which the first replay writes again before any layer reads it.
    """

    def __init__(self, decoder: _RotatedKeyDecoder, pad_key_BS: torch.Tensor, first_position: int, graph: bool):
        self.decoder = decoder
        self.tokens_B = torch.zeros(pad_key_BS.shape[0], dtype=torch.long, device=pad_key_BS.device)
        self.position_1 = torch.full((1,), first_position, dtype=torch.long, device=pad_key_BS.device)
        self.columns_S = torch.arange(pad_key_BS.shape[1], device=pad_key_BS.device)
        self.pad_key_B11S = pad_key_BS[:, None, None, :]
        for keys, values in decoder.caches:
            keys[first_position:].zero_()
            values[first_position:].zero_()
        self.graph = None
        if graph:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._forward()
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.logits_B1V = self._forward()

    def _forward(self) -> torch.Tensor:
        mask = self.pad_key_B11S | (self.columns_S > self.position_1)
        return self.decoder.step(self.tokens_B, self.position_1, mask)

    def __call__(self, tokens_B: torch.Tensor, position: int) -> torch.Tensor:
        self.tokens_B.copy_(tokens_B)
        self.position_1.fill_(position)
        if self.graph is None:
            return self._forward()
        self.graph.replay()
        return self.logits_B1V  # read (by the sampler) before the next replay overwrites it: stream order


def _decode(
    model,
    context,
    ids_UL,
    source_B,
    columns_S,
    prefill_mask,
    decode_mask,
    out_BN,
    eos_E,
    *,
    temperature,
    top_k,
    top_p,
    keys_B,
    decode="eager",
) -> int:
    """Prefill of the distinct prompts ``ids_UL`` (Megatron's forward), then the decode loop of every
    row (row b continues prompt ``source_B[b]``; ``_RotatedKeyDecoder``) filling out_BN; returns the
    number of steps taken."""
    (U, L), (B, N) = ids_UL.shape, out_BN.shape
    tp = parallel_state.get_tensor_model_parallel_world_size()
    finished_B = torch.zeros(B, dtype=torch.bool, device=ids_UL.device)
    logits_U1V = model(
        ids_UL,
        columns_S[:L].expand(U, L),
        prefill_mask,
        inference_context=context,
        runtime_gather_output=True,
    )
    if U < B:  # the cache holds U prompts in rows 0..U-1: give every row its prompt's keys and values
        context.swap_key_value_dict(source_B)  # the cache has exactly B rows
    logits_B1V = logits_U1V.index_select(0, source_B) if U < B else logits_U1V
    decoder = _RotatedKeyDecoder(model, context, L)
    static = (
        _StaticDecodeStep(decoder, decode_mask[:, 0, 0], L, graph=decode == "graph")
        if decode != "eager" and N > 1
        else None
    )
    steps = N
    for t in range(N):
        next_B = sample_tokens(
            logits_B1V[:, -1],
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            keys_B=keys_B,
            position=t,
        )
        if tp > 1:
            torch.distributed.broadcast(
                next_B,
                src=parallel_state.get_tensor_model_parallel_src_rank(),
                group=parallel_state.get_tensor_model_parallel_group(),
            )
        # Finished rows repeat their last token (their output is cut at the first EOS anyway).
        if t > 0:
            next_B = torch.where(finished_B, out_BN[:, t - 1], next_B)
        out_BN[:, t] = next_B
        finished_B |= torch.isin(next_B, eos_E)
        if t == N - 1 or bool(finished_B.all()):
            steps = t + 1
            break
        if static is not None:
            logits_B1V = static(next_B, L + t)
        else:
            logits_B1V = decoder.step(next_B, L + t, decode_mask[..., : L + t + 1])
    return steps
