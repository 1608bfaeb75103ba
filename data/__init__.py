"""Prompt data preparation: raw prompt files -> a tokenized, memory-mapped prompt dataset.

    python -m data.prepare --input prompts.parquet --tokenizer assets/llama3_tokenizer --output prepared/

``data/prepare.py`` is the tool (reading, checking, templating, tokenizing, writing);
``common/prompts/prepared.py`` is the on-disk format (manifest + Arrow file) and its reader, which
``common.prompts.dataset.load_prompt_dataset`` uses for training.
"""
