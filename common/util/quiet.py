"""Third-party messages that tell the user nothing they can act on, filtered in one place.

- Megatron warns once per process that Transformer Engine and Apex are not installed and it falls
  back to plain PyTorch (five warnings per worker, a screenful per run). That fallback is the
  intended path without them (docs/design.md). Two more say nothing about this project's
  settings: a deprecated ``cuda_graph_scope`` default (no CUDA graphs are used) and a speed hint
  about CUDA_DEVICE_MAX_CONNECTIONS for async all-reduce. They are dropped by their text; any other
  Megatron warning still shows.
- Ray 2.60 announces "Token authentication is enabled for this Ray cluster" whenever it starts a
  local instance. For the private single-node instance of a run nobody else can join, so the
  notice is dropped there only; on a cluster (``--nodes N``) every Ray message still shows, as
  does the warning Ray prints when token authentication is off.
- Ray warns "SIGTERM handler is not set because current thread is not the main thread" when
  ``ray.init`` runs on a thread, as the private instance's start does (common/cluster/ray_start.py
  ``BackgroundRay``); the driver installs its own SIGTERM handler after Ray's start anyway
  (common/run/stop_signals.py), so that one is dropped too, for the private instance only.
"""

from __future__ import annotations

import logging
import warnings

MEGATRON_NOISE = (
    r"Transformer Engine and Apex are not installed",
    r"Apex is not installed",
    r"full scope is deprecated",
    r"When using async grad allreduce it is recommended to set the environment variable CUDA_DEVICE_MAX_CONNECTIONS",
)
RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
RAY_AUTH_NOTICE = "Token authentication is enabled for this Ray cluster"
RAY_WORKER_LOGGER = "ray._private.worker"
RAY_THREAD_NOTICE = "SIGTERM handler is not set because current thread is not the main thread"


def filter_library_warnings() -> None:
    """Call before Megatron is imported (driver and every worker process)."""
    for text in MEGATRON_NOISE:
        warnings.filterwarnings("ignore", message=text, category=UserWarning)


class _DropRayNotice(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.text)


def quiet_private_ray() -> None:
    """Drop Ray's token-auth notice (token auth stays on) and its started-on-a-thread warning, for a
    private single-node instance."""
    for name, text in ((RAY_AUTH_LOGGER, RAY_AUTH_NOTICE), (RAY_WORKER_LOGGER, RAY_THREAD_NOTICE)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropRayNotice) and f.text == text for f in logger.filters):
            logger.addFilter(_DropRayNotice(text))
