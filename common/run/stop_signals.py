"""SIGTERM / SIGINT: stop at the next iteration boundary, cleanly; a second one stops at once.

During start-up (Ray starting, the roles' processes importing, models building, weights loading)
there is nothing to save yet, and some of those waits take minutes on a big model: a signal then
ends the process at once (``os._exit`` with 143 / 130, after one line). Ray's daemons of a private
instance die with the driver (they are tied to it, common/cluster/ray_start.py), its workers with
them; on a joined cluster Ray removes the actors and placement groups of a driver that is gone.

A job scheduler sends SIGTERM first (and SIGKILL a grace period later); Ctrl-C sends SIGINT. The
first signal only sets a flag: the loop finishes the iteration it is in, the session saves a
checkpoint (when saving is on), draws ``loss.png`` and exits 128 + the signal number (143 / 130,
the shell's convention). A second signal raises ``SystemExit`` in the driver at once (Ray checks
for signals while it waits on workers), and Ray's shutdown at exit stops the workers.

Ray's driver installs its own SIGTERM handler in ``ray.init``; on this version it ends in an abort
(exit 134, no checkpoint, no plot). ``install`` is therefore called again right after Ray starts,
replacing Ray's handler with this one.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    def __init__(self):
        self.signum: int | None = None
        self.starting = True  # until the session is set up (``started``): a signal ends the process at once

    def started(self) -> None:
        """Set-up is done: from now on the first signal stops at the next iteration boundary."""
        self.starting = False

    def install(self) -> None:
        for s in SIGNALS:
            signal.signal(s, self._handle)

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.starting:
            print(f"\n{name} during start-up: stopped before the first iteration, nothing to save", file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
            kill_descendants()
            os._exit(128 + signum)
        if self.signum is not None:
            print(f"\n{name} again: stopping now, without a checkpoint", file=sys.stderr, flush=True)
            raise SystemExit(128 + signum)
        self.signum = signum
        print(f"\n{name}: stopping after this iteration (send it again to stop at once)", file=sys.stderr, flush=True)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    @property
    def exit_code(self) -> int:
        return 128 + self.signum if self.signum else 0


_process: StopSignals | None = None


def process_signals() -> StopSignals:
    """The process's one ``StopSignals``, installed on first use: ``./run.sh`` (common/run/launch.py)
    installs it before Ray starts, so a signal at any moment of start-up ends the run with 143 / 130."""
    global _process
    if _process is None:
        _process = StopSignals()
        _process.install()
    return _process


def kill_descendants() -> None:
    """SIGKILL every process started under this one: a private Ray instance's daemons, agents and
    workers (its dashboard and runtime-env agents outlive a raylet that dies with the driver by a
    minute or more). On a joined cluster none of Ray's processes are the driver's."""
    pids = _descendants(os.getpid())
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _descendants(pid: int) -> list[int]:
    """Children of ``pid``, theirs, and so on (Linux ``/proc``; none where it is missing)."""
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            out += children
            todo += children
    return out
