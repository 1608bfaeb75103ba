"""Checks that need files (tokenizer, weights) but no model: run by the driver before Ray starts,
so a missing download or a mismatched checkpoint fails in seconds with the fix in the message."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from common.config.arch import layout_problem
from common.config.load import PROJECT_ROOT, resolve_path
from common.config.roles import role_load, role_section, roles_in_use
from common.prompts.indexed import is_indexed_prefix

LOAD_KEYS = {
    "actor_rollout": "actor_rollout_ref.actor_rollout.load",
    "ref": "actor_rollout_ref.ref.load",
    "reward": "reward.load",
}
CONVERT_HINT = (
    "download the Hugging Face model into that folder (e.g. `.venv/bin/hf download <repo-id> --local-dir {path}`), "
    "or convert one with `python -m tools.convert_checkpoint hf-to-mcore --hf <hf-dir> --out {path} --tp <TP> --pp <PP>`"
)


FILE_KEYS = (
    "training.tokenizer_name_or_path",
    "actor_rollout_ref.actor_rollout.data_path",
    "actor_rollout_ref.actor_rollout.fixed_responses",
    *LOAD_KEYS.values(),
    "reward.tokenizer_name_or_path",
)


HUB_KEYS = ("training.tokenizer_name_or_path", *LOAD_KEYS.values())


LOCAL_FOLDERS = {
    "models",
    "weights",
    "data",
    "datasets",
    "ckpt",
    "checkpoints",
    "runs",
    "assets",
}  # never Hub orgs here


def hub_id(path: str) -> str | None:
    """``org/name`` when a missing path looks like a Hugging Face Hub id: two parts, given relative
    (``resolve_path`` put it under the project root) and the first part is no folder here."""
    try:
        parts = Path(path).relative_to(PROJECT_ROOT).parts
    except ValueError:
        return None
    if len(parts) != 2 or parts[0] in LOCAL_FOLDERS or (PROJECT_ROOT / parts[0]).exists() or Path(parts[0]).exists():
        return None
    return "/".join(parts)


def check_files(cfg: DictConfig, get_files: dict[str, str]) -> None:
    """Every file a run reads exists; otherwise one error listing each missing path with how to get it.

    ``get_files`` is the recipe's own instructions, keyed by the path its frozen config names
    (relative to the project root): the exact download and conversion commands. A path the user
    changed gets the generic hint instead.
    """
    known = {resolve_path(path): how for path, how in get_files.items()}
    missing = []
    for key in FILE_KEYS:
        if key in ("reward.load", "reward.tokenizer_name_or_path") and "reward" not in roles_in_use(cfg):
            continue
        path = OmegaConf.select(cfg, key)
        if path is None or Path(path).exists():
            continue
        if key == "actor_rollout_ref.actor_rollout.data_path" and is_indexed_prefix(path):
            continue  # a Megatron indexed dataset is named by its files' prefix (common/prompts/indexed.py)
        how = known.get(path)
        hub = hub_id(path)
        if how is None and hub is not None and key in HUB_KEYS:
            local = f"models/{hub.split('/')[1]}"
            files = (
                " --include 'tokenizer*' 'special_tokens_map.json'" if key == "training.tokenizer_name_or_path" else ""
            )
            missing.append(
                f"  {key}={hub}: looks like a Hugging Face Hub id; a local folder is required (Hub ids are not "
                f"downloaded); download it first:\n    -> .venv/bin/hf download {hub}{files} --local-dir {local}\n"
                f"       then set {key}={local}"
            )
            continue
        if how is None:
            how = CONVERT_HINT.format(path=path) if key in LOAD_KEYS.values() else "check the path"
        missing.append(f"  {key}={path}: not found\n    -> {how}")
    if missing:
        raise ValueError("missing files (nothing was started):\n" + "\n".join(missing))


def check_weights(cfg: DictConfig, tokenizer_size: int) -> None:
    """Every role's ``load`` (its existence checked by ``check_files`` first) is the right kind and
    fits the role's TP/PP and the tokenizer."""
    for role in roles_in_use(cfg):
        if role == "rollout":  # the actor's generating ranks: the actor's weights, checked below
            continue
        path = role_load(cfg, role)
        if path is None:
            arch = cfg.reward.model if role == "reward" else cfg.model
            _check_vocab(role, "model" if role != "reward" else "reward.model", arch.vocab_size, tokenizer_size)
            continue
        key = LOAD_KEYS[role]
        from common.weights.convert import arch_from_path

        arch, is_reward = arch_from_path(path)
        want_reward = role == "reward"
        if is_reward != want_reward:
            kind = "a reward model (sequence classification)" if is_reward else "a causal language model"
            raise ValueError(
                f"{key}={path}: is {kind}, but role {role} needs {'a reward model' if want_reward else 'a causal language model'}"
            )
        sec = role_section(cfg, role)
        tp, pp = sec.tensor_model_parallel_size, sec.pipeline_model_parallel_size
        problem = layout_problem(arch, tp, pp)
        if problem:
            raise ValueError(f"{key}={path}: {problem[1]}; change the role's parallel sizes")
        _check_vocab(role, key, arch.vocab_size, tokenizer_size)


def _check_vocab(role: str, where: str, vocab_size: int, tokenizer_size: int) -> None:
    if vocab_size < tokenizer_size:
        raise ValueError(
            f"{where}: vocabulary of {vocab_size} < tokenizer size {tokenizer_size} (role {role}); "
            "use the model's own tokenizer (training.tokenizer_name_or_path) or a larger vocabulary"
        )
