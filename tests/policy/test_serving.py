"""A real policy server on loopback: protocol, bad input, auth, batching, shutdown."""

from __future__ import annotations

import http.client
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch

from policy.model.config import PolicyConfig
from policy.model.language import LanguageEncoder
from policy.model.policy import DiffusionPolicy
from policy.serving.client import ActionChunker, PolicyClient
from policy.serving.server import PolicyServer
from policy.serving.wire import RequestError, packb, unpackb

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


def _np_default(a):
    return {b"__ndarray__": True, b"data": a.tobytes(), b"dtype": a.dtype.str, b"shape": a.shape}


def _frame(obs) -> bytes:
    return msgpack.packb(obs, default=_np_default, use_bin_type=True)


ACCEPTED = "['agentview_rgb', 'eye_in_hand_rgb', 'joint_states', 'gripper_states', 'language', 'observation/image', 'observation/wrist_image', 'prompt', 'observation/state']"
NOT_MSGPACK_PREFIXES = ("frame is not valid msgpack", "frame is truncated msgpack", "request must be a msgpack map",
                        "msgpack ext types are not accepted", "msgpack map keys must be strings", "a msgpack str is not valid UTF-8",
                        "a msgpack array of", "a msgpack map of", "msgpack containers nest deeper",
                        "frame holds ")
LANGUAGE_MSG = "language/prompt must be a non-empty string of at most 1000 characters"


