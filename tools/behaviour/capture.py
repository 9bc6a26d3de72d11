#!/usr/bin/env python
"""Capture the behaviour of the distributional-diffusion-libero package in DIR into one .npz.

    OMP_NUM_THREADS=1 python capture.py --repo DIR --out FILE.npz [--only demos,train,eval,serve]

Run it as its own process (it imports the package from DIR and nothing else of it):
DIR goes first on sys.path, the working directory becomes DIR, PYTHONPATH=DIR for
spawned workers, and any editable-install finder (and any other checkout on sys.path) is
taken off sys.meta_path, so no other copy of ``policy`` / ``envs`` can be picked up (checked at
the end: every loaded policy.* / envs.* module must live under DIR).

Every import goes through ``imp`` / ``sym``, which try the module paths planned for the
restructuring first and the current paths as a fallback, so the same script captures
the code before and after the move. Which module each name came from is recorded under
``meta.*`` (informational; compare.py does not count it).

Artifacts (key prefixes in the npz):
  demo.*   planned scripted demonstrations (envs.scripted_demos.plan_attempt), 6 tasks x 2 seeds:
           actions (T, 7) float64, success, steps, failure text, first state (layout) float64.
  train.*  200 steps of the small policy (energy loss) on a synthetic suite: per-step loss,
           confinement, interaction, grad_norm, lr from metrics.jsonl; sha256 of the final
           EMA weights (sorted tensors).
  eval.*   run_evaluation on 2 tasks x 5 episodes (max_steps 60, 2 workers, fast_render, 32 px)
           with the trained policy made deterministic per call (one predict per observation
           with a generator seeded by (suite, task, episode, t)): episodes.jsonl fields, and
           every observation the policy saw (proprio values, sha256 of the images) plus the
           action chunks it returned.
  serve.*  PolicyServer on 127.0.0.1:0 with the trained policy (predict with a fixed
           generator): replies for fixed observations (package and openpi keys), dtype,
           shape, metadata, and the same observation through policy.predict in process.
  timing.* seconds per section (reported by compare.py, never counted).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# ----------------------------------------------------------------------------- environment
for _k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_k] = "1"
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PYTHONHASHSEED", "0")

RESOLVED: dict[str, str] = {}  # "name" -> module it was taken from


def imp(*candidates: str):
    """The first of ``candidates`` (module paths) that imports; ModuleNotFoundError for the
    candidate itself (or one of its parents) moves on, any other error is raised."""
    errors = []
    for name in candidates:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if missing and (name == missing or name.startswith(missing + ".")):
                errors.append(f"{name}: {exc}")
                continue
            raise
        RESOLVED.setdefault(f"module:{candidates[0]}", name)
        return mod
    raise ImportError("none of the candidate modules imports: " + "; ".join(errors))


def sym(name: str, *candidates: str):
    """Attribute ``name`` of the first candidate module that imports and defines it."""
    tried = []
    for mod_name in candidates:
        try:
            mod = imp(mod_name)
        except ImportError as exc:
            tried.append(f"{mod_name} ({exc})")
            continue
        if hasattr(mod, name):
            RESOLVED[name] = mod_name
            return getattr(mod, name)
        tried.append(f"{mod_name} (no attribute)")
    raise ImportError(f"{name} not found in any of: " + "; ".join(tried))


# candidate module paths: planned new ones first, package re-exports, then the current ones
M = {
    "training": ("policy.training.loop", "policy.training", ),
    "training_config": ("policy.training.config", "policy.training", "policy.training_config"),
    "training_checkpoint": ("policy.training.checkpoint", "policy.training", "policy.training_checkpoint"),
    "optim": ("policy.training.optim", "policy.training", "policy.optim"),
    "config": ("policy.model.config", "policy.model", "policy.config"),
    "network": ("policy.model.network", "policy.model", ),
    "policy": ("policy.model.policy", "policy.model", "policy.policy"),
    "serving": ("policy.serving.server", "policy.serving.client", "policy.serving"),
    "client": ("policy.serving.client", "policy.serving.server", "policy.serving"),
    "wire": ("policy.serving.wire", "policy.serving", "policy.wire"),
    "language": ("policy.model.nets.language", "policy.nets.language", "policy.model.language"),
    "libero": ("envs.libero.env", "envs.libero.suites", "envs.libero.observation", "envs.libero"),
    "dataset": ("envs.libero.dataset", "envs.dataset"),
    "hdf5_writer": ("envs.libero.hdf5_writer", "envs.hdf5_writer"),
    "demos": ("envs.scripted.demos", "envs.scripted", "envs.scripted_demos"),
    "evaluate": ("envs.evaluation.harness", "envs.evaluation", "envs.evaluate"),
    "eval_policies": ("envs.evaluation.policies", "envs.evaluation", "envs.eval_policies"),
    "eval_results": ("envs.evaluation.results", "envs.evaluation", "envs.eval_results"),
}

SEED_STRIDE = 1_000_003  # envs.scripted_demos.SEED_STRIDE: seeds of task i are i * SEED_STRIDE + attempt
DEMO_TASKS = [
    ("libero_goal", 0),     # open the middle drawer (drawer: open)
    ("libero_goal", 5),     # push the plate to the front of the stove (drag)
    ("libero_10", 3),       # bowl into the bottom drawer and close it (pick + place in drawer + drawer close)
    ("libero_10", 9),       # mug into the microwave and close it (microwave insertion + door close)
    ("libero_object", 0),   # alphabet soup into the basket (pick)
    ("libero_spatial", 0),  # black bowl onto the plate (pick)
]
DEMO_ATTEMPTS = (0, 1)
REPLAY_TASKS = [("libero_goal", 0), ("libero_object", 0)]  # eval_replay: planned demos of (a) replayed
EVAL_TASKS = {"libero_goal": [0], "libero_object": [0]}
EVAL_EPISODES, EVAL_MAX_STEPS = 5, 60
TINY_OVERRIDES = [
    "model.image_size=32", "model.resnet_widths=[8,16,32,64]", "model.d_model=64", "model.decoder_layers=2",
    "train.num_workers=0", "train.wandb_mode=disabled", "train.batch_size=8", "train.warmup_steps=5",
]
TRAIN_STEPS = 200
SERVE_SEED = 1234


def log(msg: str) -> None:
    print(f"[capture {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sha(*arrays) -> str:
    import numpy as np

    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def weights_sha(state: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(k.encode() + str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.view(-1).view(__import__("torch").uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ----------------------------------------------------------------------------- a. scripted demos
def capture_demos(out: dict) -> None:
    import numpy as np

    get_task = sym("get_task", *M["libero"])
    make_planning_env = sym("make_planning_env", *M["demos"])
    plan_attempt = sym("plan_attempt", *M["demos"])
    for suite, index in DEMO_TASKS:
        task = get_task(suite, index)
        t0 = time.time()
        env = make_planning_env(task)  # one planning env per task for all its seeds, as the generator does
        out[f"timing.demo.{suite}.{index}.make_env_s"] = time.time() - t0
        try:
            for attempt_no in DEMO_ATTEMPTS:
                seed = task.index * SEED_STRIDE + attempt_no
                t0 = time.time()
                a = plan_attempt(env, task, seed)
                key = f"demo.{suite}.{index}.seed{seed}"
                out[f"{key}.actions"] = np.asarray(a.actions, np.float64)
                out[f"{key}.success"] = np.bool_(a.success)
                out[f"{key}.steps"] = np.int64(a.steps)
                out[f"{key}.failure"] = np.str_(a.failure or "")
                out[f"{key}.init_state"] = np.asarray(a.init_state, np.float64)
                out[f"timing.{key}.s"] = time.time() - t0
                log(f"demo {suite} {index} ({task.name}) seed {seed}: success={a.success} steps={a.steps} "
                    f"failure={a.failure!r} {time.time() - t0:.1f}s")
        finally:
            env.close()


# ----------------------------------------------------------------------------- b. training
def capture_train(out: dict, work: Path) -> Path:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    write_synthetic_suite = sym("write_synthetic_suite", *M["dataset"])
    LiberoDataset = sym("LiberoDataset", *M["dataset"])
    compose_config = sym("compose_config", *M["training_config"])
    split_config = sym("split_config", *M["training_config"])
    train = sym("train", *M["training"])
    LanguageEncoder = sym("LanguageEncoder", *M["language"])

    folder = work / "synthetic" / "libero_syn"
    write_synthetic_suite(folder, n_tasks=2, n_demos=2, length=20, size=32)
    ds = LiberoDataset(folder, augment=True, progress=False)  # seeded DrQ shifts, as the script trains
    p, t, loss, bw, mult = split_config(compose_config(
        [*TINY_OVERRIDES, "loss=energy", f"train.steps={TRAIN_STEPS}", "train.log_every=1",
         "train.checkpoint_every=100000"]))
    run = work / "run"
    t0 = time.time()
    result = train(p, t, loss, ds, run, language=LanguageEncoder(), progress=False, bandwidth=bw,
                   bandwidth_multiplier=mult)
    out["timing.train.s"] = time.time() - t0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    out["train.step"] = np.array([r["step"] for r in rows], np.int64)
    for k in ("loss", "confinement", "interaction", "grad_norm", "lr", "epoch"):
        out[f"train.{k}"] = np.array([r[k] for r in rows], np.float64)
    out["train.result_step"] = np.int64(result.step)
    out["train.config"] = np.str_(json.dumps({"policy": repr(p), "train": repr(t), "loss": repr(loss),
                                              "bandwidth": bw, "multiplier": mult}, sort_keys=True))
    from safetensors.torch import load_file

    out["train.ema_weights_sha256"] = np.str_(weights_sha(load_file(run / "policy" / "model.safetensors")))
    log(f"train: {len(rows)} logged steps, loss {rows[0]['loss']:.4f} -> {rows[-1]['loss']:.4f}, "
        f"{out['timing.train.s']:.1f}s")
    return run


def load_trained(run: Path):
    DiffusionPolicy = sym("DiffusionPolicy", *M["policy"])
    return DiffusionPolicy.from_pretrained(run / "policy")


def seed_of(*parts) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & ((1 << 63) - 1)


# ----------------------------------------------------------------------------- c. evaluation
class DeterministicPolicy:
    """The trained DiffusionPolicy, one predict per observation with a generator seeded by
    (suite, task, episode, t): independent of how the harness batches workers together.
    Records every observation it sees and the chunk it returns."""

    uses_episode_info = True

    def __init__(self, policy) -> None:
        self.policy = policy
        self.language = policy.language
        self.seen: list[tuple] = []

    def reset(self) -> None:
        self.policy.reset()

    def predict(self, obs, steps: int = 2, churn: float = 0.0):
        import numpy as np
        import torch

        chunks = []
        for b, info in enumerate(obs["episode_info"]):
            one = {k: (v[b:b + 1] if hasattr(v, "shape") else [v[b]]) for k, v in obs.items() if k != "episode_info"}
            key = (info["suite"], int(info["task_index"]), int(info["episode"]), int(info["t"]))
            g = torch.Generator().manual_seed(seed_of(*key))
            chunk = np.asarray(self.policy.predict(one, steps=steps, churn=churn, generator=g), np.float32)
            self.seen.append((key, one, chunk[0]))
            chunks.append(chunk)
        return np.concatenate(chunks, axis=0)


def capture_eval(out: dict, run: Path, work: Path) -> None:
    import numpy as np

    EvalConfig = sym("EvalConfig", *M["evaluate"])
    run_evaluation = sym("run_evaluation", *M["evaluate"])
    policy = DeterministicPolicy(load_trained(run))
    cfg = EvalConfig(suites=list(EVAL_TASKS), out_dir=str(work / "eval"), tasks=dict(EVAL_TASKS),
                     episodes=EVAL_EPISODES, workers=2, steps=2, fast_render=True, resolution=32,
                     max_steps=EVAL_MAX_STEPS, progress=False, policy="capture", producer={"kind": "capture"})
    t0 = time.time()
    summary = run_evaluation(policy, cfg)
    out["timing.eval.s"] = time.time() - t0
    recs = [json.loads(line) for line in (work / "eval" / "episodes.jsonl").read_text().splitlines() if line.strip()]
    recs.sort(key=lambda r: (r["suite"], r["task_index"], r["episode"]))
    out["eval.episode_id"] = np.array([f"{r['suite']}:{r['task_index']}:{r['episode']}" for r in recs])
    out["eval.success"] = np.array([bool(r["success"]) for r in recs])
    out["eval.length"] = np.array([int(r["length"]) for r in recs], np.int64)
    out["eval.env_steps"] = np.array([int(r.get("env_steps", -1)) for r in recs], np.int64)
    out["eval.outcome"] = np.array([str(r.get("outcome")) for r in recs])
    out["eval.grasps"] = np.array([int(r.get("grasps") or 0) for r in recs], np.int64)
    out["eval.lift_m"] = np.array([np.nan if r.get("lift_m") is None else float(r["lift_m"]) for r in recs])
    out["eval.error"] = np.array([str(r.get("error")) for r in recs])
    out["eval.task"] = np.array([str(r.get("task")) for r in recs])
    out["eval.summary_success_rate"] = np.float64(summary.get("success_rate", np.nan))
    seen = sorted(policy.seen, key=lambda s: s[0])
    out["eval.obs_id"] = np.array([f"{k[0]}:{k[1]}:{k[2]}:{k[3]}" for k, _, _ in seen])
    out["eval.obs_joint_states"] = np.stack([o["joint_states"][0] for _, o, _ in seen]).astype(np.float32)
    out["eval.obs_gripper_states"] = np.stack([o["gripper_states"][0] for _, o, _ in seen]).astype(np.float32)
    out["eval.obs_image_sha256"] = np.array([sha(o["agentview_rgb"], o["eye_in_hand_rgb"]) for _, o, _ in seen])
    out["eval.obs_language"] = np.array([o["language"][0] for _, o, _ in seen])
    out["eval.actions"] = np.stack([c for _, _, c in seen]).astype(np.float32)
    log(f"eval: {len(recs)} episodes, outcomes {sorted(set(out['eval.outcome'].tolist()))}, "
        f"{len(seen)} policy calls, {out['timing.eval.s']:.1f}s")


def capture_eval_replay(out: dict, work: Path) -> None:
    """The harness replaying planned demonstrations of (a) from their own first states (no wait
    steps, envs' ReplayPolicy on an HDF5 file of the planned actions): episodes that succeed."""
    import h5py
    import numpy as np

    EvalConfig = sym("EvalConfig", *M["evaluate"])
    run_evaluation = sym("run_evaluation", *M["evaluate"])
    ReplayPolicy = sym("ReplayPolicy", *M["eval_policies"])
    tasks, files, inits = {}, {}, {}
    for suite, index in REPLAY_TASKS:
        seeds = [index * SEED_STRIDE + a for a in DEMO_ATTEMPTS]
        path = work / "replay" / f"{suite}_{index}.hdf5"
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as f:
            for i, seed in enumerate(seeds):
                f.create_dataset(f"data/demo_{i}/actions", data=out[f"demo.{suite}.{index}.seed{seed}.actions"])
        files[(suite, index)] = ReplayPolicy(path)
        inits[(suite, index)] = [out[f"demo.{suite}.{index}.seed{seed}.init_state"] for seed in seeds]
        tasks.setdefault(suite, []).append(index)

    class PerTask:  # the replay file of each episode's task
        uses_episode_info = True

        def reset(self) -> None:
            pass

        def predict(self, obs, steps: int = 2, churn: float = 0.0):
            rows = []
            for b, info in enumerate(obs["episode_info"]):
                one = {"language": [obs["language"][b]], "episode_info": [info]}
                rows.append(files[(info["suite"], int(info["task_index"]))].predict(one, steps, churn))
            return np.concatenate(rows, axis=0)

    longest = max(len(out[k]) for k in out if k.startswith("demo.") and k.endswith(".actions"))
    cfg = EvalConfig(suites=list(tasks), out_dir=str(work / "eval_replay"), tasks=tasks, episodes=len(DEMO_ATTEMPTS),
                     workers=2, steps=2, fast_render=True, resolution=32, max_steps=longest + 16, wait_steps=0,
                     progress=False, policy="replay", producer={"kind": "capture-replay"})
    t0 = time.time()
    run_evaluation(PerTask(), cfg, init_state_fn=lambda s, ti, e: inits[(s, ti)][e])
    out["timing.eval_replay.s"] = time.time() - t0
    recs = [json.loads(line) for line in (work / "eval_replay" / "episodes.jsonl").read_text().splitlines() if line.strip()]
    recs.sort(key=lambda r: (r["suite"], r["task_index"], r["episode"]))
    out["eval_replay.episode_id"] = np.array([f"{r['suite']}:{r['task_index']}:{r['episode']}" for r in recs])
    out["eval_replay.success"] = np.array([bool(r["success"]) for r in recs])
    out["eval_replay.length"] = np.array([int(r["length"]) for r in recs], np.int64)
    out["eval_replay.env_steps"] = np.array([int(r.get("env_steps", -1)) for r in recs], np.int64)
    out["eval_replay.outcome"] = np.array([str(r.get("outcome")) for r in recs])
    out["eval_replay.grasps"] = np.array([int(r.get("grasps") or 0) for r in recs], np.int64)
    out["eval_replay.lift_m"] = np.array([np.nan if r.get("lift_m") is None else float(r["lift_m"]) for r in recs])
    out["eval_replay.error"] = np.array([str(r.get("error")) for r in recs])
    log(f"eval_replay: {[(r['suite'], r['task_index'], r['episode'], r['success'], r['length'], r.get('outcome')) for r in recs]}"
        f" {out['timing.eval_replay.s']:.1f}s")


# ----------------------------------------------------------------------------- d. serving
class FixedGeneratorPolicy:
    """The trained policy behind the server, sampling with a fresh fixed generator per call."""

    def __init__(self, policy) -> None:
        self.policy = policy
        self.language = policy.language

    def predict(self, obs, steps: int = 2, churn: float = 0.0):
        import torch

        return self.policy.predict(obs, steps=steps, churn=churn, generator=torch.Generator().manual_seed(SERVE_SEED))


def fixed_obs(openpi: bool = False) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    wrist = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    joints, grip = rng.normal(size=7).astype(np.float32), rng.normal(size=2).astype(np.float32)
    prompt = "synthetic task 1: move the square"
    if openpi:
        return {"observation/image": img, "observation/wrist_image": wrist,
                "observation/state": np.concatenate([joints, grip]), "prompt": prompt}
    return {"agentview_rgb": img, "eye_in_hand_rgb": wrist, "joint_states": joints, "gripper_states": grip,
            "language": prompt}


def capture_serve(out: dict, run: Path) -> None:
    import numpy as np
    import torch

    PolicyServer = sym("PolicyServer", *M["serving"])
    PolicyClient = sym("PolicyClient", *M["client"])
    policy = load_trained(run)
    server = PolicyServer(FixedGeneratorPolicy(policy), steps=2, port=0, host="127.0.0.1",
                          metadata={"image_size": 32})
    t0 = time.time()
    server.start_in_thread()
    out["timing.serve.start_s"] = time.time() - t0
    try:
        with PolicyClient("127.0.0.1", server.port) as client:
            meta = client.get_server_metadata()
            for name, openpi in (("package", False), ("openpi", True)):
                t0 = time.time()
                reply = client.infer(fixed_obs(openpi))
                out[f"timing.serve.{name}.infer_s"] = time.time() - t0
                acts = np.asarray(reply["actions"])
                out[f"serve.{name}.actions"] = acts
                out[f"serve.{name}.dtype"] = np.str_(str(acts.dtype))
                out[f"serve.{name}.shape"] = np.array(acts.shape, np.int64)
                out[f"serve.{name}.reply_keys"] = np.str_(json.dumps(sorted(reply)))
    finally:
        server.stop()
    meta = {k: v for k, v in meta.items()}
    out["serve.metadata"] = np.str_(json.dumps(meta, sort_keys=True, default=str))
    o = fixed_obs()
    batch = {k: (np.stack([v]) if isinstance(v, np.ndarray) else [v]) for k, v in o.items()}
    direct = policy.predict(batch, 2, generator=torch.Generator().manual_seed(SERVE_SEED))
    out["serve.direct_predict"] = np.asarray(direct)
    out["serve.server_equals_direct"] = np.bool_(np.array_equal(np.asarray(direct)[0], out["serve.package.actions"]))
    log(f"serve: actions {out['serve.package.actions'].shape} {out['serve.package.dtype']}, "
        f"server == direct predict: {bool(out['serve.server_equals_direct'])}, "
        f"openpi == package: {np.array_equal(out['serve.openpi.actions'], out['serve.package.actions'])}")


# ----------------------------------------------------------------------------- main
def isolate(repo: Path) -> None:
    def other_checkout(p: str) -> bool:  # a folder holding another copy of the package
        return (Path(p or ".") / "policy" / "__init__.py").is_file() and Path(p or ".").resolve() != repo.resolve()

    sys.path[:] = [str(repo)] + [p for p in sys.path if p not in ("", ".", str(repo)) and not other_checkout(p)]
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")
                        and "__editable__" not in repr(f)]
    os.environ["PYTHONPATH"] = str(repo)  # spawned workers (multiprocessing copies sys.path as well)
    os.chdir(repo)


