"""A prompt as chat messages: the one check every reader, the tokenizer and the reward re-renderer
share. A prompt is a plain string (one user turn) or a list of ``{"role", "content"}`` messages."""

ROLES = ("system", "user", "assistant")


def normalize_prompt(prompt, where: str) -> list[dict]:
    """Return ``prompt`` as a checked list of ``{"role", "content"}`` messages.

    A string becomes one user turn. A system message with empty content is dropped (datasets
    often carry ``system: ""``, and an empty system turn would still cost header tokens). The last
    message must be the user's: the model is asked to write the assistant's reply to it.
    ``where`` (e.g. ``"prompts.jsonl row 3"``) prefixes every error.
    """
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError(f"{where}: the prompt is empty; remove the row or give it text")
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, (list, tuple)):
        raise ValueError(
            f"{where}: the prompt is a {type(prompt).__name__}; "
            'give a string or a list of {"role": ..., "content": ...} messages'
        )
    messages = []
    for i, message in enumerate(prompt, start=1):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(
                f'{where}: message {i} is {message!r}; each message must be a {{"role": ..., "content": ...}} object'
            )
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise ValueError(f"{where}: message {i} has role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"{where}: message {i} content is a {type(content).__name__}; content must be a string")
        if role == "system" and content == "":
            continue
        if not content.strip():
            raise ValueError(f"{where}: message {i} ({role}) has empty content; give it text or remove it")
        messages.append({"role": role, "content": content})
    if not messages:
        raise ValueError(f"{where}: the prompt has no messages; give at least one user message")
    if messages[-1]["role"] != "user":
        raise ValueError(
            f"{where}: the last message is from {messages[-1]['role']!r}; "
            "a prompt must end with a user message (the model writes the assistant reply)"
        )
    return messages


def prompt_text(prompt) -> str:
    """The prompt as text for logs and for ``fixed_responses`` keys: the string itself, or the
    content of the last user message of a messages list."""
    if isinstance(prompt, str):
        return prompt
    user_turns = [m["content"] for m in prompt if m.get("role") == "user"]
    if not user_turns:
        raise ValueError(f"prompt {prompt!r}: no user message; a prompt must contain a user message")
    return user_turns[-1]