def _malformed_frames() -> list[tuple[str, object, str]]:
    """(case, frame, the exact error the client must get, after "bad request: ")."""
    rng = np.random.default_rng(1)
    frames: list[tuple[str, object, str]] = []
    for i in range(40):  # random bytes: one of the msgpack-level messages (checked by prefix)
        frames.append(("random bytes", rng.integers(0, 256, int(rng.integers(1, 300)), dtype=np.uint8).tobytes(), "*"))
    text_msg = "text frames are not accepted; send binary msgpack frames (openpi-client format)"
    frames += [("text frame", "hello", text_msg), ("text json", '{"prompt": "x"}', text_msg),
               ("empty", b"", "frame is truncated msgpack; send one complete openpi-client msgpack frame"),
               ("truncated", packb(good_obs())[:50], "frame is truncated msgpack; send one complete openpi-client msgpack frame")]
    for value, name in ((1, "int"), ("obs", "str"), ([1, 2, 3], "list"), (None, "NoneType"), (3.5, "float"), (True, "bool")):
        frames.append(("wrong top-level type", packb(value), f"request must be a msgpack map of observation keys, got {name}"))
    base = good_obs()
    arr = lambda dtype, data, shape: {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}
    mutations = {
        "missing key": (lambda o: o.pop("language"), "observation lacks ['language']; send ['agentview_rgb', 'eye_in_hand_rgb', "
                        "'joint_states', 'gripper_states', 'language'] or the openpi LIBERO keys"),
        "missing image": (lambda o: o.pop("agentview_rgb"), "observation lacks ['agentview_rgb']; send ['agentview_rgb', "
                          "'eye_in_hand_rgb', 'joint_states', 'gripper_states', 'language'] or the openpi LIBERO keys"),
        "unknown key": (lambda o: o.__setitem__("observation/foo", 1), f"unknown observation key(s) 'observation/foo'; accepted: {ACCEPTED}"),
        "float image": (lambda o: o.__setitem__("agentview_rgb", o["agentview_rgb"].astype(np.float32)),
                        "agentview_rgb has dtype float32; send uint8 (H, W, 3) images"),
        "gray image": (lambda o: o.__setitem__("agentview_rgb", o["agentview_rgb"][..., 0].copy()),
                       "agentview_rgb has shape (32, 32); send (H, W, 3) with 16 <= H, W <= 1024"),
        "tiny image": (lambda o: o.__setitem__("eye_in_hand_rgb", o["eye_in_hand_rgb"][:4, :4].copy()),
                       "eye_in_hand_rgb has shape (4, 4, 3); send (H, W, 3) with 16 <= H, W <= 1024"),
        "4 channels": (lambda o: o.__setitem__("agentview_rgb", np.zeros((32, 32, 4), np.uint8)),
                       "agentview_rgb has shape (32, 32, 4); send (H, W, 3) with 16 <= H, W <= 1024"),
        "short joints": (lambda o: o.__setitem__("joint_states", np.zeros(6, np.float32)), "joint_states must hold 7 values, got shape (6,)"),
        "nan joints": (lambda o: o.__setitem__("joint_states", np.full(7, np.nan, np.float32)), "joint_states contains NaN or inf"),
        "one nan joint": (lambda o: o.__setitem__("joint_states", np.array([0, 0, 0, np.nan, 0, 0, 0], np.float32)), "joint_states contains NaN or inf"),
        "inf gripper": (lambda o: o.__setitem__("gripper_states", np.array([np.inf, 0], np.float32)), "gripper_states contains NaN or inf"),
        "string joints": (lambda o: o.__setitem__("joint_states", "1,2,3"), "joint_states must be a numeric array of 7 values, got str"),
        "int language": (lambda o: o.__setitem__("language", 5), LANGUAGE_MSG),
        "empty language": (lambda o: o.__setitem__("language", "   "), LANGUAGE_MSG),
        "long language": (lambda o: o.__setitem__("language", "x" * 1001), LANGUAGE_MSG),
        "image as list": (lambda o: o.__setitem__("agentview_rgb", o["agentview_rgb"].tolist()),
                          "frame holds more than 4096 msgpack objects; send arrays as numpy (openpi msgpack_numpy), not nested lists"),
        "small image as list": (lambda o: o.__setitem__("agentview_rgb", np.zeros((16, 16, 3), np.uint8).tolist()),
                                "agentview_rgb must be a numpy uint8 array (H, W, 3), got list"),
        "both key sets": (lambda o: o.__setitem__("prompt", "again"),
                          "observation gives 'language' twice (package key and openpi key); send one"),
        "complex state": (lambda o: o.__setitem__("joint_states", arr("<c16", b"\0" * 112, [7])),
                          "array dtype complex128 is not allowed; send bool, integer or float arrays"),
        "object dtype": (lambda o: o.__setitem__("joint_states", arr("|O", b"\0" * 56, [7])),
                         "array dtype object is not allowed; send bool, integer or float arrays"),
        "short buffer": (lambda o: o.__setitem__("joint_states", arr("<f4", b"\0" * 3, [7])),
                         "array data holds 3 bytes; shape [7] of float32 needs 28"),
        "bad shape": (lambda o: o.__setitem__("joint_states", arr("<f4", b"", "x")),
                      "bad array shape 'x'; expected a list of at most 8 non-negative integers"),
        "bad dtype": (lambda o: o.__setitem__("joint_states", arr("nope", b"", [0])),
                      "bad array dtype 'nope'; send a numeric numpy dtype such as '<f4' or '|u1'"),
        "missing dtype": (lambda o: o.__setitem__("joint_states", {b"__ndarray__": True, b"data": b"\0" * 56, b"shape": [7]}),
                          "array dtype missing; an __ndarray__ map needs b'dtype' such as '<f4' or '|u1'"),
        "__ndarray__ False": (lambda o: o.__setitem__("joint_states", {**arr("<f8", b"\0" * 56, [7]), b"__ndarray__": False}),
                              "__ndarray__ is False; it marks a numpy array and must be True"),
        "overflowing shape": (lambda o: o.__setitem__("joint_states", arr("<f4", b"", [2**31 - 1] * 8)),
                              "array data holds 0 bytes; shape [2147483647, 2147483647, 2147483647, 2147483647, 2147483647, "
                              "2147483647, 2147483647, 2147483647] of float32 needs 18092513875930788..."),
        "ragged state": (lambda o: (o.clear(), o.update({"observation/image": base["agentview_rgb"], "observation/wrist_image": base["eye_in_hand_rgb"],
                                                         "observation/state": [[1.0], [1.0, 2.0]], "prompt": "x"})),
                         "observation/state must be a flat list or array of 9 numbers; got a ragged or too deeply nested list"),
        "deep state": (lambda o: o.__setitem__("joint_states", [[[[[[[[[[[[[[[[[[1.0]]]]]]]]]]]]]]]]]]),
                       "msgpack containers nest deeper than 16 levels; send a flat observation map"),
        "str and bytes key": (lambda o: o.__setitem__(b"language", "again"),
                              "observation key 'language' given twice (as str and as bytes); send it once"),
        "int key": (lambda o: o.__setitem__(5, "x"), "msgpack map keys must be strings (str or bin)"),
    }
    for name, (mutate, expected) in mutations.items():
        for _ in range(3):
            obs = dict(base)
            mutate(obs)
            frames.append((name, _frame(obs), expected))
    return frames


