"""A recipe run's set-up and bookkeeping, so each recipe's ``run.py`` holds only its loop.

``open_session`` does, in this order, everything before the first iteration:
1. command line, config (frozen ``config.yaml``, then ``--overlay``, then ``key=value``; on
   ``--resume`` the stopped run's resolved config);
2. the cheap checks, before any model is built: every file the run reads exists (else the recipe's
   own download/convert commands), the dtype suits the device, tokenizer, weights vs layouts,
   prompts. On one node a private Ray instance starts on a thread meanwhile (``./run.sh`` starts it
   before torch is imported, common/run/launch.py) and, once the config and device are known, the
   roles' processes on it, which import torch and Megatron while the checks go on; a failed check
   shuts them down;
3. Ray (with ``--nodes N``: only the cluster of ``RAY_ADDRESS`` or ``ray start``, joined after the
   checks and before anything is written), the placement plan (printed; a shortfall fails naming
   the role) and one worker group per role on its planned nodes;
4. the run folder (``config.yaml``, ``command.json``);
5. every role's world forms and builds its models (``placement.json``), and the restore of a
   checkpoint on ``--resume``.

The ``Session`` it returns writes each iteration's rows, saves checkpoints and plots at the end;
workers only return values, the driver (this) prints and writes. It also decides how a run ends
early, always with ``loss.png`` drawn and one message that says what to do next:
- SIGTERM / SIGINT: ``steps`` ends at the next iteration boundary, saves a checkpoint when saving
  is on, and ``finish`` returns 143 / 130 (common/run/stop_signals.py);
- a lost worker (killed, out of memory, node gone) or an error in a worker: ``iteration`` names the
  role, rank, node, iteration and likely cause, the last checkpoint and the ``--resume`` command
  (common/run/failures.py); with ``training.max_restarts=N`` it restarts every role from the last
  checkpoint instead, and ``steps`` goes back to the iteration after it;
- NaN/inf in the update: stopped before that iteration's checkpoint (common/train/health.py);
- the driver's own failures (a reward function that raises or returns NaN, a checkpoint or
  ``final/`` write on a full disk, the prompt stream, the log files): the same one message, naming
  the function or folder, with the traceback in ``failure.txt``. The failure path itself cannot
  fail: what it cannot write is named after the message. A failed checkpoint write removes its
  partial folder; the previous checkpoint and ``latest`` stay as they were;
- a signal during set-up: the process ends at once (common/run/stop_signals.py).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import ray
from omegaconf import DictConfig
from ray.exceptions import RayActorError
from tqdm import tqdm

from common.cluster.handles import RoleHandles
from common.cluster.place_roles import form_roles, plan_roles, start_roles
from common.cluster.placement import describe, placement_record, startup_summary
from common.cluster.ray_start import BackgroundRay, private_instance, start_ray, take_early
from common.cluster.worker_group import WorkerGroup
from common.config.load import load_config, overlay_file, recipe_files
from common.config.roles import max_new_tokens
from common.device.backend import Device, resolve_device
from common.prompts.dataset import PromptStream, load_prompt_dataset
from common.prompts.fixed_responses import fixed_response_ids
from common.prompts.tokenizer import load_tokenizer, stop_token_ids
from common.reward.terms import Rewards, build_rewards
from common.run import checkpoint
from common.run.cli import Args, parse_args
from common.run.expected_curve import load_expected
from common.run.failures import WORKER_ERRORS, WorkerFailure, describe_failure, driver_failure, error_reason
from common.run.final import save_final
from common.run.outputs import CLOCK_ZERO, RunWriter, check_out, new_run_dir, plot_loss
from common.run.preflight import check_files, check_weights
from common.run.rollout import InFlight
from common.run.stop_signals import StopSignals, process_signals
from common.train.health import CollapseWatch, NonFiniteError
from common.util.atomic_files import temp_path, write_text
from common.util.quiet import filter_library_warnings


@dataclass
class Session:
    recipe: str
    cfg: DictConfig
    tok: object  # transformers fast tokenizer
    eos_ids: list[int]
    stream: PromptStream
    new_tokens: int  # response budget: seq_length - max_prompt_length
    fixed: dict[int, list[list[int]]] | None  # prompt index -> stored responses (accuracy-comparison mode)
    rewards: Rewards  # the reward terms: model and/or functions, weighted (common/reward/terms.py)
    roles: dict[str, WorkerGroup]  # actor_rollout, [rollout], ref, [reward]: their processes (restarts, failures)
    handles: RoleHandles  # the same roles, called through their workers' methods (common/cluster/handles.py)
    run_dir: Path
    first_step: int
    stop: StopSignals
    _writer: RunWriter
    _expected: dict | None
    _start: dict  # driver state at the first step: where a restart without a checkpoint goes back to
    _restarts_left: int = 0
    _collapse: CollapseWatch | None = None
    _last_done: int | None = None  # last iteration finished in this process (since the last restart)
    _restart_at: int | None = None
    _warned: list[str] = field(default_factory=list)
    export_hf: str | None = None  # --export-hf DIR: a Hugging Face folder of the final actor
    # staleness 1: the next iteration's responses, being sampled while this iteration trains
    in_flight: InFlight | None = None

    def take_in_flight(self) -> InFlight:
        """The responses sampled for this iteration while the previous one trained."""
        assert self.in_flight is not None
        in_flight, self.in_flight = self.in_flight, None
        in_flight.result()
        return in_flight

    def steps(self) -> Iterator[int]:
        """Iteration numbers still to run (1-based), with a progress bar the loop annotates.

        Ends early after SIGTERM/SIGINT, saving the last finished iteration when saving is on; after
        a restart (``iteration``) it continues from the iteration after the restored checkpoint.
        """
        t = self.cfg.training
        self.bar = tqdm(
            total=t.train_iters, initial=self.first_step - 1, desc=self.recipe, unit="it", dynamic_ncols=True
        )
        step = self.first_step
        while step <= t.train_iters:
            if self.stop.requested:
                if t.save_interval and self._last_done is not None and not self.save_due(self._last_done):
                    with self.iteration(self._last_done):  # a failed write ends as one in the loop would
                        self.save(self._last_done)
                break
            self._restart_at = None
            yield step
            if self._restart_at is not None:
                step = self._restart_at
                self.bar.n = step - 1
                self.bar.refresh()
            else:
                step += 1
                self.bar.update(1)
        self.bar.close()

    @contextmanager
    def iteration(self, step: int) -> Iterator[None]:
        """The body of one iteration. Anything that fails in it ends the run here with one message
        (what failed, the last checkpoint, the ``--resume`` command), ``failure.txt`` and
        ``loss.png``: a lost worker (or, while ``training.max_restarts`` allows, every role restarts
        from the last checkpoint instead), an error in a worker, NaN/inf, and the driver's own
        failures (a reward function, a checkpoint write, the data stream)."""
        try:
            yield
        except WORKER_ERRORS as e:
            failure = describe_failure(e, self.roles)
            details = f"{failure.where()}\n\n{failure.details}"
            if failure.lost and self._restarts_left > 0:
                _try_write(self.run_dir / "failure.txt", f"iteration {step}: {details}\n")
                self._restart(step, failure)
                return
            verb = "was lost" if failure.lost else "failed"
            hint = "" if failure.lost else " (a bug or a bad input: see failure.txt for the worker's traceback)"
            self._fail(step, f"{failure.where()} {verb}: {failure.cause}{hint}", details=details)
        except NonFiniteError as e:
            self._fail(
                step, f"the update is not finite: {e}. Nothing from this iteration was saved",
                fix="actor_rollout_ref.actor_rollout.lr=<lower>",
            )  # fmt: skip
        except Exception as e:  # the driver's own: reward functions, checkpoint writes, the data stream
            self._fail(step, driver_failure(e), details=traceback.format_exc())
        self._last_done = step

    def _fail(self, step: int, what: str, fix: str = "", details: str | None = None) -> NoReturn:
        """Stop with one message: what, where, and how to continue; ``failure.txt`` (``details``) and
        ``loss.png`` where the disk allows. Nothing here can fail or hide ``what``: a file that cannot
        be written is named in the message with the reason."""
        self.bar.close()
        problems: list[str] = []
        written: list[str] = []

        def attempt(name: str, write) -> None:
            try:
                write()
                written.append(name)
            except Exception as e:  # noqa: BLE001 - reported in the message, never raised over `what`
                problems.append(f"  could not write {name}: {error_reason(e)}")

        try:
            self._writer.close()
        except Exception as e:  # noqa: BLE001 - as above
            problems.append(f"  could not finish metrics.jsonl: {error_reason(e)}")
        if details is not None:
            attempt("failure.txt", lambda: write_text(self.run_dir / "failure.txt", f"iteration {step}: {details}\n"))
        attempt("loss.png", lambda: plot_loss(self.run_dir, self._expected))
        try:
            ray.shutdown()  # now, not at exit: the workers go, and nothing of Ray's prints after the message
        except Exception:  # noqa: BLE001, S110 - the run is ending either way
            pass
        lines = [f"error: iteration {step}: {what}."]
        try:
            ckpt = checkpoint.latest(self.run_dir)
            ckpt_step = checkpoint.read_driver_state(ckpt)["step"] if ckpt else None
        except (OSError, ValueError, KeyError) as e:
            ckpt, ckpt_step = None, None
            problems.append(f"  the last checkpoint cannot be read: {error_reason(e)}")
        interval = self.cfg.training.save_interval
        if ckpt is not None:
            lines.append(f"  last checkpoint: {ckpt} (iteration {ckpt_step}), intact")
            lines.append(
                f"  continue with: ./run.sh {self.recipe} --resume {self.run_dir}" + (f" {fix}" if fix else "")
            )
        elif interval:
            lines.append(f"  no checkpoint yet (the first is at iteration {interval}): rerun from the start")
        else:
            lines.append(
                "  no checkpoint was written (training.save_interval=0): rerun from the start, with training.save_interval=N to be able to resume"
            )
        lines.append(f"  outputs so far: {self.run_dir}/ (metrics.jsonl{''.join(', ' + n for n in written)})")
        raise SystemExit("\n".join(lines + problems))

    def _restart(self, step: int, failure: WorkerFailure) -> None:
        """Every role gets fresh workers (a world that lost a rank cannot go on), the actor the last
        checkpoint, the prompt stream its position; rows after the checkpoint are dropped."""
        self._restarts_left -= 1
        ckpt = checkpoint.latest(self.run_dir)
        state = checkpoint.read_driver_state(ckpt) if ckpt else self._start
        tqdm.write(
            f"iteration {step}: {failure.where()} was lost: {failure.cause}. Restarting every role from "
            f"{ckpt.name if ckpt else 'the start'} ({self._restarts_left} restart(s) left, training.max_restarts)",
            file=sys.stderr,
        )  # fmt: skip
        for group in self.roles.values():
            group.restart()
        for group in self.roles.values():
            group.ready()
        if ckpt:
            self.handles.actor.restore(str(ckpt))
        self.stream.load_state_dict(state["stream"])
        self.in_flight = InFlight.restore(state.get("in_flight"), self.stream)  # the lost call is gone with its workers
        self._writer.rewind(state["step"])
        if self._collapse:
            self._collapse.streak = 0
        self._restart_at, self._last_done = state["step"] + 1, None

    def save_due(self, step: int) -> bool:
        interval = self.cfg.training.save_interval
        return bool(interval) and step % interval == 0

    def save(self, step: int) -> None:
        """Checkpoint the actor (weights, optimizer, schedule, RNG), the data position and the responses
        in flight (waited for: with staleness 1 the next iteration's), atomically."""
        tmp = checkpoint.temp_folder(self.run_dir, step)
        try:
            checkpoint.begin(self.run_dir, step)
            self.handles.actor.save(str(tmp))
            state = self._driver_state(step)
            checkpoint.commit(tmp, state)
        except BaseException as e:
            checkpoint.abandon(tmp)  # the previous checkpoint and `latest` stay as they were
            if isinstance(e, Exception) and not isinstance(e, RayActorError):  # a lost worker may restart
                raise checkpoint.write_failed(tmp, error_reason(e), self.cfg) from e  # a full disk, a quota
            raise

    def _driver_state(self, step: int) -> dict:
        state = {"step": step, "stream": self.stream.state_dict()}
        if self.in_flight is not None:
            state["in_flight"] = self.in_flight.state_dict()
        return state

    def log(self, row: dict, rollouts: Iterable[dict], spans: list[dict] | None = None) -> None:
        """An iteration's ``metrics.jsonl`` row, its ``rollouts.jsonl`` rows and its phases' spans
        (``timeline.jsonl``)."""
        try:
            self._writer.metrics(row)
            self._writer.rollouts(rollouts)
            if spans:
                self._writer.timeline(row["step"], spans)
        except Exception as e:  # a full disk, TensorBoard: the same ending as a failure in the iteration
            what = f"writing the rows of this iteration failed: {error_reason(e)}"
            self._fail(row["step"], what, details=traceback.format_exc())
        self.bar.set_postfix(
            loss=f"{row['loss']:.4f}", score=f"{row['objective/scores']:.3f}", s_it=f"{row['timing/step']:.2f}"
        )
        warning = (
            self._collapse.update(row["step"], row["grad_norm"], row["objective/entropy_per_token"])
            if self._collapse
            else None
        )
        if warning:
            tqdm.write(f"warning: {warning}", file=sys.stderr)
            self._writer.warning(row["step"], warning)
            self._warned.append(warning)

    def finish(self) -> int:
        """Plot, say where everything is; the exit status (0, or 143 / 130 after SIGTERM / SIGINT)."""
        try:
            self._writer.close()
            png = plot_loss(self.run_dir, self._expected)
        except Exception as e:
            what = f"writing the run's outputs failed: {error_reason(e)}"
            self._fail(self._last_done or self.first_step - 1, what, details=traceback.format_exc())
        outputs = f"outputs in {self.run_dir}/ (metrics.jsonl, rollouts.jsonl, config.yaml, {png.name}{', warnings.jsonl' if self._warned else ''})"
        if self._warned:
            print(
                f"{len(self._warned)} warning(s) during the run, see warnings.jsonl; the last: {self._warned[-1]}",
                file=sys.stderr,
            )
        if not self.stop.requested:
            try:
                final = save_final(
                    self.handles.actor, self.run_dir, self.export_hf, self.cfg.training.tokenizer_name_or_path
                )
            except Exception as e:
                shutil.rmtree(temp_path(self.run_dir / "final"), ignore_errors=True)
                what = f"writing {self.run_dir / 'final'} failed: {error_reason(e)}"
                self._fail(self.cfg.training.train_iters, what, details=traceback.format_exc())
            print(f"done: {self.cfg.training.train_iters} iterations. {outputs}; the trained actor: {final}")
            return 0
        ckpt = checkpoint.latest(self.run_dir)
        last = self._last_done if self._last_done is not None else self.first_step - 1
        msg = [f"stopped by {self.stop.name} after iteration {last} of {self.cfg.training.train_iters}. {outputs}"]
        if last < self.cfg.training.train_iters:
            if ckpt is not None:
                msg.append(f"  checkpoint: {ckpt}; continue with: ./run.sh {self.recipe} --resume {self.run_dir}")
            else:
                msg.append("  no checkpoint (training.save_interval=0): a new run starts from the beginning")
        print("\n".join(msg), file=sys.stderr)
        return self.stop.exit_code


def _try_write(path: Path, text: str) -> None:
    try:
        write_text(path, text)
    except OSError as e:
        tqdm.write(f"could not write {path}: {error_reason(e)}", file=sys.stderr)


def exit_process(code: int) -> NoReturn:
    """End a recipe's process with ``code`` once its run has finished (``Session.finish``): Ray shut
    down, output flushed, then ``os._exit``. Every file of the run is closed by then; what a normal
    interpreter exit would add is ~1.5 s of tearing down objects (tokenizer, torch, Ray's core
    worker) that nothing reads afterwards."""
    ray.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def open_session(recipe_dir: Path, argv: list[str] | None) -> Session:
    """Set up a run of the recipe in ``recipe_dir`` (see the module docstring for the order).
    A missing file its config names stops the run with the command from its ``files.yaml``."""
    recipe_dir = Path(recipe_dir)
    filter_library_warnings()
    stop = process_signals()  # a signal during set-up ends the process at once
    args = parse_args(recipe_dir.name, argv)
    try:
        return _open(recipe_dir, args, recipe_files(recipe_dir), stop)
    except ValueError as e:  # set-up errors name the problem and the fix: no traceback needed
        raise SystemExit(f"error: {e}") from None


def _config(
    recipe_dir: Path, args: Args, get_files: dict[str, str]
) -> tuple[checkpoint.ResumePoint | None, DictConfig, str | None, Device]:
    """The run's config (and, on ``--resume``, where it stopped), checked with the files it reads
    and the device it runs on: everything that can fail before the tokenizer loads."""
    resume = checkpoint.resume_point(args.resume)  # None, or (run folder, checkpoint, driver state)
    if resume:  # the stopped run's resolved config (overlay included); its overlay names the curve to plot
        command = resume.run_dir / "command.json"
        overlay = json.loads(command.read_text())["overlay"] if command.is_file() else None
        cfg = load_config(resume.run_dir / "config.yaml", args.overrides)
    else:
        overlay = str(overlay_file(recipe_dir, args.overlay)) if args.overlay else None
        cfg = load_config(recipe_dir / "config.yaml", args.overrides, overlay)
    if not resume:
        check_out(args.out)
    check_files(cfg, get_files)
    warning = checkpoint.check_disk(cfg, resume.run_dir if resume else Path(args.out or "runs"))
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    device = resolve_device(cfg.training.device)
    device.compute_dtype(cfg.training.dtype)  # e.g. bf16 on a machine that resolved to CPU: fails here, not in a worker
    return resume, cfg, overlay, device


def _start_roles(cfg: DictConfig, device: Device, nodes: int):
    """The placement plan (a shortfall fails naming the role) and the roles' processes on it."""
    plan, used = plan_roles(cfg, device, nodes)
    return plan, used, start_roles(cfg, device, plan)


def _open(recipe_dir: Path, args: Args, get_files: dict[str, str], stop: StopSignals) -> Session:
    # a private Ray instance starts meanwhile (common/cluster/ray_start.py: ./run.sh started it already) and,
    # once the config and device are known, the roles' processes on it; no model before the checks pass
    background = take_early() or (BackgroundRay() if private_instance(args.nodes) else None)
    try:
        resume, cfg, overlay, device = _config(recipe_dir, args, get_files)
        t, actor_cfg = cfg.training, cfg.actor_rollout_ref.actor_rollout
        if background:
            background.then(lambda: _start_roles(cfg, device, args.nodes))
            # Ray's start first: the tokenizer's long calls into C hold the GIL, stalling the thread
            # that starts Ray (~1-2 s on 2 cores); it loads while the roles' processes import torch
            background.settle()
        tok = load_tokenizer(t.tokenizer_name_or_path)
        check_weights(cfg, len(tok))
        prompt_ids, raw_prompts, dropped = load_prompt_dataset(actor_cfg.data_path, tok, actor_cfg.max_prompt_length)
        stream = PromptStream(
            prompt_ids, raw_prompts, t.global_batch_size, shuffle=not actor_cfg.no_shuffle, seed=t.seed
        )
        first_step, in_flight = 1, None
        if resume:
            stream.load_state_dict(resume.state["stream"])
            first_step = resume.state["step"] + 1
            in_flight = InFlight.restore(resume.state.get("in_flight"), stream)
        n, new_tokens = actor_cfg.n_samples_per_prompt, max_new_tokens(cfg)
        fixed = (
            fixed_response_ids(actor_cfg.fixed_responses, tok, raw_prompts, n, new_tokens)
            if actor_cfg.fixed_responses
            else None
        )
        rewards = build_rewards(
            cfg.reward, tok
        )  # imports reward functions, loads a reward tokenizer: fails before any model
    except BaseException:
        if background:
            background.cancel()
        raise

    # --- Ray: with --nodes N the cluster must exist before the run folder does -----------------
    if background:
        plan, nodes, groups = background.wait()
    else:
        start_ray(args.nodes)
        plan, nodes, groups = _start_roles(cfg, device, args.nodes)
    stop.install()  # replaces the SIGTERM handler ray.init installed (it aborts: exit 134)

    run_dir = resume.run_dir if resume else new_run_dir(recipe_dir.name, args.out)
    if resume:  # rows of iterations after the checkpoint came from the run that stopped (all checked above)
        resume.truncate_logs()
    writer = RunWriter(run_dir, cfg, first_step)
    if not resume:
        writer.json(
            "command.json",
            {"recipe": recipe_dir.name, "overlay": overlay, "nodes": args.nodes, "overrides": args.overrides},
        )
    print(f"run folder: {run_dir}  ({len(prompt_ids)} prompts, {dropped} dropped as too long)", flush=True)

    # --- roles on Ray ---------------------------------------------------------------------------
    colocated = tuple(cfg.resource_pool.colocate)
    print("placement:\n" + describe(plan, nodes, colocated), flush=True)
    roles = form_roles(groups)
    handles = RoleHandles.of(roles)
    layouts = {role: g.layouts for role, g in roles.items()}
    writer.json("placement.json", placement_record(plan, layouts, nodes, colocated))
    print(startup_summary(layouts, time.perf_counter() - CLOCK_ZERO), flush=True)
    if resume:
        handles.actor.restore(str(resume.checkpoint))
        writer.resumed(resume.checkpoint, first_step)
        print(f"resumed from {resume.checkpoint} at iteration {first_step}", flush=True)
    stop.started()  # from here a signal stops at the next iteration boundary
    return Session(
        recipe=recipe_dir.name, cfg=cfg, tok=tok, eos_ids=stop_token_ids(tok), stream=stream, new_tokens=new_tokens,
        fixed=fixed, rewards=rewards, roles=roles, handles=handles, run_dir=run_dir, first_step=first_step, stop=stop,
        _writer=writer, _expected=load_expected(recipe_dir, overlay), export_hf=args.export_hf,
        _start={"step": first_step - 1, "stream": stream.state_dict(), "in_flight": in_flight and in_flight.state_dict()},
        _restarts_left=t.max_restarts, in_flight=in_flight,
        _collapse=CollapseWatch(roles["actor_rollout"].layouts[0]["vocab_size"]),
    )  # fmt: skip
