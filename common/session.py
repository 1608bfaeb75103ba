"""A recipe run's set-up and bookkeeping, so each recipe's ``run.py`` holds only its loop.

``open_session`` does, in this order, everything before the first iteration:
1. command line, config (frozen ``config.yaml``, then ``--overlay``, then ``key=value``; on
   ``--resume`` the stopped run's resolved config);
2. the cheap checks, before Ray starts: every file the run reads exists (else the recipe's own
   download/convert commands), the dtype suits the device, tokenizer, weights vs layouts, prompts;
3. the run folder (``config.yaml``, ``command.json``);
4. Ray, the placement plan (printed; a shortfall fails naming the role), one worker group per role
   on its planned nodes (``placement.json``), and the restore of a checkpoint on ``--resume``.

The ``Session`` it returns writes each iteration's rows, saves checkpoints and plots at the end;
workers only return values, the driver (this) prints and writes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig
from tqdm import tqdm

from common import checkpoint
from common.cli import Args, parse_args
from common.cluster import build_roles, plan_roles, start_ray
from common.config import load_config, max_new_tokens
from common.device import resolve_device
from common.expected_curve import load_expected
from common.final import save_final
from common.fixed_responses import fixed_response_ids
from common.outputs import RunWriter, new_run_dir, plot_loss
from common.placement import describe, placement_record
from common.preflight import check_files, check_weights
from common.prompts import PromptStream, load_prompt_dataset
from common.reward_terms import Rewards, build_rewards
from common.tokenizer import load_tokenizer, stop_token_ids
from common.worker_group import WorkerGroup


@dataclass
class Session:
    recipe: str
    cfg: DictConfig
    tok: object  # transformers fast tokenizer
    eos_ids: list[int]
    stream: PromptStream
    new_tokens: int  # response budget: seq_length - max_prompt_length
    fixed: dict[int, list[list[int]]] | None  # prompt index -> stored responses (accuracy-comparison mode)
    rewards: Rewards  # the reward terms: model and/or functions, weighted (common/reward_terms.py)
    roles: dict[str, WorkerGroup]  # actor_rollout, [rollout], ref, [reward]
    run_dir: Path
    first_step: int
    _writer: RunWriter
    _expected: dict | None
    export_hf: str | None = None  # --export-hf DIR: a Hugging Face folder of the final actor

    def steps(self) -> Iterator[int]:
        """Iteration numbers still to run (1-based), with a progress bar the loop annotates."""
        t = self.cfg.training
        self.bar = tqdm(
            range(self.first_step, t.train_iters + 1), desc=self.recipe, unit="it", dynamic_ncols=True,
            initial=self.first_step - 1, total=t.train_iters,
        )  # fmt: skip
        return iter(self.bar)

    def save_due(self, step: int) -> bool:
        interval = self.cfg.training.save_interval
        return bool(interval) and step % interval == 0

    def save(self, step: int) -> None:
        """Checkpoint the actor (weights, optimizer, schedule, RNG) and the data position, atomically."""
        tmp = checkpoint.begin(self.run_dir, step)
        self.roles["actor_rollout"].call_all("save", str(tmp))
        checkpoint.commit(tmp, {"step": step, "stream": self.stream.state_dict()})

    def log(self, row: dict, rollouts: Iterable[dict]) -> None:
        self._writer.metrics(row)
        self._writer.rollouts(rollouts)
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", score=f"{row['objective/scores']:.3f}", s_it=f"{row['timing/step']:.2f}")

    def finish(self) -> int:
        self._writer.close()
        png = plot_loss(self.run_dir, self._expected)
        final = save_final(self.roles["actor_rollout"], self.run_dir, self.export_hf, self.cfg.training.tokenizer_name_or_path)
        print(f"done: {self.cfg.training.train_iters} iterations. outputs in {self.run_dir}/ (metrics.jsonl, rollouts.jsonl, config.yaml, {png.name}, {final})")
        return 0


def overlay_file(recipe_dir: Path, overlay: str) -> Path:
    """``--overlay NAME``: ``recipes/<recipe>/NAME.yaml``, or a YAML file path."""
    for path in (Path(recipe_dir) / f"{overlay}.yaml", Path(overlay)):
        if path.is_file():
            return path
    names = sorted(p.stem for p in Path(recipe_dir).glob("*.yaml") if p.name != "config.yaml")
    raise ValueError(f"--overlay {overlay}: no {recipe_dir.name}/{overlay}.yaml and no such file; this recipe's overlays: {', '.join(names) or 'none'}")


def open_session(recipe_dir: Path, argv: list[str] | None, get_files: dict[str, str] | None = None) -> Session:
    """Set up a run of the recipe in ``recipe_dir`` (see the module docstring for the order).

    ``get_files``: the recipe's instructions for the files its frozen config names (path relative to
    the project root -> the commands that download or convert it), shown when one is missing.
    """
    recipe_dir = Path(recipe_dir)
    args = parse_args(recipe_dir.name, argv)
    try:
        return _open(recipe_dir, args, get_files or {})
    except ValueError as e:  # set-up errors name the problem and the fix: no traceback needed
        raise SystemExit(f"error: {e}") from None


def _open(recipe_dir: Path, args: Args, get_files: dict[str, str]) -> Session:
    resume = checkpoint.resume_point(args.resume)  # None, or (run folder, checkpoint, driver state)
    if resume:  # the stopped run's resolved config (overlay included); its overlay names the curve to plot
        command = resume.run_dir / "command.json"
        overlay = json.loads(command.read_text())["overlay"] if command.is_file() else None
        cfg = load_config(resume.run_dir / "config.yaml", args.overrides)
    else:
        overlay = str(overlay_file(recipe_dir, args.overlay)) if args.overlay else None
        cfg = load_config(recipe_dir / "config.yaml", args.overrides, overlay)
    t, actor_cfg = cfg.training, cfg.actor_rollout_ref.actor_rollout

    # --- everything that can fail cheaply, before Ray starts -----------------------------------
    check_files(cfg, get_files)
    device = resolve_device(t.device)
    device.compute_dtype(t.dtype)  # e.g. bf16 on a machine that resolved to CPU: fails here, not in a worker
    tok = load_tokenizer(t.tokenizer_name_or_path)
    check_weights(cfg, len(tok))
    prompt_ids, raw_prompts, dropped = load_prompt_dataset(actor_cfg.data_path, tok, actor_cfg.max_prompt_length)
    stream = PromptStream(prompt_ids, raw_prompts, t.global_batch_size, shuffle=not actor_cfg.no_shuffle, seed=t.seed)
    first_step = 1
    if resume:
        stream.load_state_dict(resume.state["stream"])
        first_step = resume.state["step"] + 1
    n, new_tokens = actor_cfg.n_samples_per_prompt, max_new_tokens(cfg)
    fixed = fixed_response_ids(actor_cfg.fixed_responses, tok, raw_prompts, n, new_tokens) if actor_cfg.fixed_responses else None
    rewards = build_rewards(cfg.reward, tok)  # imports reward functions, loads a reward tokenizer: fails before Ray

    run_dir = resume.run_dir if resume else new_run_dir(recipe_dir.name, args.out)
    if resume:  # rows of iterations after the checkpoint came from the run that stopped
        checkpoint.truncate_jsonl(run_dir / "metrics.jsonl", first_step - 1)
        checkpoint.truncate_jsonl(run_dir / "rollouts.jsonl", first_step - 1)
    writer = RunWriter(run_dir, cfg, first_step)
    if not resume:
        writer.json("command.json", {"recipe": recipe_dir.name, "overlay": overlay, "nodes": args.nodes, "overrides": args.overrides})
    print(f"run folder: {run_dir}  ({len(prompt_ids)} prompts, {dropped} dropped as too long)", flush=True)

    # --- roles on Ray ---------------------------------------------------------------------------
    start_ray(args.nodes)
    plan, nodes = plan_roles(cfg, device, args.nodes)
    print("placement:\n" + describe(plan, nodes), flush=True)
    roles = build_roles(cfg, device, plan)
    writer.json("placement.json", placement_record(plan, {role: g.node_ids() for role, g in roles.items()}, nodes))
    if resume:
        roles["actor_rollout"].call_all("restore", str(resume.checkpoint))
        print(f"resumed from {resume.checkpoint} at iteration {first_step}", flush=True)
    return Session(
        recipe=recipe_dir.name, cfg=cfg, tok=tok, eos_ids=stop_token_ids(tok), stream=stream, new_tokens=new_tokens,
        fixed=fixed, rewards=rewards, roles=roles, run_dir=run_dir, first_step=first_step,
        _writer=writer, _expected=load_expected(recipe_dir, overlay), export_hf=args.export_hf,
    )  # fmt: skip