def _check_error(name: str, reply, expected: str) -> None:
    assert isinstance(reply, str), f"{name}: expected a text error frame"
    assert len(reply) <= 300 and "\n" not in reply and "Traceback" not in reply, (name, reply)
    assert reply.startswith("bad request: "), (name, reply)
    message = reply[len("bad request: "):]
    if expected == "*":
        assert message.startswith(NOT_MSGPACK_PREFIXES), (name, reply)
    else:
        assert message == expected, (name, reply)


def test_malformed_frames_get_their_exact_error_and_the_server_keeps_serving(server, caplog):
    from websockets.sync.client import connect

    frames = _malformed_frames()
    assert len(frames) >= 100
    errors_before = server.stats["errors"]
    with caplog.at_level(logging.INFO), connect(f"ws://127.0.0.1:{server.port}", max_size=None) as ws:
        unpackb(ws.recv())  # metadata
        for name, frame, expected in frames:
            ws.send(frame)
            _check_error(name, ws.recv(timeout=30), expected)
        ws.send(packb(good_obs()))
        reply = unpackb(ws.recv(timeout=30))
        assert reply["actions"].shape == (8, 7)
    assert server.stats["errors"] - errors_before == len(frames)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "client mistakes must not log errors"
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/healthz")
    assert conn.getresponse().status == 200


def test_a_nan_request_does_not_spoil_the_good_requests_batched_with_it():
    """The NaN check in wire refuses the bad one; its batch-mates get actions (a NaN in a batch would fail them all)."""
    srv = PolicyServer(_EchoPolicy(), port=0, batch_window_ms=300.0, window_backoff=0)
    srv.start_in_thread()
    try:
        clients = [PolicyClient("127.0.0.1", srv.port) for _ in range(3)]
        bad = {**good_obs(), "joint_states": np.array([0, 0, np.nan, 0, 0, 0, 0], np.float32)}
        go, replies = threading.Barrier(3), {}

        def run(k: int) -> None:
            go.wait()
            try:
                replies[k] = clients[k].infer(bad if k == 0 else good_obs(seed=k))
            except RuntimeError as e:
                replies[k] = str(e)

        threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
        [t.start() for t in threads]
        [t.join(30) for t in threads]
        [c.close() for c in clients]
    finally:
        srv.stop()
    assert replies[0].endswith("bad request: joint_states contains NaN or inf")
    for k in (1, 2):
        np.testing.assert_array_equal(replies[k]["actions"], _EchoPolicy.expected(good_obs(seed=k)))


