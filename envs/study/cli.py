"""The LIBERO study in one resumable command: scripted demos -> train energy (m=16) and
MSE policies on the same data -> eval_rollouts at several sampler steps -> libero.json,
table and plot (success rate vs steps, 95% Wilson intervals).

  python scripts/run_study.py preset=quick                 # CPU quickstart (~5-10 min on 2 cores, 1 task)
  python scripts/run_study.py suite=libero_object          # the study (preset paper on CUDA, else cpu:
                                                           #   1 task, ~2 h on 2 cores)
  python scripts/run_study.py suite=libero_object preset=paper energy=1:1,0.5:1 episodes=20
  python scripts/run_study.py suite=libero_object preset=cpu_bimodal   # cpu, on demos with route modes
  python scripts/run_study.py suite=libero_object preset=cpu_bimodal_task1   # its replication on task 1
  python scripts/run_study.py suite=libero_object preset=cpu_yaw_task1   # demos whose average grasp fails
  python scripts/run_study.py preset=objects               # object-token policies (no cameras), task 0
  python scripts/run_study.py preset=objects_suite         # the same on all 10 tasks, modal demos, 3 seeds
  python scripts/run_study.py preset=images_yaw            # image policies on its grasp-yaw tasks, same demos
  python scripts/run_study.py preset=objects_suite seeds=1 energy=1:0.1,1:0.1:m4,1:0.1:xi2 eval_tasks=1,6,8 \\
      eval_steps=1,2 jobs=1 results=benchmarks/results/libero_objects_sweep.json   # population, noise dims
  python scripts/run_study.py preset=quick dry_run=true    # print the plan, run nothing
  python scripts/run_study.py preset=paper ray=auto        # training and evaluation jobs on a Ray cluster

Keys (key=value; defaults from the preset quick | cpu | cpu_suite | cpu_bimodal[_task1] | cpu_yaw_task1 | objects |
objects_suite | images_yaw | paper):
  suite tasks=all|0,3 demos resolution fast_render=true|false detour=0.12 (route modes of the demos, m)
  yaw_modes=true|false (grasp-yaw modes of the demos) yaw_tasks=1,6,8|none (those tasks: yaw modes, no route modes)
  demos_from=<data_root> (re-render that study's demo files at this resolution instead of planning new ones)
  model=small|paper|objects (objects: object tokens, no cameras)
  train_steps checkpoint_every seed seeds (training seeds per model: seed, seed+1, ...; the table shows
  their mean and spread) energy=lambda:beta,... population mse=true|false; an energy entry may set its own
  population and noise dimensions per action, lambda:beta:m4, lambda:beta:xi2 (runs named energy_..._m4, _xi2)
  eval_steps=1,2,4,8,16 episodes workers device data_root runs_root eval_root results dry_run
  record_chunks=true|false (evaluations save each episode's chunks; the report then adds the mechanism:
  grasps at the yaw forks and switching between chunks, <results>_<suite>_mechanism.md; objects_suite: true)
  noise=shared|episode|fixed (the evaluations' sampler noise, eval_rollouts.py --noise;
  fixed: one noise for every chunk of an episode) xi_scale=1|0.5|0 (the energy generator's noise xi scaled at
  sampling, eval_rollouts.py --xi-scale) init_states=official|fresh (fresh: every episode from a
  layout no demonstration used, eval_rollouts.py --init-states fresh). Either makes another evaluation of the
  same runs: its folders and table get the variant's suffix (eval/study_fresh/..., <results>_fresh.json)
  unless eval_root / results are given, and the fork probe is not repeated unless probe_steps is given.
  eval_tasks=1,6,8|all (evaluate only these of the trained tasks: its own table, suffix tasks1-6-8, but the
  protocol's folders, since it runs the protocol's very episodes)
  probe_steps=1,2|none (after the evaluations: the fork probe of the first seed's run of each model on every
  task with a fork, pooled into <results>_<suite>_probe.md; objects_suite: 1,2)
  threads (OMP_NUM_THREADS of the children; quick/cpu: 1, paper: 0 = torch default)
  jobs (training / evaluation subprocesses at a time; cpu: 2, each logging to a file)
  ray=auto|<host:port> (training and evaluation jobs as Ray tasks: a GPU per training where the cluster
  has GPUs, else threads CPUs; workers+1 CPUs per evaluation; the folders on a shared file system;
  docs/cluster.md)
  train.* data.* model.*   passed on to scripts/train_policy.py
Rerun the same command to resume: finished stages are skipped, interrupted ones resume.
"""

from __future__ import annotations

import contextlib
import shlex
import subprocess
import sys
import time