def check_origin(repo: Path) -> list[str]:
    bad = []
    for name, mod in sorted(sys.modules.items()):
        if name.split(".")[0] in ("policy", "envs"):
            f = getattr(mod, "__file__", None)
            if f and not Path(f).resolve().is_relative_to(repo):
                bad.append(f"{name}: {f}")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--only", default="demos,train,eval,eval_replay,serve", help="comma-separated sections (debugging)")
    args = ap.parse_args()
    repo, out_path = args.repo.resolve(), args.out.resolve()
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    isolate(repo)

    import numpy as np

    imp("envs")  # headless rendering defaults before mujoco / robosuite
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    np.random.seed(0)
    out: dict = {}
    t_all = time.time()
    errors: dict[str, str] = {}

    def section(name: str, fn, *args):
        """Run one section; an exception is recorded as ``<name>.error`` (compare.py shows it) and
        the capture goes on with the other sections."""
        t0 = time.time()
        try:
            return fn(*args)
        except Exception:  # noqa: BLE001 - recorded, reported, exit status 3
            import traceback

            errors[name] = traceback.format_exc()
            out[f"{name}.capture_error"] = np.str_(errors[name])
            log(f"ERROR in section {name}:\n{errors[name]}")
            return None
        finally:
            out[f"timing.section.{name}_s"] = time.time() - t0

    with tempfile.TemporaryDirectory(prefix="house_capture_") as tmp:
        work = Path(tmp)
        if "demos" in sections:
            section("demo", capture_demos, out)
        run = None
        if sections & {"train", "eval", "serve"}:
            run = section("train", capture_train, out, work)
        if "eval" in sections:
            if run is None:
                out["eval.capture_error"] = np.str_("not run: the train section failed")
            else:
                section("eval", capture_eval, out, run, work)
        if "eval_replay" in sections and "demos" in sections:
            if "demo" in errors:
                out["eval_replay.capture_error"] = np.str_("not run: the demo section failed")
            else:
                section("eval_replay", capture_eval_replay, out, work)
        if "serve" in sections:
            if run is None:
                out["serve.capture_error"] = np.str_("not run: the train section failed")
            else:
                section("serve", capture_serve, out, run)
    out["timing.total_s"] = time.time() - t_all
    bad = check_origin(repo)
    out["meta.repo"] = np.str_(str(repo))
    out["meta.resolved"] = np.str_(json.dumps(RESOLVED, sort_keys=True))
    out["meta.sections"] = np.str_(",".join(sorted(sections)))
    out["meta.foreign_modules"] = np.str_(json.dumps(bad))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out_path, **out)
    log(f"wrote {out_path} ({len(out)} arrays) in {out['timing.total_s']:.1f}s")
    for k, v in sorted(RESOLVED.items()):
        log(f"  resolved {k} <- {v}")
    if bad:
        log("ERROR: modules loaded from outside the repo: " + ", ".join(bad))
        return 2
    if errors:
        log(f"ERROR: sections failed: {sorted(errors)} (recorded as <section>.capture_error in the npz)")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