def test_hostile_structure_is_refused_before_objects_are_built(server, monkeypatch):
    """Millions of empty maps or deep nesting cost a bounded header scan, not a decode (item 10)."""
    import policy.serving.wire as wire

    built = []
    hook = wire._unpack_hook
    monkeypatch.setattr(wire, "_unpack_hook", lambda obj: (built.append(1), hook(obj))[1])
    many_maps = msgpack.packb([[{}] * 2000 for _ in range(30)])  # 60,000 empty maps in 62 KB
    with pytest.raises(RequestError, match="^frame holds more than 4096 msgpack objects"):
        wire.unpackb(many_maps)
    one_big_array = b"\xdd" + (2**32 - 1).to_bytes(4, "big") + b"\x80" * 1000
    with pytest.raises(RequestError, match="^a msgpack array of 4294967295 entries exceeds the limit of 4096"):
        wire.unpackb(one_big_array)
    deep = b"\x91" * 200 + b"\x80"
    with pytest.raises(RequestError, match="^msgpack containers nest deeper than 16 levels"):
        wire.unpackb(deep)
    assert built == []  # refused by the scan: no map was built
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{server.port}", max_size=None) as ws:
        unpackb(ws.recv())
        ws.send(many_maps)
        assert ws.recv(timeout=30) == ("bad request: frame holds more than 4096 msgpack objects; send arrays as numpy "
                                       "(openpi msgpack_numpy), not nested lists")


def test_a_slow_decode_on_one_connection_does_not_stall_the_others(server, monkeypatch):
    """Frames are decoded off the event loop: while one client's frame is stuck decoding, another is served."""
    import policy.serving.server as serving

    release, entered = threading.Event(), threading.Event()
    real = serving.unpackb

    def slow_unpackb(data, *args, **kwargs):
        if data == b"\xc0":  # the stalling client's frame (msgpack nil)
            entered.set()
            release.wait(30)
        return real(data, *args, **kwargs)

    monkeypatch.setattr(serving, "unpackb", slow_unpackb)
    from websockets.sync.client import connect

    try:
        with connect(f"ws://127.0.0.1:{server.port}", max_size=None) as slow, connect(f"ws://127.0.0.1:{server.port}", max_size=None) as other:
            unpackb(slow.recv())
            unpackb(other.recv())
            slow.send(b"\xc0")
            assert entered.wait(10)
            other.send(packb(good_obs()))
            reply = unpackb(other.recv(timeout=15))  # with decoding on the event loop: TimeoutError
            assert reply["actions"].shape == (8, 7)
            release.set()
            assert slow.recv(timeout=30) == "bad request: request must be a msgpack map of observation keys, got NoneType"
    finally:
        release.set()


def test_refused_bytes_pace_their_sender(server, monkeypatch):
    """Item 10: a client flooding large bad frames is slowed to REFUSED_BYTES_PER_S (its one-frame queue
    stays full while it waits), so it cannot keep the event loop from the others; a good client is not."""
    import policy.serving.server as serving
    from websockets.sync.client import connect

    monkeypatch.setattr(serving, "REFUSED_BYTES_PER_S", 1024 * 1024)
    bad = b"\xc5" + (60_000).to_bytes(2, "big") + bytes(60_000)  # a 60 kB msgpack bin: not a map
    with connect(f"ws://127.0.0.1:{server.port}", max_size=None) as flood, \
            connect(f"ws://127.0.0.1:{server.port}", max_size=None) as other:
        unpackb(flood.recv())
        unpackb(other.recv())
        t0 = time.perf_counter()
        for _ in range(10):
            flood.send(bad)
            assert flood.recv(timeout=30).startswith("bad request: request must be a msgpack map")
        paced = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(10):
            other.send(packb(good_obs()))
            assert unpackb(other.recv(timeout=30))["actions"].shape == (8, 7)
        good = time.perf_counter() - t0
    assert paced >= 9 * 60_003 / (1024 * 1024), paced  # the 10th reply comes before its pause
    assert good < paced, (good, paced)  # good requests never pay it


