"""The real Llama-3 tokenizer (made by `python -m tools.fetch_tokenizer --out assets/llama3_tokenizer`)."""

import pytest

from common.prompts.dataset import read_prompts
from common.prompts.tokenizer import LLAMA3_CHAT_TEMPLATE, load_tokenizer, render_prompt_ids, stop_token_ids

TOKENIZER_DIR = "assets/llama3_tokenizer"
BOS, EOT = 128000, 128009


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TOKENIZER_DIR)


def test_known_ids(tok):
    assert tok("Hello world", add_special_tokens=False)["input_ids"] == [9906, 1917]
    assert tok("Hello world")["input_ids"] == [BOS, 9906, 1917]  # like Meta's tokenizer.json
    assert tok.decode([9906, 1917]) == "Hello world"


def test_vocab_and_special_tokens(tok):
    assert len(tok) == 128256
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (BOS, EOT, EOT)
    named = {
        "<|end_of_text|>": 128001,
        "<|reserved_special_token_0|>": 128002,
        "<|start_header_id|>": 128006,
        "<|end_header_id|>": 128007,
        "<|eom_id|>": 128008,
        "<|eot_id|>": 128009,
        "<|reserved_special_token_245|>": 128255,
    }
    assert {t: tok.convert_tokens_to_ids(t) for t in named} == named
    assert tok.chat_template == LLAMA3_CHAT_TEMPLATE


def test_chat_rendering_matches_seed_format(tok):
    # seed-system.md, Data: the templated prompt, system turn only when non-empty.
    prompt = "Describe a quiet lake."
    expected = (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
        f"{prompt}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    ids = render_prompt_ids(tok, prompt)
    assert tok.decode(ids) == expected
    assert ids == tok(expected, add_special_tokens=False)["input_ids"]
    assert render_prompt_ids(tok, [{"role": "system", "content": ""}, {"role": "user", "content": prompt}]) == ids
    assert render_prompt_ids(tok, [{"role": "user", "content": prompt}]) == ids


def test_chat_rendering_with_system_turn(tok):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert tok.decode(render_prompt_ids(tok, messages)) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_single_bos(tok):
    ids = render_prompt_ids(tok, "Hi")
    assert ids == [BOS, 128006, 882, 128007, 271, 13347, EOT, 128006, 78191, 128007, 271]
    assert ids.count(BOS) == 1


def test_content_is_not_trimmed(tok):
    assert tok.decode(render_prompt_ids(tok, "  spaced \n")).count("  spaced \n<|eot_id|>") == 1


def test_stop_ids(tok):
    assert stop_token_ids(tok) == [128001, EOT]


@pytest.mark.parametrize(
    "prompt, problem",
    [
        ("", "empty"),
        ([{"role": "robot", "content": "hi"}], "role 'robot'"),
        ([{"role": "user", "content": 3}], "content is a int"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "must end with a user message"),
        ("say <|eot_id|> now", "special token <|eot_id|>"),
    ],
)
def test_render_rejects_bad_prompts(tok, prompt, problem):
    with pytest.raises(ValueError, match="prompt.*" + problem.replace("|", r"\|")):
        render_prompt_ids(tok, prompt)


def test_shipped_prompts_are_short(tok):
    prompts = read_prompts("data/prompts/tiny_prompts.jsonl")
    assert len(prompts) == 64
    assert max(len(render_prompt_ids(tok, p)) for p in prompts) < 40


def test_missing_dir_names_the_command(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(ValueError, match=f"tokenizer {missing}: .*python -m tools.fetch_tokenizer --out {missing}"):
        load_tokenizer(missing)