def describe_machine() -> str:
    """"GPU <name>" when CUDA is visible (training then runs there), else "CPU <arch>, <n> cores"."""
    import os
    import platform

    import torch

    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}"
    return f"CPU {platform.machine()} {platform.processor()}".strip() + f", {os.cpu_count()} cores"


def _show(job) -> str:
    return f"{job.state:>6}  {job.stage} {job.name}: {job.detail}" + (f"\n        $ {shlex.join(job.cmd)}" if job.cmd else "")


def _tail(path, n: int = 5) -> str:
    """The last n lines of a log (progress-bar redraws split at carriage returns)."""
    try:
        lines = path.read_text(errors="replace").replace("\r", "\n").splitlines()
    except OSError:
        return ""
    return "\n".join("        | " + ln for ln in [ln for ln in lines if ln.strip()][-n:])


def split_jobs(jobs: list) -> tuple[list[str], list]:
    """Say which jobs are done or cannot run (a "wait" job's model is not trained): (names of
    those failed, the jobs to run)."""
    failed, queue = [], []
    for job in jobs:
        if job.state == "done":
            print(f"skip {job.stage} {job.name}: {job.detail}", flush=True)
        elif job.state == "wait":
            print(f"SKIP {job.stage} {job.name}: its model is not trained (see the training errors above)", flush=True)
            failed.append(job.name)
        else:
            queue.append(job)
    return failed, queue


def run_stage(title: str, jobs: list, before=None, threads: int = 0, parallel: int = 1) -> list[str]:
    """Run the jobs that are not done (one subprocess each); returns the names of the failed
    ones. A failure never stops the other jobs. With parallel > 1 (and more than one job to
    run) that many run at a time, each writing to its own log file (job.log) under one
    progress bar; otherwise one at a time with their output passed through.
    threads > 0 sets OMP_NUM_THREADS for the children unless the user exported it: on a
    shared 2-core CPU torch's default 2 threads thrash (measured 11 s/step against 0.25)."""
    import os

    from tqdm import tqdm

    env = dict(os.environ)
    if threads > 0:
        env.setdefault("OMP_NUM_THREADS", str(threads))

    failed, queue = split_jobs(jobs)
    to_logs = parallel > 1 and len(queue) > 1
    if to_logs:  # the children's progress bars redraw every 30 s into their log files, not at every step
        env.setdefault("TQDM_MININTERVAL", "30")
    width = parallel if to_logs else 1
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(queue), desc=title, unit="job", file=sys.stdout,
               dynamic_ncols=True)
    running = []  # (job, process, log file or None)
    try:
        while queue or running:
            while queue and len(running) < width:
                job = queue.pop(0)
                if before is not None:
                    before(job)
                log = None
                if to_logs:
                    job.log.parent.mkdir(parents=True, exist_ok=True)
                    log = open(job.log, "ab")  # noqa: SIM115 (closed when the child ends)
                    tqdm.write(f"$ {shlex.join(job.cmd)}\n        (output: {job.log})", file=sys.stdout)
                else:
                    tqdm.write(f"$ {shlex.join(job.cmd)}", file=sys.stdout)
                    bar.clear()  # the child's own progress bars draw on this line
                    sys.stdout.flush()
                running.append((job, subprocess.Popen(job.cmd, env=env, stdout=log,
                                                      stderr=subprocess.STDOUT if log else None), log))
            if to_logs and bar.postfix != (names := ", ".join(j.name for j, _, _ in running)):
                bar.set_postfix_str(names)  # only on a change: a log file gets one line per job, not one per second
            try:
                running[0][1].wait(timeout=1.0)  # one at a time: returns as soon as the child ends
            except subprocess.TimeoutExpired:
                pass
            for item in [r for r in running if r[1].poll() is not None]:
                job, proc, log = item
                running.remove(item)
                bar.update(1)
                if log is not None:
                    log.close()
                if proc.returncode != 0:
                    failed.append(job.name)
                    tqdm.write(f"FAILED ({job.stage} {job.name}, exit {proc.returncode}); going on with the next job"
                               + (f"; last lines of {job.log}:\n{_tail(job.log)}" if log else ""), file=sys.stdout)
                elif log is not None:
                    tqdm.write(f"done {job.stage} {job.name}", file=sys.stdout)
    finally:
        for _, proc, log in running:  # interrupted: stop the children, keep what they wrote
            proc.terminate()
            proc.wait()
            if log is not None:
                log.close()
        bar.close()
    return failed


_JOINED = [False]  # whether main() joined a Ray cluster (and leaves it at the end)