def test_error_replies_are_capped_whatever_the_client_sent(server):
    """Item 11: a huge dtype string or thousands of unknown keys get a short reply."""
    from websockets.sync.client import connect

    huge_dtype = {**good_obs(), "joint_states": {b"__ndarray__": True, b"data": b"", b"dtype": "<" + "f" * 50_000, b"shape": [0]}}
    many_keys = {**good_obs(), **{f"observation/u{i:05d}": 1 for i in range(1500)}}
    long_key = {**good_obs(), "k" * 50_000: 1}
    with connect(f"ws://127.0.0.1:{server.port}", max_size=None) as ws:
        unpackb(ws.recv())
        for frame in (_frame(huge_dtype), _frame(many_keys), _frame(long_key)):
            ws.send(frame)
            reply = ws.recv(timeout=30)
            assert isinstance(reply, str) and reply.startswith("bad request: ") and len(reply) <= 300, len(reply)
        ws.send(_frame(huge_dtype))
        assert ws.recv(timeout=30) == "bad request: bad array dtype '<fffffffffffffffffffffffffffffffffff...; send a numeric numpy dtype string such as '<f4' or '|u1'"
        ws.send(_frame(many_keys))
        assert ws.recv(timeout=30) == ("bad request: unknown observation key(s) 'observation/u00000', 'observation/u00001', "
                                       "'observation/u00002' and 1497 more; accepted: " + ACCEPTED)


def test_memory_is_bounded_per_connection_and_in_total(policy):
    """Item 12: one frame of max_message_bytes, one queued frame per connection, max_connections clients."""
    from websockets.exceptions import ConnectionClosedError, InvalidStatus
    from websockets.sync.client import connect

    from policy.serving.server import worst_case_connection_bytes

    srv = PolicyServer(_EchoPolicy(), port=0, max_message_bytes=64 * 1024, max_connections=2)
    srv.start_in_thread()
    try:
        a, b = PolicyClient("127.0.0.1", srv.port), PolicyClient("127.0.0.1", srv.port)
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://127.0.0.1:{srv.port}", open_timeout=10)
        assert refused.value.response.status_code == 503
        assert refused.value.response.body == b"the policy server is at its limit of 2 connections; retry later\n"
        for conn in list(srv._admitted):  # what websockets was told: the frame limit, and 1 queued frame
            assert conn.protocol.max_message_size == 64 * 1024 and conn.recv_messages.high == 1
        a.close()
        for _ in range(100):  # the freed slot is given to the next client
            try:
                c = PolicyClient("127.0.0.1", srv.port, connect_timeout=0)
                break
            except ConnectionError:
                time.sleep(0.05)
        assert c.infer(good_obs())["actions"].shape == (8, 7)
        b._ws.send(packb({**good_obs(), "agentview_rgb": np.zeros((200, 200, 3), np.uint8)}))  # 120 KB > 64 KiB
        with pytest.raises(ConnectionClosedError) as closed:
            b._ws.recv(timeout=30)
        assert closed.value.rcvd.code == 1009 and "exceeds limit of 65536 bytes" in closed.value.rcvd.reason
        c.close()
    finally:
        srv.stop()
    assert worst_case_connection_bytes(4 * 2**20) == 24 * 2**20  # the figure README and docs/serving.md state


