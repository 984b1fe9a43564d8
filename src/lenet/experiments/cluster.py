"""Ray: connecting to a cluster (or starting a local one) and checking it before any
run starts. A sweep's Ray backend (sweep/ray_backend.py) and a search (search/run.py)
both start here.

    connect(address)        ray.init: the cluster at ``address`` / $RAY_ADDRESS, else a
                            local Ray sized to this machine; one clear line when Ray is
                            missing, no cluster answers, or the cluster refuses our token
    check_nodes(folder)     every node must see ``folder`` (runs are written there and
                            read back here) and run the same lenet version
    TaskOptions             what each run asks for (--cpus-per-run, --gpus-per-run) and
                            how often a dead one is retried (--max-failures), checked
                            against the flags' rules and the cluster's nodes
    refuse_uri(out)         runs are files: --out is a path, not a URI

Ray is an optional dependency (``pip install -e '.[ray]'``): this module imports it
only inside functions, so ``import lenet`` stays light. Authentication is Ray's own:
clusters that ``ray start`` makes since Ray 2.59 require a token, which this process
finds where Ray looks for it ($RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token);
lenet never turns it off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import socket
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from .. import __version__
from ..errors import ClusterError, ConfigError

INSTALL = "pip install -e '.[ray]'  (or: pip install 'ray[tune]>=2.59' optuna)"
# Environment a task needs to find data as this process does (forwarded to the cluster).
FORWARDED_ENV = ("LENET_DATA_DIR", "LENET_NO_DOWNLOAD", "LENET_CACHE_DIR")


def import_ray():
    try:
        import ray
    except ImportError:
        raise ClusterError(f"Ray is not installed; --backend ray and `lenet search` need it: {INSTALL}") from None
    return ray


@dataclass
class Connection:
    address: str | None  # None: a local Ray started by this process
    nodes: list[dict[str, Any]] = field(default_factory=list)  # the alive nodes
    started_here: bool = False  # ray.init ran here (so shutdown() ends it)

    @property
    def cpus(self) -> float:
        return sum(n["Resources"].get("CPU", 0.0) for n in self.nodes)

    @property
    def gpus(self) -> float:
        return sum(n["Resources"].get("GPU", 0.0) for n in self.nodes)

    def describe(self) -> str:
        where = f"the Ray cluster at {self.address}" if self.address else "a local Ray"
        return (f"{where}: {len(self.nodes)} node(s), {self.cpus:g} CPU(s)"
                + (f", {self.gpus:g} GPU(s)" if self.gpus else ""))

    def shutdown(self) -> None:
        if self.started_here:
            import_ray().shutdown()


def connect(address: str | None = None, num_cpus: int | None = None) -> Connection:
    """Connect to the cluster at ``address`` (or $RAY_ADDRESS); else start a local Ray
    with this machine's cores. A Ray this process already started (a notebook's
    ``ray.init()``, the tests' shared instance) is used as it is."""
    ray = import_ray()
    from ray.exceptions import AuthenticationError

    if ray.is_initialized():
        return Connection(address, alive_nodes())
    address = address or os.environ.get("RAY_ADDRESS") or None
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    try:
        if address:
            _probe(address)
            # Ray's C++ client logs each refused attempt to stderr for 20 s before it gives
            # up with a bare ConnectionError; what it logged says why (a token refused?).
            with tempfile.TemporaryFile() as said, _stderr_into(said):
                try:
                    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False,
                             runtime_env={"env_vars": env} if env else None)
                except ConnectionError:
                    said.seek(0)
                    logged = said.read()
                    if b"InvalidAuthToken" in logged or b"Unauthenticated" in logged:
                        raise AuthenticationError("the cluster refused this machine's token, or it has none") \
                            from None
                    said_last = next((line for line in reversed(logged.decode(errors="replace").splitlines())
                                      if line.strip()), "")
                    raise ConnectionError(f"Ray said: {said_last[-300:]}" if said_last else "no answer") from None
        else:
            _start_local_ray(ray, num_cpus or os.cpu_count() or 1)
    except AuthenticationError as exc:
        raise ClusterError(
            f"the Ray cluster at {address} refused this machine ({exc.message}). Give this machine the "
            "cluster's token: copy the head's ~/.ray/auth_token here, or set RAY_AUTH_TOKEN_PATH to a copy "
            "of it (RAY_AUTH_TOKEN holds the token itself); `ray get-auth-token` on the head prints it") from None
    except ConnectionError as exc:
        raise ClusterError(f"no Ray cluster answers at {address} ({exc}); start one with `ray start --head` "
                           "or check --address / RAY_ADDRESS") from None
    except (RuntimeError, ValueError) as exc:
        if address:
            raise ClusterError(f"cannot connect to the Ray cluster at {address}: {exc}") from None
        raise ClusterError(f"cannot start a local Ray: {exc}") from None
    return Connection(address, alive_nodes(), started_here=True)


def _start_local_ray(ray: Any, num_cpus: int) -> None:
    """A Ray of lenet's own on this machine (Ray 2.59+ turns token authentication on for
    it by itself).

    - ``address="local"``: without it Ray joins whatever /tmp/ray/ray_current_cluster
      names (the last `ray start` here, possibly long dead) and then refuses num_cpus.
    - Workers at normal priority: Ray runs them at nice 15, where on a machine doing
      anything else (a second sweep, a test run) they get next to no CPU. The user
      asked for this job; it should not yield to all.
    - Ray's "Token authentication is enabled ... Set RAY_AUTH_MODE=disabled to opt out"
      is not passed on: lenet keeps the token on and does not advertise turning it off.
    """
    os.environ.setdefault("RAY_worker_niceness", "0")
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_not_opt_out_advice)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False)


