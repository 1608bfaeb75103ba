"""SIGTERM / SIGINT: stop at the next iteration boundary, cleanly; a second one stops at once.

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

import signal
import sys

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    def __init__(self):
        self.signum: int | None = None

    def install(self) -> None:
        for s in SIGNALS:
            signal.signal(s, self._handle)

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
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
