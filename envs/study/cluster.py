"""The study's training and evaluation jobs on a Ray cluster: ``run_study.py ... ray=auto|<address>``.

The plan is the same as without Ray (:func:`envs.study.runner.plan_training`, :func:`plan_eval`:
the same commands, the same skip/resume decisions from the same files), and so is the order of the
stages; only where a job runs changes. Each job that is not done becomes one Ray task
(:func:`_run_job`) that runs the job's command as a subprocess on a node with the job's resources
free (:func:`job_resources`: a GPU per training when the cluster has GPUs, else ``threads`` CPUs;
``workers`` + 1 CPUs per evaluation, the simulator workers and the policy, and a GPU with
``device=cuda``), its output going to the job's log file. Ray decides how many run at once (``jobs=``
is not used). Tasks are never retried by Ray: a job whose node is lost is reported failed, and the
rerun resumes it from its files, as after any failure.

The nodes must see the study's folders at the same paths (a shared file system: data, run and
evaluation folders, and the driver's working directory, where the commands run) and have the
same Python environment at the same path (the commands start ``sys.executable`` of the driver).
The demonstrations stage runs on the driver's machine, as without Ray.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from envs.study.config import StudyConfig
from envs.study.report import StudyError


def connect(address: str) -> str:
    """Join the cluster (``auto``: RAY_ADDRESS, the cluster of this machine, else a local Ray
    instance; or host:port) and return the line saying which; one-line StudyError otherwise."""
    from envs.evaluation.ray_cluster import ClusterError
    from envs.evaluation.ray_cluster import connect as ray_connect

    try:
        return ray_connect(address)
    except ClusterError as exc:
        raise StudyError(str(exc)) from None


def job_resources(stage: str, cfg: StudyConfig, gpus: bool) -> dict[str, float]:
    """What one job of ``stage`` (train | eval) reserves, as Ray's ``num_cpus`` / ``num_gpus``."""
    if stage == "train":
        return {"num_cpus": 1, "num_gpus": 1} if gpus else {"num_cpus": max(cfg.threads, 1)}
    return {"num_cpus": cfg.workers + 1, **({"num_gpus": 1} if cfg.device.startswith("cuda") else {})}


def _nodes() -> list[dict[str, float]]:
    import ray

    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


def check_cluster(cfg: StudyConfig) -> bool:
    """Whether the cluster has GPUs (training then takes one per job); one-line StudyError when a
    training or evaluation job would fit on no node (Ray would wait for ever)."""
    nodes = _nodes()
    gpus = any(n.get("GPU", 0) > 0 for n in nodes)
    for stage in ("train", "eval"):
        need = job_resources(stage, cfg, gpus)
        if not any(n.get("CPU", 0) >= need["num_cpus"] and n.get("GPU", 0) >= need.get("num_gpus", 0) for n in nodes):
            most = max((n.get("CPU", 0) for n in nodes), default=0)
            if need.get("num_gpus") and not gpus:
                raise StudyError(f"device={cfg.device} but the Ray cluster has no GPUs; use device=cpu or add GPU nodes")
            what = (f"workers={cfg.workers} simulator workers + 1 for the policy" if stage == "eval"
                    else f"threads={cfg.threads}")
            raise StudyError(f"{'a training' if stage == 'train' else 'an evaluation'} job needs {need['num_cpus']:g} CPUs "
                             f"({what}) and the largest node of the Ray cluster has {most:g}; lower "
                             f"{'workers' if stage == 'eval' else 'threads'}= or add bigger nodes")
    return gpus


def _run_job(cmd: list[str], cwd: str, log: str, omp: str | None) -> tuple[int, str, str]:
    """The Ray task: run ``cmd`` in ``cwd`` on this node, output appended to ``log``; returns
    (exit code, "<host> node <id>", "" or why it could not start). Cancelled (``ray.cancel``):
    the command is ended too; the worker killed (the driver gone): Ray ends its process group, the
    command with it."""
    import socket

    import ray

    where = f"{socket.gethostname()} node {ray.get_runtime_context().get_node_id()[:12]}"
    env = dict(os.environ)
    if omp:
        env["OMP_NUM_THREADS"] = omp
    try:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)  # in the worker's process group: Ray ends it with it
    except OSError as exc:  # no such folder or interpreter on this node
        return -1, where, f"cannot start it there: {exc}"
    try:
        return proc.wait(), where, ""
    except BaseException:  # cancelled: KeyboardInterrupt in the task
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise


def run_stage_on_ray(title: str, jobs: list, cfg: StudyConfig, gpus: bool,
                     before: Callable[[Any], None] | None = None) -> list[str]:
    """:func:`envs.study.cli.run_stage` on the cluster: the jobs not done run as Ray tasks, each
    with its resources and its log; returns the names of the failed ones (a failure never stops
    the others). ``before(job)`` runs on the driver before the job is submitted."""
    import ray
    from tqdm import tqdm

    from envs.study.cli import _tail, split_jobs

    omp = os.environ.get("OMP_NUM_THREADS") or (str(cfg.threads) if cfg.threads > 0 else None)
    failed, queue = split_jobs(jobs)
    if not queue:
        return failed
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(queue), desc=title, unit="job", file=sys.stdout,
               dynamic_ncols=True)
    running: dict[Any, Any] = {}  # ObjectRef -> job
    try:
        for job in queue:
            if before is not None:
                before(job)
            need = job_resources(job.stage, cfg, gpus)
            task = ray.remote(max_retries=0, scheduling_strategy="SPREAD", **need)(_run_job)
            running[task.remote(job.cmd, os.getcwd(), str(job.log), omp)] = job
            res = ", ".join(f"{v:g} {k[4:-1].upper()}" for k, v in need.items())
            tqdm.write(f"$ {shlex.join(job.cmd)}\n        (Ray task: {res}; output: {job.log})", file=sys.stdout)
        while running:
            done, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in done:
                job = running.pop(ref)
                bar.update(1)
                try:
                    rc, where, why = ray.get(ref)
                except Exception as exc:  # the task's node lost, the worker killed, ...
                    rc, where, why = -1, "the cluster", " ".join(str(exc).split())[:300]
                if rc == 0:
                    tqdm.write(f"done {job.stage} {job.name} on {where}", file=sys.stdout)
                    continue
                failed.append(job.name)
                tqdm.write(f"FAILED ({job.stage} {job.name}, exit {rc} on {where}{': ' + why if why else ''}); "
                           f"going on with the next job; last lines of {job.log}:\n{_tail(job.log)}", file=sys.stdout)
            bar.set_postfix_str(", ".join(j.name for j in running.values()))
    finally:
        for ref in running:  # interrupted: end the jobs (their files stay; a rerun resumes them)
            ray.cancel(ref)
        bar.close()
    return failed