@contextlib.contextmanager
def stop_on_sigterm():
    """SIGTERM (``kill``, a scheduler's stop) ends the study like Ctrl-C, so :func:`run_stage`
    stops the children it started: Python's default SIGTERM ends the process at once and left
    them training, and a rerun then started a second copy on the same run dir."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _join_cluster(cfg) -> tuple[bool, str]:
    """ray=...: join the cluster, check that every kind of job fits on a node; (whether training
    takes a GPU, what write_spec records as the machine)."""
    from envs.evaluation.ray_cluster import describe, import_ray
    from envs.study.cluster import check_cluster, connect
    from envs.study.report import StudyError

    try:
        was = import_ray().is_initialized()
    except ValueError as exc:  # ClusterError: Ray is not installed
        raise StudyError(str(exc)) from None
    print(connect(cfg.ray), flush=True)
    _JOINED[0] = not was
    gpus = check_cluster(cfg)
    return gpus, f"Ray cluster ({describe()}); training jobs on {'1 GPU' if gpus else f'{max(cfg.threads, 1)} CPUs'} each"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0
    with stop_on_sigterm():
        return _main(argv)


def _main(argv: list[str]) -> int:
    from envs.study.report import StudyError
    from envs.study.mechanism import aggregate_mechanism
    from envs.study.probe_stage import aggregate_probe, plan_probe
    from envs.study.runner import aggregate, plan_demos, plan_eval, plan_training, write_spec
    from envs.study.config import parse_overrides

    start = time.time()
    try:
        cfg = parse_overrides(argv)
        models = {m.run: m for m in cfg.models()}
        seeds = f"seed {cfg.seed}" if cfg.seeds == 1 else f"seeds {cfg.seed}-{cfg.seed + cfg.seeds - 1}"
        print(f"study {cfg.suite} preset={cfg.preset}: models {', '.join(dict.fromkeys(m.name for m in models.values()))}; "
              f"model={cfg.model}, {cfg.train_steps} steps, {seeds}; {cfg.demos} demos/task, "
              f"{'all tasks' if cfg.tasks is None else f'tasks {cfg.tasks}'}; eval steps {cfg.eval_steps}"
              + (f" on tasks {cfg.eval_tasks}" if cfg.eval_tasks is not None else "") + ", "
              f"{cfg.episodes} episodes/task", flush=True)
        if cfg.dry_run:
            for job in plan_demos(cfg) + plan_training(cfg) + plan_eval(cfg) + plan_probe(cfg):
                print(_show(job))
            print(f"dry run: nothing executed; results would go to {cfg.results}")
            return 0
        n, par = cfg.threads, cfg.jobs
        gpus, machine = _join_cluster(cfg) if cfg.ray else (False, "")
        failed = {"demos": run_stage("[1/4] demos", plan_demos(cfg), threads=n)}
        spec = lambda j: write_spec(cfg, models[j.name], machine or describe_machine())  # noqa: E731
        if cfg.ray:
            from envs.study.cluster import run_stage_on_ray

            failed["train"] = run_stage_on_ray("[2/4] train", plan_training(cfg), cfg, gpus, before=spec)
            failed["eval"] = run_stage_on_ray("[3/4] eval", plan_eval(cfg), cfg, gpus)
        else:
            failed["train"] = run_stage("[2/4] train", plan_training(cfg), threads=n, parallel=par, before=spec)
            # each evaluation records what produced it (eval_config.json) itself
            failed["eval"] = run_stage("[3/4] eval", plan_eval(cfg), threads=n, parallel=par)
        if cfg.probe_steps:  # on this machine (a probe is a few minutes)
            failed["probe"] = run_stage("[3/4] fork probe", plan_probe(cfg), threads=n, parallel=par)
        paths = aggregate(cfg)
        if paths is not None:
            paths.update(aggregate_probe(cfg))
            paths.update(aggregate_mechanism(cfg))
    except StudyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        if _JOINED[0]:
            from envs.evaluation.ray_cluster import disconnect

            disconnect()
            _JOINED[0] = False
    if paths is not None:
        print("[4/4] results:", ", ".join(str(p) for p in paths.values()))
        print(paths["md"].read_text())
    bad = [f"{stage}: {', '.join(names)}" for stage, names in failed.items() if names]
    minutes = (time.time() - start) / 60
    print(f"done: study {cfg.suite} preset={cfg.preset} in {minutes:.1f} min; "
          + (f"results in {paths['json']}" if paths else "no evaluation finished")
          + (f"; FAILED {'; '.join(bad)} (rerun to retry)" if bad else ""))
    return 1 if bad or paths is None else 0


if __name__ == "__main__":
    raise SystemExit(main())
