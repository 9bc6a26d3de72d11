"""Multi-node training with torchrun (docs/cluster.md): two "nodes" of one process each on this
machine, joined by a c10d rendezvous on 127.0.0.1 (gloo, loopback only), train the tiny policy of
tests/policy/test_ddp.py on the synthetic suite. Both ranks run, rank 0 alone reports and writes
the checkpoints, and the run is the single-node two-process run of the same config, weight for
weight: the same global batch, shards and all-reduce, whichever machine a rank is on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from test_ddp import REPO, TINY_OVERRIDES, _free_port, synthetic_suite  # noqa: F401 (synthetic_suite: a fixture)

OVERRIDES = [*TINY_OVERRIDES, "train.steps=4", "train.log_every=1", "train.checkpoint_every=2", "loss.population=2",
             "train.batch_size=4"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", **({"GLOO_SOCKET_IFNAME": "lo"} if sys.platform.startswith("linux") else {})}


def _train_args(suite: Path, run_dir: Path, resume: bool = False) -> list[str]:
    script = str(REPO / "scripts" / "train_policy.py")
    if resume:  # what docs/cluster.md says: the same command on every node, with resume=true and more steps
        return [script, "resume=true", f"run_dir={run_dir}", "train.steps=6"]
    return [script, f"suite.data_dirs=[{suite}]", *OVERRIDES, f"run_dir={run_dir}"]


def _two_nodes(suite: Path, run_dir: Path, resume: bool = False) -> list[tuple[str, str]]:
    """torchrun on two "nodes" of one process each, rendezvous c10d on loopback: their (stdout, stderr)."""
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{_free_port()}", "--rdzv-id=test-multinode", "--local-addr=127.0.0.1",
            *_train_args(suite, run_dir, resume)]
    procs = [subprocess.Popen(node, cwd=run_dir.parent, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    try:
        outs = [p.communicate(timeout=500) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return outs


def _one_node(suite: Path, run_dir: Path, resume: bool = False) -> None:
    """torchrun on one node of two processes."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
           f"--master-port={_free_port()}", *_train_args(suite, run_dir, resume)]
    res = subprocess.run(cmd, cwd=run_dir.parent, env=ENV, capture_output=True, text=True, timeout=500)
    assert res.returncode == 0, res.stderr[-3000:]


def _weights(run_dir: Path) -> dict:
    return load_file(str(run_dir / "policy" / "model.safetensors"))


@pytest.mark.timeout(600)
def test_two_nodes_of_one_process_train_as_one_node_of_two(tmp_path: Path, synthetic_suite: Path) -> None:
    """4 steps on two nodes == 4 steps on one node of two processes; so are both resumed to 6 steps."""
    two, one = tmp_path / "two_nodes", tmp_path / "one_node"
    outs = _two_nodes(synthetic_suite, two)
    # both ranks loaded the data and trained; rank 0 alone reports, logs and checkpoints
    assert all(f"80 samples from 2 files, 2 tasks -> {two}" in err for _, err in outs)
    assert sorted(out.count("done: 4 steps") for out, _ in outs) == [0, 1]
    assert [json.loads(x)["step"] for x in (two / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]
    _one_node(synthetic_suite, one)
    for resumed in (False, True):
        a, b = _weights(two), _weights(one)
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), f"two nodes != one node (resumed: {resumed})"
        losses = [[json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (two, one)]
        assert losses[0] == losses[1] and len(losses[0]) == (6 if resumed else 4)
        if not resumed:
            outs = _two_nodes(synthetic_suite, two, resume=True)
            assert sorted(out.count("done: 6 steps") for out, _ in outs) == [0, 1]
            _one_node(synthetic_suite, one, resume=True)