def test_two_authorization_headers_get_400_not_500(policy, caplog):
    srv = PolicyServer(_EchoPolicy(), port=0, api_key="s3cret")
    srv.start_in_thread()
    try:
        with caplog.at_level(logging.INFO):
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
            conn.putrequest("GET", "/")
            for name, value in (("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                                ("Sec-WebSocket-Version", "13"), ("Authorization", "Api-Key s3cret"), ("Authorization", "Api-Key s3cret")):
                conn.putheader(name, value)
            conn.endheaders()
            response = conn.getresponse()
            assert response.status == 400 and response.read() == b"send one Authorization header ('Authorization: Api-Key <key>')\n"
    finally:
        srv.stop()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


class _StubLanguage(LanguageEncoder):
    """The real cache logic with a fake BERT (a vector per text)."""

    def _encode(self, texts):
        return torch.stack([torch.full((4,), float(len(t))) for t in texts])


class _LanguagePolicy:
    def __init__(self) -> None:
        self.language = _StubLanguage(cache={"the saved instruction": torch.zeros(4)})

    def predict(self, obs, steps=2, churn=0.0):
        emb = self.language.embed(obs["language"])
        return np.repeat(emb[:, :1].numpy()[:, None, :], 8, 1).repeat(7, 2).astype(np.float32)


def test_language_cache_is_bounded_at_serving_and_keeps_the_saved_entries():
    """Item 14: 20 distinct prompts leave at most max_cached_prompts added entries; the saved one stays."""
    pol = _LanguagePolicy()
    srv = PolicyServer(pol, port=0, max_cached_prompts=3)
    srv.start_in_thread()
    try:
        with PolicyClient("127.0.0.1", srv.port) as client:
            for i in range(20):
                reply = client.infer({**good_obs(), "language": f"prompt {i:03d} " + "x" * i})
                assert reply["actions"][0, 0] == len(f"prompt {i:03d} ") + i
            assert client.infer({**good_obs(), "language": "the saved instruction"})["actions"][0, 0] == 0.0
    finally:
        srv.stop()
    assert "the saved instruction" in pol.language.cache and len(pol.language.cache) == 1 + 3
    assert sorted(pol.language.cache)[:3] == [f"prompt {i:03d} " + "x" * i for i in (17, 18, 19)]


def _raw_websocket(port: int) -> socket.socket:
    """A websocket opened by hand, as openpi-client's would be, that can vanish without a close frame."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    assert data.startswith(b"HTTP/1.1 101")
    return sock


def test_a_client_that_never_sends_a_close_frame_is_one_info_line(server, caplog):
    """Item 15: openpi-client ends every session without a close frame; that is not an ERROR with a traceback."""
    with caplog.at_level(logging.DEBUG):
        sock = _raw_websocket(server.port)
        time.sleep(0.2)  # let the server send its metadata
        sock.close()
        for _ in range(100):
            if any("closed abnormally" in r.getMessage() for r in caplog.records):
                break
            time.sleep(0.05)
    ours = [r for r in caplog.records if "closed abnormally" in r.getMessage()]
    assert len(ours) == 1 and ours[0].levelno == logging.INFO and ours[0].exc_info is None
    assert "\n" not in ours[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [r.getMessage() for r in caplog.records]


class _GatedPolicy:
    """predict blocks until `go` is set (a model that takes a while to load)."""

    def __init__(self) -> None:
        self.go, self.calls = threading.Event(), []

    def predict(self, obs, steps=2, churn=0.0):
        self.go.wait(30)
        self.calls.append(len(obs["language"]))
        return np.zeros((len(obs["language"]), 8, 7), np.float32)


def test_healthz_is_503_until_the_warm_up_predict_has_run():
    """Item 16: the server loads and warms the model before it says ready or admits a client."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    pol = _GatedPolicy()
    srv = PolicyServer(pol, port=0)
    srv.start_in_thread(wait_ready=False)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        assert response.status == 503 and response.read() == b"warming up\n"
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://127.0.0.1:{srv.port}", open_timeout=10)
        assert refused.value.response.status_code == 503
        assert pol.calls == [] and not srv.ready.is_set()
        pol.go.set()
        assert srv.ready.wait(30)
        assert pol.calls == [1]  # the warm-up predict ran before ready
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        with PolicyClient("127.0.0.1", srv.port) as client:
            assert client.infer(good_obs())["actions"].shape == (8, 7)
        assert srv.stats["requests"] == 1  # the warm-up is not counted as a request
    finally:
        pol.go.set()
        srv.stop()


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
    """A BatchPolicy that records the size of every forward pass (the server's warm-up not included)."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def predict(self, obs, steps=2, churn=0.0):
        if obs["language"] != ["warm up"]:
            self.batches.append(len(obs["language"]))
        return np.zeros((len(obs["language"]), 8, 7), dtype=np.float32)


class _EchoPolicy:
    """Deterministic actions that depend on every part of each row's observation."""

    @staticmethod
    def expected(o: dict) -> np.ndarray:
        base = (o["joint_states"].astype(np.float64) + o["gripper_states"].astype(np.float64).sum()
                + o["agentview_rgb"].mean() / 255 + 2 * o["eye_in_hand_rgb"].mean() / 255 + len(o["language"]))
        return (base[None, :] + 0.1 * np.arange(8)[:, None]).astype(np.float32)

    def predict(self, obs, steps=2, churn=0.0):
        rows = [{k: (v[b] if k != "language" else v[b]) for k, v in obs.items()} for b in range(len(obs["language"]))]
        return np.stack([self.expected(r) for r in rows])


class _SameNoisePolicy:
    """The real policy with noise that is the same for every row of a batch (fresh per call).

    torch.randn in policy.diffusion draws one row and repeats it, so a batched forward pass
    must give each row exactly what the same observation gets alone.
    """

    def __init__(self, policy) -> None:
        self.policy = policy

    def predict(self, obs, steps=2, churn=0.0):
        import types
        from unittest import mock

        import policy.diffusion as diffusion

        gen = torch.Generator().manual_seed(0)

        def randn(shape, *args, generator=None, **kwargs):
            return torch.randn((1, *shape[1:]), *args, generator=gen, **kwargs).expand(*shape).clone()

        proxy = types.SimpleNamespace(**{k: getattr(torch, k) for k in dir(torch) if not k.startswith("__")})
        proxy.randn = randn
        with mock.patch.object(diffusion, "torch", proxy):
            return self.policy.predict(obs, steps=steps, churn=churn)


def _together(port: int, observations: list[dict]) -> list[dict]:
    """Each observation from its own client, all sent at once."""
    clients = [PolicyClient("127.0.0.1", port) for _ in observations]
    go, replies = threading.Barrier(len(clients)), [None] * len(clients)

    def run(k: int) -> None:
        go.wait()
        replies[k] = clients[k].infer(observations[k])

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(clients))]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    [c.close() for c in clients]
    return replies