def _not_opt_out_advice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Token authentication is enabled")


def _probe(address: str) -> None:
    """Fail at once where nothing listens at host:port (Ray itself retries for a minute)."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # ray://, "auto" and other forms: Ray's to resolve
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise ConnectionError(f"nothing listens at {address}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def _stderr_into(file: Any) -> Iterator[None]:
    """File descriptor 2 (where Ray's C++ code logs) into ``file`` for a while."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def alive_nodes() -> list[dict[str, Any]]:
    return [n for n in import_ray().nodes() if n.get("Alive")]


def _look(marker: str, token: str, data: tuple[str, ...] = ()) -> dict[str, Any]:
    """On one node: does it see the driver's marker file and the runs' data paths, and which
    lenet does it run?"""
    try:
        sees = Path(marker).read_text() == token
    except OSError:
        sees = False
    return {"sees": sees, "host": platform.node(), "lenet": __version__,
            "missing": [p for p in data if not Path(p).exists()]}


def check_nodes(folder: Path, connection: Connection, timeout_s: float = 120.0, data: Iterable[str] = ()) -> None:
    """Refuse a cluster whose nodes do not all see ``folder`` and the runs' ``data`` paths
    (data.path: your own data), or run another lenet.

    One node (a local Ray) always passes the storage check: its tasks write where
    this process reads. With several, a marker file written here must be readable
    from a task pinned to each node, so a path on the head's own disk is refused
    before any run starts instead of runs landing on nodes' private disks.
    """
    ray = import_ray()
    from ray.exceptions import TaskUnschedulableError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    paths = tuple(sorted({str(Path(p).expanduser().resolve()) for p in data}))
    folder.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    marker = folder / f".lenet-storage-check-{token}"
    marker.write_text(token)
    look = ray.remote(num_cpus=0, max_retries=0)(_look)
    try:
        refs = [look.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(marker.resolve()), token, paths) for n in connection.nodes]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if len(ready) < len(refs):
            raise ClusterError(f"{len(refs) - len(ready)} node(s) did not answer within {timeout_s:.0f} s; "
                               "check `ray status` on the head")
        answers = []
        for ref in refs:
            try:
                answers.append(ray.get(ref))
            except TaskUnschedulableError:
                pass  # the node died since it was listed: it will run nothing either
    finally:
        marker.unlink(missing_ok=True)
    blind = [a["host"] for a in answers if not a["sees"]]
    if blind and len(answers) > 1:
        raise ClusterError(
            f"{folder} is not visible from {len(blind)} of the {len(answers)} nodes ({', '.join(sorted(set(blind)))}): "
            "on a multi-node cluster the runs must land on storage every node sees (an NFS or other shared "
            "mount, or a cloud bucket mounted at the same path on every node); give --out such a path")
    missing = sorted({f"{a['host']} lacks {p}" for a in answers for p in a.get("missing", [])})
    if missing:
        raise ClusterError(f"every node must see the runs' data (data.path): {'; '.join(missing[:6])}. Put it on "
                           "storage every node mounts at the same path, or copy it to that path on each node")
    other = sorted({f"{a['host']} has lenet {a['lenet']}" for a in answers if a["lenet"] != __version__})
    if other:
        raise ClusterError(f"the nodes must run this lenet ({__version__}): {'; '.join(other)}. "
                           "Install the same version on every node")


def refuse_uri(out: str) -> None:
    """Runs are files that every node writes and this machine reads: a path, not a URI."""
    if "://" in out or out.startswith(("s3:", "gs:")):
        raise ConfigError(f"--out {out}: give a path, not a URI. Runs are written as files by the nodes that train "
                          "them; for a cloud bucket, mount it at the same path on every node and on this machine "
                          "(mountpoint-s3, s3fs, gcsfuse) and give that path")


@dataclass(frozen=True)
class TaskOptions:
    """What each Ray task of a sweep or a search asks for, and how many times one whose
    worker or node died is tried again: --cpus-per-run, --gpus-per-run, --max-failures."""

    cpus_per_run: float = 1
    gpus_per_run: float = 0
    max_failures: int = 3

    def __post_init__(self) -> None:
        if self.cpus_per_run <= 0:
            raise ConfigError(f"--cpus-per-run must be above 0, got {self.cpus_per_run}")
        if self.gpus_per_run < 0 or (self.gpus_per_run > 1 and self.gpus_per_run != int(self.gpus_per_run)):
            raise ConfigError(f"--gpus-per-run must be a fraction of one GPU (0.25: four runs share one) "
                              f"or a whole number, got {self.gpus_per_run}")
        if self.max_failures < 0:
            raise ConfigError(f"--max-failures must be 0 or more, got {self.max_failures}")

    @property
    def threads(self) -> int:
        """torch threads in each task: its whole CPUs, at least one."""
        return max(1, int(self.cpus_per_run))

    def check_fits(self, connection: Connection) -> None:
        """A task asking for more than any node has would wait forever: refuse it now."""
        most_cpus = max((n["Resources"].get("CPU", 0.0) for n in connection.nodes), default=0.0)
        most_gpus = max((n["Resources"].get("GPU", 0.0) for n in connection.nodes), default=0.0)
        if self.cpus_per_run > most_cpus:
            raise ConfigError(f"--cpus-per-run {self.cpus_per_run:g} but no node has more than {most_cpus:g} CPU(s)")
        if self.gpus_per_run > most_gpus:
            raise ConfigError(f"--gpus-per-run {self.gpus_per_run:g} but "
                              + ("the cluster has no GPU" if not most_gpus else f"no node has more than {most_gpus:g}"))
