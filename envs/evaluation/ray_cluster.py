"""Joining a Ray cluster for the evaluation and the study: :func:`connect` (an address, ``auto``:
RAY_ADDRESS or this machine's cluster, else a local instance), :func:`describe`, :func:`disconnect`,
and :class:`ClusterError`, the one-line error of every Ray problem the user can fix.

``import ray`` happens only when one of these is called (``pip install -e ".[cluster]"`` adds
Ray); the workers on the cluster are :mod:`envs.evaluation.ray_pool`'s.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

INSTALL_HINT = 'Ray is not installed; install the cluster extra: pip install -e ".[cluster]"'


class ClusterError(ValueError):
    """Ray is missing or a cluster cannot be used; the message is one line naming the fix."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ClusterError(INSTALL_HINT) from None
    return ray


def kill_actor(ray: Any, actor: Any) -> None:
    """Kill a Ray actor for good (no restart); one already gone, or a cluster already down, is fine."""
    if actor is not None:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:
            pass


def one_line(text: str, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


def _check_reachable(address: str) -> None:
    """One-line ClusterError unless something listens at ``address`` (host:port or ray://host:port):
    ``ray.init`` would otherwise retry for minutes."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"bad Ray address {address!r}; expected host:port (e.g. 10.0.0.1:6379), "
                           "ray://host:port or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise ClusterError(f"no Ray cluster reachable at {address} ({one_line(exc, 80)}); start one there with "
                           f"`ray start --head --port={port}` or use --ray auto") from None


_THIS_MACHINE = "the cluster `ray start` runs on this machine"
_STARTED_LOCAL = [False]  # whether this process's Ray is a local instance that connect() started


def _auto_address() -> tuple[str | None, str]:
    """The cluster ``auto`` means, and where that came from: RAY_ADDRESS, else the one ``ray start``
    recorded on this machine (or a running one); (None, why) when there is none."""
    env = os.environ.get("RAY_ADDRESS", "")
    if env and env != "auto":
        return env, "RAY_ADDRESS"
    try:
        from ray._private.services import get_ray_address_from_environment

        return get_ray_address_from_environment("auto", None), _THIS_MACHINE
    except ConnectionError:
        return None, "no running cluster on this machine"
    except Exception:  # Ray moved its private helper: let ray.init find it
        return "auto", _THIS_MACHINE


def _start_local(num_cpus: int | None) -> None:
    """A local Ray instance listening on 127.0.0.1 only (Ray's single-machine mode, as on macOS)."""
    ray = import_ray()
    try:
        from ray._private import ray_constants
    except ImportError:
        ray_constants = None
    old = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    if old is not None:
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        _STARTED_LOCAL[0] = True
    finally:
        if old is not None:
            ray_constants.ENABLE_RAY_CLUSTER = old


def connect(address: str | None = "auto", num_cpus: int | None = None) -> str:
    """Join a Ray cluster and return one line saying which: ``address`` "auto" (or None) is
    RAY_ADDRESS or the cluster of this machine (``ray start``), and when there is none a local
    instance started here (``num_cpus``: its CPUs, default all); "host:port" / "ray://host:port"
    must be reachable. Already connected: that cluster. Bad input: one-line :class:`ClusterError`."""
    ray = import_ray()
    if ray.is_initialized():
        return "Ray: " + describe()
    addr, source = _auto_address() if address in (None, "auto") else (address, "--ray")
    if addr not in (None, "auto"):
        try:
            _check_reachable(addr)
        except ClusterError:
            if source != _THIS_MACHINE:
                raise
            addr, source = None, "the cluster `ray start` recorded on this machine is gone"
    if addr is None:
        _start_local(num_cpus)
        return f"Ray: {source}; started a local Ray instance ({describe()})"
    try:
        ray.init(address=addr, log_to_driver=False, logging_level=logging.WARNING)
    except Exception as exc:  # ConnectionError, AuthenticationError, version mismatch, ...
        hint = ("; set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH to the cluster's token"
                if "auth" in str(exc).lower() else "")
        raise ClusterError(f"could not join the Ray cluster at {addr}: {type(exc).__name__}: "
                           f"{one_line(exc, 200)}{hint}") from None
    return f"Ray: connected to the cluster at {addr} ({describe()})"


def describe() -> str:
    """"2 nodes, 16 CPUs, 0 GPUs" of the cluster this process is connected to."""
    ray = import_ray()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    res = ray.cluster_resources()
    return f"{len(nodes)} node{'s' * (len(nodes) != 1)}, {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs"


def disconnect() -> None:
    """Leave the cluster (a local instance started by :func:`connect` ends with it)."""
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()
    _STARTED_LOCAL[0] = False


def started_local() -> bool:
    """Whether this process's Ray is a local instance that :func:`connect` started (it ends with
    :func:`disconnect`)."""
    return _STARTED_LOCAL[0]