def test_each_client_in_a_batch_gets_its_own_actions():
    srv = PolicyServer(_EchoPolicy(), port=0, batch_window_ms=300.0, window_backoff=0)
    srv.start_in_thread()
    try:
        observations = [{**good_obs(seed=k), "language": "task " + "x" * k} for k in range(5)]
        replies = _together(srv.port, observations)
    finally:
        srv.stop()
    assert max(r["server_timing"]["batch_size"] for r in replies) > 1  # they did share a forward pass
    for obs, reply in zip(observations, replies):
        np.testing.assert_array_equal(reply["actions"], _EchoPolicy.expected(obs))


def test_batched_actions_equal_unbatched_for_the_same_noise(policy):
    torch.manual_seed(0)  # the network's initialisation: the same every run, whatever ran before
    trained_like = DiffusionPolicy(PolicyConfig(suites=("libero_object",), **TINY), language=policy.language)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # freshly built nets ignore their conditioning (zero-initialised layers): perturb them
        for p in trained_like.net.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    same_noise = _SameNoisePolicy(trained_like)
    srv = PolicyServer(same_noise, steps=2, port=0, batch_window_ms=300.0, window_backoff=0)
    srv.start_in_thread()
    try:
        observations = [good_obs(seed=k) for k in range(4)]
        replies = _together(srv.port, observations)
    finally:
        srv.stop()
    assert max(r["server_timing"]["batch_size"] for r in replies) > 1
    alone = [same_noise.predict({k: (np.stack([v]) if isinstance(v, np.ndarray) else [v]) for k, v in o.items()}, steps=2)[0]
             for o in observations]
    # different observations get actions far apart (a reply sent to the wrong client cannot pass below),
    # while a batch and a single row differ by float rounding only (matmul kernels depend on the batch size)
    assert min(np.abs(alone[i] - alone[j]).max() for i in range(4) for j in range(i)) > 1e-2
    for reply, expected in zip(replies, alone):
        np.testing.assert_allclose(reply["actions"], expected, rtol=1e-4, atol=1e-4)


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
    chunk = np.arange(8 * 7, dtype=np.float32).reshape(8, 7)
    np.testing.assert_array_equal(np.stack(actions), np.concatenate([chunk + 100, chunk + 200]))  # all 16, in order
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
    from envs.evaluation import robot_client_cli as mod  # scripts/robot_client_example.py

    requests_before = server.stats["requests"]
    rc = mod.main(["--port", str(server.port), "--suite", "libero_object", "--task", "0", "--episodes", "1", "--max-steps", "12"])
    out = capsys.readouterr().out
    assert rc == 0 and "episode 0: failure after 12 steps" in out and "done: 0/1" in out
    assert server.stats["requests"] - requests_before >= 2  # 12 ticks of 8-action chunks


