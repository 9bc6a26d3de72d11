"""A Ray cluster of one or more nodes on this machine, bound to the loopback interface only: what
the tests (``tests/envs/test_ray_pool.py``) and ``scripts/bench_cluster.py`` start and stop
themselves. Each node is a ``ray start --block`` process in its own process group (its Ray daemons
with it), so a node is lost the way a machine is lost: SIGKILL of that group. Nothing here is
needed to use a real cluster (``eval_rollouts.py --ray <address>``: :mod:`envs.evaluation.ray_pool`).

Loopback: Ray resolves 127.0.0.1 to the machine's address unless
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``; the nodes get it in their environment, and a driver in
this process calls :func:`prepare_driver` before ``ray.init``. The cluster has its own temp folder
and authentication token (``RAY_AUTH_MODE=token``), and never touches ``/tmp/ray``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# `ray start` whose 127.0.0.1 stays 127.0.0.1: Ray replaces a loopback node or head address by the
# machine's address (and then listens on every interface); a node whose address is 127.0.0.1
# listens on the loopback interface only. LOOPBACK_ENV would do the same but refuses worker nodes.
_RAY_START = ("import sys\nfrom ray._private import services\nservices.resolve_ip_for_localhost = lambda host: host\n"
              "from ray.scripts.scripts import main\nsys.argv[0] = 'ray'\nsys.exit(main())")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare_driver(env: dict[str, str]) -> None:
    """Give this process the environment of a driver of a :class:`LocalCluster` (its ``env``: the
    token, loopback addresses) before ``ray.init``, also when ``ray`` is already imported (Ray reads
    both at import time: the settings are refreshed)."""
    os.environ.update(env)
    try:
        from ray._private import ray_constants
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:
        return
    if env.get(LOOPBACK_ENV) == "0":
        ray_constants.ENABLE_RAY_CLUSTER = False
    Config.initialize("")  # what Ray itself does when it turns token authentication on
    AuthenticationTokenLoader.instance().reset_cache()  # a token read for an earlier cluster


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class LocalCluster:
    """``cpus`` nodes (one entry per node: its CPU count; the first is the head) on 127.0.0.1.

    ``start()`` returns the address (``127.0.0.1:<port>``); ``env`` is what a driver process
    needs in its environment (loopback, the token); ``kill_node(i)`` loses node i (SIGKILL of its
    process group); ``stop()`` ends every node and removes the temp folder. ``system`` adds Ray
    system settings to every node (``RAY_<name>``), e.g. faster failure detection."""

    def __init__(self, cpus: Sequence[int] = (1, 1), object_store_mb: int = 80,
                 system: dict[str, Any] | None = None) -> None:
        self.cpus = list(cpus)
        self.object_store_mb = object_store_mb
        self.system = dict(system or {})
        # short: Ray's unix socket paths live under it (108 characters at most)
        self.tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
        token = self.tmp / "token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        self.auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
        self.env = {**self.auth_env, LOOPBACK_ENV: "0"}  # a driver's
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen | None] = []

    def _start_node(self, i: int) -> None:
        head = i == 0
        cmd = [sys.executable, "-c", _RAY_START, "start", "--block", f"--num-cpus={self.cpus[i]}",
               "--node-ip-address=127.0.0.1", f"--object-store-memory={self.object_store_mb * 2**20}",
               "--disable-usage-stats", f"--temp-dir={self.tmp}"]
        cmd += ["--head", f"--port={self.port}", "--include-dashboard=false"] if head else [f"--address={self.address}"]
        env = {**{k: v for k, v in os.environ.items() if k != LOOPBACK_ENV}, **self.auth_env, "OMP_NUM_THREADS": "1",
               **{f"RAY_{k}": str(v) for k, v in self.system.items()}}
        log = self.tmp / f"node{i}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.procs.append(proc)
        deadline = time.time() + 180
        while b"Ray runtime started" not in log.read_bytes():
            if proc.poll() is not None or time.time() > deadline:
                tail = log.read_text(errors="replace")[-1500:]
                self.stop()
                raise RuntimeError(f"ray node {i} did not start: {tail}")
            time.sleep(0.2)

    def start(self) -> str:
        for i in range(len(self.cpus)):
            self._start_node(i)
        return self.address

    def kill_node(self, i: int) -> None:
        """Lose node ``i`` at once, as a machine is lost: SIGKILL its ``ray start``, every daemon of
        that node and its worker processes (actors; they run in sessions of their own)."""
        proc = self.procs[i]
        if proc is None:
            return
        for pid in [proc.pid, *_descendants(proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)
        self.procs[i] = None

    def stop(self) -> None:
        for i in reversed(range(len(self.procs))):
            self.kill_node(i)
        time.sleep(0.5)  # the nodes' worker processes notice their raylet is gone and exit
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
