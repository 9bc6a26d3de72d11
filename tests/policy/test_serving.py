"""A real policy server on loopback: protocol, bad input, auth, batching, shutdown."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest

from policy.config import PolicyConfig
from policy.policy import DiffusionPolicy
from policy.serving import ActionChunker, PolicyClient, PolicyServer
from policy.wire import packb, unpackb

TINY = dict(image_size=32, resnet_widths=(8, 16, 32, 64), d_model=64, n_heads=4, encoder_layers=1, decoder_layers=2, dropout=0.0)
ROOT = Path(__file__).resolve().parents[2]


def good_obs(size: int = 32, openpi: bool = False, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    wrist = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    if openpi:
        return {"observation/image": img, "observation/wrist_image": wrist,
                "observation/state": rng.normal(size=9).astype(np.float32), "prompt": "put the bowl on the plate"}
    return {"agentview_rgb": img, "eye_in_hand_rgb": wrist, "joint_states": rng.normal(size=7).astype(np.float32),
            "gripper_states": rng.normal(size=2).astype(np.float32), "language": "put the bowl on the plate"}


@pytest.fixture(scope="module")
def policy() -> DiffusionPolicy:
    return DiffusionPolicy(PolicyConfig(suites=("libero_object",), **TINY))


@pytest.fixture(scope="module")
def server(policy):
    srv = PolicyServer(policy, steps=2, port=0, max_message_bytes=64 * 1024, metadata={"image_size": 32})
    srv.start_in_thread()
    yield srv
    srv.stop()


def test_metadata_and_actions_with_both_key_sets(server, policy):
    with PolicyClient("127.0.0.1", server.port) as client:
        meta = client.get_server_metadata()
        assert meta["action_dim"] == 7 and meta["chunk_length"] == 8 and meta["steps"] == 2 and meta["image_size"] == 32
        for openpi in (False, True):
            reply = client.infer(good_obs(openpi=openpi))
            assert reply["actions"].shape == (8, 7) and reply["actions"].dtype == np.float32
            assert np.isfinite(reply["actions"]).all()
            assert reply["server_timing"]["infer_ms"] > 0 and reply["server_timing"]["batch_size"] >= 1
        # the server runs the same policy as an in-process call would
        assert policy.predict({k: (np.stack([v]) if isinstance(v, np.ndarray) else [v]) for k, v in good_obs().items()}, 2).shape == (1, 8, 7)


def _malformed_frames() -> list[tuple[str, object]]:
    rng = np.random.default_rng(1)
    frames: list[tuple[str, object]] = []
    for i in range(40):  # random bytes
        frames.append(("random bytes", rng.integers(0, 256, int(rng.integers(1, 300)), dtype=np.uint8).tobytes()))
    frames += [("text frame", "hello"), ("text json", '{"prompt": "x"}'), ("empty", b""), ("truncated", packb(good_obs())[:50])]
    for value in (1, "obs", [1, 2, 3], None, 3.5, True):
        frames.append(("wrong top-level type", packb(value)))
    base = good_obs()
    mutations = {
        "missing key": lambda o: o.pop("language"),
        "missing image": lambda o: o.pop("agentview_rgb"),
        "unknown key": lambda o: o.__setitem__("observation/foo", 1),
        "float image": lambda o: o.__setitem__("agentview_rgb", o["agentview_rgb"].astype(np.float32)),
        "gray image": lambda o: o.__setitem__("agentview_rgb", o["agentview_rgb"][..., 0]),
        "tiny image": lambda o: o.__setitem__("eye_in_hand_rgb", o["eye_in_hand_rgb"][:4, :4]),
        "4 channels": lambda o: o.__setitem__("agentview_rgb", np.zeros((32, 32, 4), np.uint8)),
        "short joints": lambda o: o.__setitem__("joint_states", np.zeros(6, np.float32)),
        "nan joints": lambda o: o.__setitem__("joint_states", np.full(7, np.nan, np.float32)),
        "inf gripper": lambda o: o.__setitem__("gripper_states", np.array([np.inf, 0], np.float32)),
        "string joints": lambda o: o.__setitem__("joint_states", "1,2,3"),
        "int language": lambda o: o.__setitem__("language", 5),
        "empty language": lambda o: o.__setitem__("language", "   "),
        "image as list": lambda o: o.__setitem__("agentview_rgb", o["agentview_rgb"].tolist()),
        "both key sets": lambda o: o.__setitem__("prompt", "again"),
        "complex state": lambda o: o.__setitem__("joint_states", {b"__ndarray__": True, b"data": b"\0" * 112, b"dtype": "<c16", b"shape": [7]}),
        "object dtype": lambda o: o.__setitem__("joint_states", {b"__ndarray__": True, b"data": b"\0" * 56, b"dtype": "|O", b"shape": [7]}),
        "short buffer": lambda o: o.__setitem__("joint_states", {b"__ndarray__": True, b"data": b"\0" * 3, b"dtype": "<f4", b"shape": [7]}),
        "bad shape": lambda o: o.__setitem__("joint_states", {b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": "x"}),
        "bad dtype": lambda o: o.__setitem__("joint_states", {b"__ndarray__": True, b"data": b"", b"dtype": "nope", b"shape": [0]}),
    }
    for name, mutate in mutations.items():
        for _ in range(3):
            obs = dict(base)
            mutate(obs)
            frames.append((name, msgpack.packb(obs, default=lambda a: {b"__ndarray__": True, b"data": a.tobytes(), b"dtype": a.dtype.str, b"shape": a.shape}, use_bin_type=True)))
    for _ in range(3):
        frames.append(("oversize", packb({**base, "agentview_rgb": np.zeros((200, 200, 3), np.uint8)})))
    return frames


def test_malformed_frames_get_short_errors_and_the_server_keeps_serving(server):
    from websockets.sync.client import connect

    frames = _malformed_frames()
    assert len(frames) >= 100
    errors_before = server.stats["errors"]
    with connect(f"ws://127.0.0.1:{server.port}", max_size=None) as ws:
        unpackb(ws.recv())  # metadata
        for name, frame in frames:
            ws.send(frame)
            reply = ws.recv(timeout=30)
            assert isinstance(reply, str), f"{name}: expected a text error frame"
            assert reply.startswith("bad request:") and len(reply) < 400 and "Traceback" not in reply, (name, reply)
        ws.send(packb(good_obs()))
        reply = unpackb(ws.recv(timeout=30))
        assert reply["actions"].shape == (8, 7)
    assert server.stats["errors"] - errors_before == len(frames)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/healthz")
    assert conn.getresponse().status == 200


def test_openpi_client_error_surface_is_runtime_error(server):
    with PolicyClient("127.0.0.1", server.port) as client:
        with pytest.raises(RuntimeError, match="lacks"):
            client.infer({"prompt": "x"})
        assert client.infer(good_obs())["actions"].shape == (8, 7)


def test_api_key_is_checked_at_the_handshake(policy):
    srv = PolicyServer(policy, steps=1, port=0, api_key="s3cret")
    srv.start_in_thread()
    try:
        with pytest.raises(ConnectionError, match="401"):
            PolicyClient("127.0.0.1", srv.port)
        with pytest.raises(ConnectionError, match="401"):
            PolicyClient("127.0.0.1", srv.port, api_key="wrong")
        with PolicyClient("127.0.0.1", srv.port, api_key="s3cret") as client:
            assert client.infer(good_obs())["actions"].shape == (8, 7)
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
    finally:
        srv.stop()


def test_concurrent_clients_are_served_and_batched(server):
    batches_before, requests_before = server.stats["batches"], server.stats["requests"]
    results: list[int] = []

    def run(seed: int) -> None:
        with PolicyClient("127.0.0.1", server.port) as client:
            for i in range(6):
                results.append(client.infer(good_obs(seed=seed * 10 + i))["actions"].shape[0])

    threads = [threading.Thread(target=run, args=(s,)) for s in range(8)]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert results == [8] * 48
    assert server.stats["requests"] - requests_before == 48
    assert server.stats["batches"] - batches_before < 48  # some requests shared a forward pass


class _RecordingPolicy:
    """A BatchPolicy that records the size of every forward pass."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def predict(self, obs, steps=2, churn=0.0):
        self.batches.append(len(obs["language"]))
        return np.zeros((len(obs["language"]), 8, 7), dtype=np.float32)