def test_serve_script_picks_the_best_evaluated_steps(tmp_path, monkeypatch):
    import json

    from policy.serving import cli as mod  # scripts/serve_policy.py

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "libero_object" / "20261122-120000"
    (run / "policy").mkdir(parents=True)
    assert mod.best_evaluated_steps(run) is None
    sweep = tmp_path / "eval" / run.name / "steps_sweep.json"
    sweep.parent.mkdir(parents=True)
    sweep.write_text(json.dumps({"1": {"libero_object": 0.5}, "2": {"libero_object": 0.8}, "4": {"libero_object": 0.8}}))
    assert mod.best_evaluated_steps(run) == 2
    assert mod.best_evaluated_steps(run / "policy") == 2


def test_an_eef_policy_is_served_in_its_own_layout(policy):
    """An eef-proprio policy: metadata names the layout, openpi's 8-value state and the eef package
    keys are answered, a joints-layout state gets one bad-request line naming the eef layout."""
    torch.manual_seed(0)
    eef = DiffusionPolicy(PolicyConfig(suites=("libero_object",), proprio="eef", **TINY), language=policy.language)
    srv = PolicyServer(eef, steps=2, port=0, metadata={"image_size": 32})
    srv.start_in_thread()
    try:
        with PolicyClient("127.0.0.1", srv.port) as client:
            meta = client.get_server_metadata()
            assert meta["proprio"] == {"layout": "eef", "features": ["ee_pos", "ee_ori", "gripper_states"], "dim": 8}
            assert meta["observation_shapes"]["package"]["ee_ori"] == [3]
            obs = good_obs(openpi=True)
            state = np.random.default_rng(1).normal(size=8).astype(np.float32)
            a = client.infer({**obs, "observation/state": state})["actions"]
            package = {"agentview_rgb": obs["observation/image"], "eye_in_hand_rgb": obs["observation/wrist_image"],
                       "ee_pos": state[:3], "ee_ori": state[3:6], "gripper_states": state[6:], "language": obs["prompt"]}
            b = client.infer(package)["actions"]
            assert a.shape == b.shape == (8, 7) and np.isfinite(a).all() and np.isfinite(b).all()
            with pytest.raises(RuntimeError) as err:
                client.infer(obs)  # the joints layout's 9 values
            assert str(err.value).endswith("bad request: observation/state has 9 values; this policy expects the eef "
                                           "layout: ee_pos (3) + ee_ori (3) + gripper_states (2) = 8")
            assert client.infer({**obs, "observation/state": state})["actions"].shape == (8, 7)  # still serving
        assert srv.stats["requests"] == 3
    finally:
        srv.stop()
