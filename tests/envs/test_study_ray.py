"""The study on a Ray cluster (`run_study.py ... ray=<address>`, envs/study/cluster.py) on a real
loopback cluster of two nodes that the test starts and stops itself (envs/evaluation/ray_local.py).
The jobs are the study's own plan with a fake command in place of `python -m <module>`: it writes
what training or evaluation would (tests/envs/test_study.py's fake_run / fake_eval) and which
process started it. No training, no rollouts."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

from test_study import SMALL, SUITE, fake_run, quick, run_study, write_demo_file

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason='ray is not installed (pip install -e ".[cluster]"); the study on Ray is not tested')

FAKE = f"""
import json, os, sys
from pathlib import Path
sys.path.insert(0, {str(HERE)!r})
module, args = sys.argv[1], sys.argv[2:]
parent = Path(f"/proc/{{os.getppid()}}/cmdline").read_bytes().replace(b"\\0", b" ").decode()
marker = json.dumps({{"module": module, "parent": parent, "pid": os.getpid(), "omp": os.environ.get("OMP_NUM_THREADS")}})
if module == "envs.training_cli":
    from test_study import fake_run
    kv = dict(a.split("=", 1) for a in args)
    fake_run(Path(kv["run_dir"]), int(kv["train.steps"]))
    (Path(kv["run_dir"]) / "ran_by.json").write_text(marker)
else:
    from envs.evaluation.results import weights_identity
    from test_study import fake_eval
    opt = dict(zip(args[::2], args[1::2]))
    out = Path(opt["--out"])
    fake_eval(out, opt["--suites"], int(opt["--steps"]), [[True, False, True, False]],
              producer=weights_identity(Path(opt["--checkpoint"])))
    (out / "ran_by.json").write_text(marker)
print("fake", module, "finished")
"""


@pytest.fixture
def cluster() -> Iterator[object]:
    """Two loopback nodes of 4 CPUs; this process set up as their driver; all restored at the end."""
    import ray
    from ray._private import ray_constants

    from envs.evaluation.ray_local import LocalCluster, prepare_driver

    saved, enable = dict(os.environ), ray_constants.ENABLE_RAY_CLUSTER
    c = LocalCluster((4, 4))
    try:
        c.start()
        prepare_driver(c.env)
        yield c
    finally:
        ray.shutdown()
        c.stop()
        os.environ.clear()
        os.environ.update(saved)
        prepare_driver({})
        ray_constants.ENABLE_RAY_CLUSTER = enable


@pytest.mark.timeout(600)
def test_study_jobs_run_as_ray_tasks_and_a_rerun_skips_them(tmp_path, cluster, monkeypatch, capsys) -> None:
    """ray=<address>: the training left and both evaluations run as Ray tasks (their parent is a
    Ray worker; the evaluations, 3 CPUs each on nodes of 4, on both nodes); the training finished
    earlier is skipped; the table is aggregated; a rerun runs nothing. Jobs that fit on no node and
    device=cuda without GPUs are one-line errors before anything runs."""
    import envs.study.runner as runner
    from envs.libero.suites import list_tasks
    from envs.scripted.demos import task_file_name

    fake = tmp_path / "fake_job.py"
    fake.write_text(FAKE)
    monkeypatch.setattr(runner, "_py", lambda module: [sys.executable, str(fake), module])
    cfg = quick(tmp_path)
    energy, mse = cfg.models()
    write_demo_file(tmp_path / "data" / SUITE / task_file_name(list_tasks(SUITE)[0].name), 5, 64, True)
    fake_run(cfg.run_dir(energy), 300)  # trained earlier
    argv = ["preset=quick", f"data_root={tmp_path}/data", f"runs_root={tmp_path}/runs", f"eval_root={tmp_path}/eval",
            f"results={tmp_path}/libero.json", *SMALL, f"ray={cluster.address}"]  # type: ignore[attr-defined]

    rc, out, err = run_study(argv, capsys)
    assert rc == 0, out[-3000:] + err[-3000:]
    assert f"Ray: connected to the cluster at {cluster.address} (2 nodes, 8 CPUs, 0 GPUs)" in out  # type: ignore[attr-defined]
    assert f"skip train {energy.run}" in out and out.count("$ ") == 3
    assert "(Ray task: 1 CPU; output: " in out and out.count("(Ray task: 3 CPU; output: ") == 2
    ran = [json.loads((cfg.run_dir(mse) / "ran_by.json").read_text())]
    ran += [json.loads((cfg.eval_dir(m, 2) / "ran_by.json").read_text()) for m in (energy, mse)]
    assert [r["module"] for r in ran] == ["envs.training_cli", "envs.evaluation.cli", "envs.evaluation.cli"]
    assert all(r["parent"].startswith("ray::") and r["omp"] == "1" for r in ran), ran
    assert not (cfg.run_dir(energy) / "ran_by.json").exists()
    assert json.loads((cfg.run_dir(mse) / "study_spec.json").read_text())["machine"].startswith("Ray cluster (2 nodes")
    nodes = {ln.split(" node ")[-1] for ln in out.splitlines() if ln.startswith("done eval ")}
    assert len(nodes) == 2  # 3 CPUs each on nodes of 4: one evaluation per node
    assert "fake envs.training_cli finished" in (cfg.run_dir(mse) / "study_train.log").read_text()
    assert "| energy_lam1_beta1 | 50.0 [15-85] n=4 |" in out and "| mse | 50.0 [15-85] n=4 |" in out
    import ray

    assert not ray.is_initialized()  # the study left the cluster it joined

    rc, out, err = run_study(argv, capsys)
    assert rc == 0, err
    assert "$ " not in out and out.count("skip ") == 1 + 2 + 2
    assert [json.loads((cfg.eval_dir(m, 2) / "ran_by.json").read_text())["pid"] for m in (energy, mse)] == \
        [r["pid"] for r in ran[1:]]

    for extra, line in [("workers=4", "error: an evaluation job needs 5 CPUs (workers=4 simulator workers + 1 for the "
                                      "policy) and the largest node of the Ray cluster has 4; lower workers= or add "
                                      "bigger nodes"),
                        ("device=cuda", "error: device=cuda but the Ray cluster has no GPUs; use device=cpu or add "
                                        "GPU nodes")]:
        rc, out, err = run_study(argv + [extra], capsys)
        assert (rc, err.splitlines()) == (2, [line]) and "$ " not in out and "skip" not in out


def test_study_ray_errors_are_one_line(tmp_path, monkeypatch, capsys) -> None:
    """Ray missing names the extra; an address nothing answers at is one line; nothing runs."""
    from envs.evaluation.ray_local import free_port

    argv = ["preset=quick", f"data_root={tmp_path}/data", f"runs_root={tmp_path}/runs", f"eval_root={tmp_path}/eval",
            f"results={tmp_path}/libero.json", *SMALL]
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "ray", None)  # import ray -> ImportError
        rc, out, err = run_study(argv + ["ray=auto"], capsys)
    assert (rc, err.splitlines()) == (2, ['error: Ray is not installed; install the cluster extra: pip install -e ".[cluster]"'])
    port = free_port()
    rc, out, err = run_study(argv + [f"ray=127.0.0.1:{port}"], capsys)
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: no Ray cluster reachable at 127.0.0.1:{port} (")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()
    assert quick(tmp_path, "ray=off").ray == "" and quick(tmp_path, "ray=auto").ray == "auto"