@pytest.mark.parametrize("window_ms", [0.0, 400.0])
def test_batch_window_gathers_staggered_requests_of_active_clients(window_ms):
    """Requests of active clients that arrive within the window share one forward pass; without it they do not."""
    rec = _RecordingPolicy()
    # no back-off: a warm-up window that happens to wait in vain must not switch waiting off
    srv = PolicyServer(rec, port=0, batch_window_ms=window_ms, window_backoff=0)
    srv.start_in_thread()
    try:
        clients = [PolicyClient("127.0.0.1", srv.port) for _ in range(4)]
        go = threading.Barrier(4)

        def staggered(k: int) -> None:
            go.wait()  # first together: each client becomes active (a request in the last second)
            assert clients[k].infer(good_obs())["actions"].shape == (8, 7)
            go.wait()
            if k == 0:
                rec.batches.clear()
            go.wait()
            time.sleep(0.05 * k)  # then arrivals 0, 50, 100, 150 ms apart
            assert clients[k].infer(good_obs(seed=k))["actions"].shape == (8, 7)

        threads = [threading.Thread(target=staggered, args=(k,)) for k in range(4)]
        [t.start() for t in threads]
        [t.join(30) for t in threads]
        [c.close() for c in clients]
    finally:
        srv.stop()
    assert sum(rec.batches) == 4
    if window_ms:
        assert rec.batches == [4]
    else:
        assert rec.batches == [1, 1, 1, 1]


