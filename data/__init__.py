"""Prompt data preparation: raw prompt files -> a tokenized, memory-mapped prompt dataset.

    python -m data.prepare --input prompts.parquet --tokenizer assets/llama3_tokenizer --output prepared/

``data/prepare.py`` is the tool (reading, checking, templating, tokenizing, writing);
``common/prepared.py`` is the on-disk format (manifest + Arrow file) and its reader, which
``common.prompts.load_prompt_dataset`` uses for training.
"""
