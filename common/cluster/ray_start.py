"""Starting (or joining) Ray: imports Ray and nothing heavier, so ``./run.sh`` can start it first.

One node without ``RAY_ADDRESS``: a private Ray instance of this machine (``ray.init``). With
``--nodes N``: only the cluster of ``RAY_ADDRESS`` or ``ray start`` (``cluster_address``), joined
after the driver's checks. The private instance starts on a thread (``BackgroundRay``) while the
driver imports torch and checks its inputs: common/run/launch.py starts it before anything else when
the run goes through ``./run.sh``; common/run/session.py otherwise.
"""

from __future__ import annotations

import atexit
import os
import queue
import socket
import threading

import ray
from ray.exceptions import AuthenticationError

from common.config.load import PROJECT_ROOT
from common.util.quiet import quiet_private_ray

NO_CLUSTER = "no Ray cluster found; start one with `ray start --head ...` or set RAY_ADDRESS (docs/cluster.md)"
# the private instance's raylet would start one idle worker per CPU and hold the driver's
# registration until they are up (~0.5 s, ~1 s of CPU); none of them could host a role (a role's
# processes get their device's environment, ``WorkerGroup``), so none is started
NO_PRESTART = {"prestart_worker_first_driver": False, "enable_worker_prestart": False}


def cluster_address() -> str:
    """The cluster a multi-node run joins: ``RAY_ADDRESS``, else the one ``ray start`` started on
    this node (Ray records its address under the Ray temp folder). Never another process's private
    ``ray.init`` instance, which Ray's own ``address="auto"`` would join. Raises when neither
    names a cluster that answers."""
    from ray._private.services import find_bootstrap_address

    address = os.environ.get("RAY_ADDRESS", "")
    source = f"RAY_ADDRESS={address}"
    if address in ("", "auto"):
        address, source = find_bootstrap_address(None), "the cluster `ray start` recorded on this node"
        if not address:
            raise ValueError(NO_CLUSTER)
    host, _, port = address.rpartition(":")
    if "://" not in address and port.isdigit():  # host:port of a GCS: does anything answer there?
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError:
            raise ValueError(f"{source}: nothing answers at {address}; " + NO_CLUSTER) from None
    return address


def private_instance(nodes: int) -> bool:
    """A run on one node without ``RAY_ADDRESS`` gets its own Ray instance (``ray.init``)."""
    return nodes == 1 and "RAY_ADDRESS" not in os.environ


def start_ray(nodes: int) -> None:
    """One node: a private Ray instance sized to this machine. Several: join the running cluster
    (``cluster_address``).

    Workers import ``common`` from this checkout (the same path on every node), whatever the
    driver's current directory is, and use the driver's CPU kernels; their device's environment
    comes with each role's processes (``WorkerGroup``).
    """
    pythonpath = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    # PyTorch's kernel choice follows the driver's on every node (a joined cluster's raylets were
    # started without it): this is how the curves are checked under other CPU kernels
    kernels = {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY",) if k in os.environ}
    runtime_env = {"env_vars": {"PYTHONPATH": pythonpath, **kernels}}
    if private_instance(nodes):
        quiet_private_ray()
        # address="local": always a private instance, never an unrelated cluster running on this machine
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="warning",
                 runtime_env=runtime_env, _system_config=NO_PRESTART)  # fmt: skip
    else:
        address = cluster_address()
        try:
            ray.init(address=address, logging_level="warning", runtime_env=runtime_env)
        except AuthenticationError:
            raise ValueError(
                f"Ray cluster at {address}: refused this driver's authentication token; copy ~/.ray/auth_token "
                "from the head node (or export RAY_AUTH_TOKEN) and set RAY_AUTH_MODE=token (docs/cluster.md)"
            ) from None
        except ConnectionError as e:
            raise ValueError(f"Ray cluster at {address}: could not join it ({e}); " + NO_CLUSTER) from None


class BackgroundRay:
    """A private Ray instance (``start_ray(1)``) starting on a thread while the driver imports
    torch, loads the tokenizer and checks its inputs (~3-4 s on 2 cores; Ray's start takes about as
    long, mostly waiting for its processes).

    ``then(fn)`` gives the thread one more piece of work for once Ray is up: the session's is
    starting the roles' processes (``common.cluster.place_roles.start_roles``: placement groups, and processes
    that import torch and Megatron while the driver's checks go on; no model is built before
    ``wait`` returns, so a bad input still fails before any model, its message printed at once).
    ``wait`` returns what ``fn`` returned; ``cancel`` (a check failed) shuts everything down when the
    process exits, after the error message.

    The thread stays (idle) for the life of the process: Ray's processes are tied to the thread
    that started them (Linux ``PR_SET_PDEATHSIG`` fires when that *thread* ends), so it must not
    return.
    """

    def __init__(self):
        self._work: queue.Queue = queue.Queue(maxsize=1)
        self._done = threading.Event()
        self._given = False
        self._error: BaseException | None = None
        self._result = None
        threading.Thread(target=self._run, name="ray-start", daemon=True).start()

    def _run(self) -> None:
        try:
            start_ray(1)
        except BaseException as e:  # noqa: BLE001 - re-raised by wait() on the driver's thread
            self._error = e
        fn = self._work.get()
        if fn is not None and self._error is None:
            try:
                self._result = fn()
            except BaseException as e:  # noqa: BLE001 - as above
                self._error = e
        self._done.set()
        threading.Event().wait()

    def then(self, fn) -> None:
        """Run ``fn()`` on the thread once Ray is up (the first call only; ``wait`` returns its
        result); ``None``: nothing to run."""
        if not self._given:
            self._given = True
            self._work.put(fn)

    def settle(self) -> None:
        """Until Ray is up and ``then``'s work done (``wait`` then has the result at once)."""
        self._done.wait()

    def wait(self):
        """Until Ray is up and ``then``'s work done; its result, or what either raised."""
        self.then(None)
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._result

    def cancel(self) -> None:
        """The driver's checks failed: the instance is shut down when the process exits (once its
        start has finished), after the error message is printed: the message does not wait for Ray."""
        self.then(None)
        atexit.register(self._shut_down)

    def _shut_down(self) -> None:
        self._done.wait()
        ray.shutdown()


_early: BackgroundRay | None = None


def start_early(nodes: int) -> None:
    """Start the private instance now, if the run gets one (``./run.sh``: before torch is imported)."""
    global _early
    if private_instance(nodes) and _early is None:
        _early = BackgroundRay()


def take_early() -> BackgroundRay | None:
    """The instance ``start_early`` started, once (the session's; None when none was)."""
    global _early
    early, _early = _early, None
    return early
