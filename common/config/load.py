"""Loading a recipe's config: its frozen ``config.yaml``, an overlay file and ``key=value`` overrides,
merged onto the schema (common/config/schema.py), roles resolved, paths made absolute, validated."""

from __future__ import annotations

import glob
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from common.config.roles import uses_reward_model
from common.config.schema import INHERITED_KEYS, RecipeConfig, check_known_keys
from common.config.validate import validate


def _load_yaml(path: str | Path) -> DictConfig:
    try:
        return OmegaConf.load(path)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({' '.join(str(e).split())}); fix the file") from None


def load_config(recipe_yaml: str | Path, overrides: list[str] = (), overlay: str | Path | None = None) -> DictConfig:
    """Load a recipe's frozen config, merge an overlay file (e.g. the recipe's ``cpu_scale.yaml``)
    and the dotlist overrides over it, resolve roles, validate."""
    recipe_yaml = Path(recipe_yaml)
    if not recipe_yaml.is_file():
        raise ValueError(f"recipe config {recipe_yaml}: file not found; pass a recipe folder under recipes/")
    user = _load_yaml(recipe_yaml)
    check_known_keys(user, str(recipe_yaml))
    if overlay is not None:
        extra = _load_yaml(overlay)
        check_known_keys(extra, str(overlay))
        user = OmegaConf.merge(user, extra)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override '{item}': not key=value; write e.g. training.train_iters=5")
    dot = OmegaConf.from_dotlist(list(overrides))
    check_known_keys(dot, "command line")
    cfg = OmegaConf.merge(OmegaConf.structured(RecipeConfig), user, dot)
    _resolve_roles(cfg)
    _resolve_paths(cfg)
    validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def overlay_file(recipe_dir: Path, overlay: str) -> Path:
    """``--overlay NAME``: ``recipes/<recipe>/NAME.yaml``, or a YAML file path."""
    for path in (Path(recipe_dir) / f"{overlay}.yaml", Path(overlay)):
        if path.is_file():
            return path
    names = sorted(p.stem for p in Path(recipe_dir).glob("*.yaml") if p.name != "config.yaml")
    raise ValueError(
        f"--overlay {overlay}: no {recipe_dir.name}/{overlay}.yaml and no such file; this recipe's overlays: {', '.join(names) or 'none'}"
    )


def recipe_files(recipe_dir: Path) -> dict[str, str]:
    """``recipes/<name>/files.yaml``: each file the recipe's config names (path from the project root)
    -> the commands that make it, printed when it is missing. A recipe without one names no files."""
    path = Path(recipe_dir) / "files.yaml"
    if not path.is_file():
        return {}
    files = yaml.safe_load(path.read_text()) or {}
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise ValueError(f"{path}: expected a mapping of file path -> the commands that make it; fix the file")
    return files


def _resolve_roles(cfg: DictConfig) -> None:
    """Fill role keys left at None from `training` (a role section overrides `training`)."""
    sections = {
        "actor_rollout": cfg.actor_rollout_ref.actor_rollout,
        "ref": cfg.actor_rollout_ref.ref,
        "reward": cfg.reward,
    }
    for section in sections.values():
        for key in INHERITED_KEYS:
            if section[key] is None:
                section[key] = cfg.training[key]
    actor = cfg.actor_rollout_ref.actor_rollout
    if actor.generate_tensor_model_parallel_size is None:
        actor.generate_tensor_model_parallel_size = actor.tensor_model_parallel_size
    if actor.ppo_mini_batch_size is None:
        actor.ppo_mini_batch_size = cfg.training.global_batch_size
    if cfg.reward.model is None and uses_reward_model(cfg) and cfg.reward.load is None:
        cfg.reward.model = cfg.model.copy()


PROJECT_ROOT = Path(__file__).resolve().parents[2]
PATH_KEYS = (
    "training.tokenizer_name_or_path",
    "actor_rollout_ref.actor_rollout.data_path",
    "actor_rollout_ref.actor_rollout.fixed_responses",
    "actor_rollout_ref.actor_rollout.load",
    "actor_rollout_ref.ref.load",
    "reward.load",
    "reward.tokenizer_name_or_path",
)


def resolve_path(path: str) -> str:
    """Absolute path: as given if it exists from the current directory (or is the prefix of files
    there, as a Megatron indexed dataset's ``data_path`` is), else from the project root (recipes
    name shipped files like ``data/prompts/...`` relative to the project)."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists() or (p.parent.is_dir() and any(p.parent.glob(glob.escape(p.name) + "_*"))):
        return str(p.resolve())
    return str((PROJECT_ROOT / p).resolve())


def _resolve_paths(cfg: DictConfig) -> None:
    for key in PATH_KEYS:
        value = OmegaConf.select(cfg, key)
        if value is not None:
            OmegaConf.update(cfg, key, resolve_path(value))