def test_batch_window_backs_off_for_clients_out_of_step():
    """Clients that never arrive together pay the window once, then not for window_backoff (16) batches."""
    rec = _RecordingPolicy()
    srv = PolicyServer(rec, port=0, batch_window_ms=300.0)
    srv.start_in_thread()
    try:
        a, b = PolicyClient("127.0.0.1", srv.port), PolicyClient("127.0.0.1", srv.port)
        a.infer(good_obs())
        t0 = time.perf_counter()
        b.infer(good_obs())  # a is active but sends nothing: this one waits out the window
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(5):
            a.infer(good_obs())
            b.infer(good_obs())
        rest = (time.perf_counter() - t0) / 10
        a.close(), b.close()
    finally:
        srv.stop()
    assert first >= 0.25 and rest < 0.1
    assert rec.batches == [1] * 12


def test_batch_window_never_delays_a_single_client():
    rec = _RecordingPolicy()
    srv = PolicyServer(rec, port=0, batch_window_ms=1000.0)
    srv.start_in_thread()
    try:
        with PolicyClient("127.0.0.1", srv.port) as client:
            client.infer(good_obs())
            t0 = time.perf_counter()
            for _ in range(5):
                client.infer(good_obs())
            assert (time.perf_counter() - t0) / 5 < 0.5  # far below the 1 s window
    finally:
        srv.stop()


def _counting_infer(calls: list[int]):
    def infer(obs):
        calls.append(obs["t"])
        time.sleep(0.01)
        return {"actions": np.arange(8 * 7, dtype=np.float32).reshape(8, 7) + 100 * len(calls)}

    return infer


def test_action_chunker_hands_out_actions_in_order_and_prefetches():
    calls: list[int] = []
    chunker = ActionChunker(_counting_infer(calls), execute=8, control_hz=20, lead=2)
    actions = [chunker.act({"t": t}) for t in range(16)]
    assert calls[:2] == [0, 5]  # the 2nd chunk was requested at tick 5, when 2 actions were left
    np.testing.assert_array_equal(actions[0], np.arange(7) + 100)
    np.testing.assert_array_equal(actions[8], np.arange(7) + 200)
    sync_calls: list[int] = []
    sync = ActionChunker(_counting_infer(sync_calls), execute=4, lead=0)
    [sync.act({"t": t}) for t in range(8)]
    assert sync_calls == [0, 4]  # lead=0: one synchronous request per chunk, from fresh observations


def test_serve_script_shuts_down_cleanly_on_sigterm(policy, tmp_path):
    policy.save_pretrained(tmp_path / "ckpt")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "serve_policy.py"), "--checkpoint", str(tmp_path / "ckpt"),
                             "--port", "0", "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline, port = time.time() + 180, None
        while time.time() < deadline and port is None:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            if line.startswith("serving"):
                port = int(line.split("ws://")[1].split(" ")[0].rsplit(":", 1)[1])
        assert port is not None, "the server did not announce its port"
        with PolicyClient("127.0.0.1", port) as client:
            assert client.infer(good_obs())["actions"].shape == (8, 7)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "stopped: 1 requests answered" in out
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_script_without_checkpoint_says_how_to_get_one(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "serve_policy.py"), "--checkpoint", str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "no checkpoint" in out.stderr and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.sim
def test_robot_client_example_runs_a_libero_episode_through_the_server(server, capsys):
    """The simulator plays the robot: real env -> openpi keys -> server -> chunker -> env."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("robot_client_example", ROOT / "scripts" / "robot_client_example.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    requests_before = server.stats["requests"]
    rc = mod.main(["--port", str(server.port), "--suite", "libero_object", "--task", "0", "--episodes", "1", "--max-steps", "12"])
    out = capsys.readouterr().out
    assert rc == 0 and "episode 0: failure after 12 steps" in out and "done: 0/1" in out
    assert server.stats["requests"] - requests_before >= 2  # 12 ticks of 8-action chunks


def test_serve_script_picks_the_best_evaluated_steps(tmp_path, monkeypatch):
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("serve_policy", ROOT / "scripts" / "serve_policy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "libero_object" / "20261122-120000"
    (run / "policy").mkdir(parents=True)
    assert mod.best_evaluated_steps(run) is None
    sweep = tmp_path / "eval" / run.name / "steps_sweep.json"
    sweep.parent.mkdir(parents=True)
    sweep.write_text(json.dumps({"1": {"libero_object": 0.5}, "2": {"libero_object": 0.8}, "4": {"libero_object": 0.8}}))
    assert mod.best_evaluated_steps(run) == 2
    assert mod.best_evaluated_steps(run / "policy") == 2
