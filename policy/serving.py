"""Policy server and client speaking openpi-client's websocket protocol (ARCHITECTURE.md s.5).

Server: on connect it sends its metadata; each binary msgpack frame is one observation and
gets ``{"actions": (8, 7) float32, "server_timing": {...}}`` back. Requests that arrive
together (from any number of clients) are batched into one ``policy.predict`` call. A bad
request gets a short text frame naming the problem (openpi-client raises it as
RuntimeError); the full traceback of unexpected errors goes to the server log only; the
connection and the server keep serving. ``GET /healthz`` answers 200 without the API key.

Client: ``PolicyClient`` has openpi's WebsocketClientPolicy calls (``infer``,
``get_server_metadata``, ``reset``); ``ActionChunker`` hands a fixed-rate controller one
action per tick and asks for the next chunk early enough to hide the round trip.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from http import HTTPStatus
from typing import Any, Protocol

import numpy as np

from policy.wire import RequestError, packb, parse_observation, stack_observations, unpackb

log = logging.getLogger("policy.serving")
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class BatchPolicy(Protocol):
    def predict(self, obs: dict[str, Any], steps: int = 2, churn: float = 0.0) -> np.ndarray: ...


class PolicyServer:
    """Websocket policy server with request batching.

    Args:
        policy: anything with ``predict(obs_batch, steps, churn) -> (B, 8, 7)``.
        steps, churn: sampler settings used for every request.
        host, port: bind address (127.0.0.1 unless told otherwise; port 0 picks a free one).
        api_key: if set, clients must send ``Authorization: Api-Key <key>`` at the handshake.
        max_message_bytes: larger frames get an error reply; frames over 4x this close the
            connection (websocket code 1009) so a client cannot exhaust memory.
        max_batch: most observations in one forward pass.
        batch_window_ms: once a request is queued, how long the batcher may wait for requests
            from the other connected clients before it runs the forward pass (closed-loop
            clients whose replies went out together come back within a few ms; without the
            wait they split into half-size batches). It waits only for clients that sent a
            request in the last second, so a single client, or clients that all have a request
            queued already, never wait; a window that gains nothing switches waiting off for the
            next ``window_backoff`` batches, so clients out of step rarely pay it; 0 disables it.
        window_backoff: batches served without the window after one whose window gained nothing.
        metadata: extra entries for the metadata sent on connect.
    """

    def __init__(self, policy: BatchPolicy, steps: int = 2, churn: float = 0.0, host: str = "127.0.0.1", port: int = 8000,
                 api_key: str | None = None, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, max_batch: int = 32,
                 batch_window_ms: float = 5.0, window_backoff: int = 16, metadata: dict[str, Any] | None = None) -> None:
        if max_batch < 1 or max_message_bytes < 1024 or not 0 <= batch_window_ms <= 1000 or window_backoff < 0:
            raise ValueError("max_batch must be >= 1, max_message_bytes >= 1024, batch_window_ms in [0, 1000] "
                             "and window_backoff >= 0")
        self.batch_window_s = float(batch_window_ms) / 1e3
        self.window_backoff = int(window_backoff)
        self._last_request: dict[int, float] = {}  # connection -> perf_counter of its last request
        self._skip_waits = 0  # batches left that go without the window (see _gather)
        self.policy, self.steps, self.churn = policy, int(steps), float(churn)
        self.host, self.port, self.api_key = host, int(port), api_key or None
        self.max_message_bytes, self.max_batch = int(max_message_bytes), int(max_batch)
        self.metadata = {"action_dim": 7, "chunk_length": 8, "steps": self.steps, "churn": self.churn,
                         "observation_keys": {"package": ["agentview_rgb", "eye_in_hand_rgb", "joint_states", "gripper_states", "language"],
                                              "openpi": ["observation/image", "observation/wrist_image", "observation/state", "prompt"]},
                         "max_message_bytes": self.max_message_bytes, "max_batch": self.max_batch,
                         "batch_window_ms": float(batch_window_ms), **(metadata or {})}
        self.stats = {"requests": 0, "errors": 0, "batches": 0}
        self._queue: asyncio.Queue | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-infer")
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.ready = threading.Event()

    # -- handshake -------------------------------------------------------------------
    def _process_request(self, connection: Any, request: Any) -> Any:
        if request.path.split("?")[0] == "/healthz":
            return connection.respond(HTTPStatus.OK, "OK\n")
        if self.api_key:
            sent = request.headers.get("Authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Api-Key {self.api_key}".encode()):
                log.warning("refused a connection from %s: missing or wrong API key", connection.remote_address)
                return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong API key (send 'Authorization: Api-Key <key>')\n")
        return None

    # -- per connection ----------------------------------------------------------------
    async def _handle(self, ws: Any) -> None:
        try:
            await self._serve_connection(ws)
        finally:
            self._last_request.pop(id(ws), None)

    async def _serve_connection(self, ws: Any) -> None:
        await ws.send(packb(self.metadata))
        async for message in ws:
            t0 = time.perf_counter()
            self._last_request[id(ws)] = t0
            try:
                reply = await self._answer(message, t0)
            except RequestError as e:
                self.stats["errors"] += 1
                await ws.send(f"bad request: {e}")
                continue
            except Exception:
                self.stats["errors"] += 1
                log.exception("unexpected error while serving a request")
                await ws.send("internal server error (details in the server log)")
                continue
            await ws.send(reply)

    async def _answer(self, message: bytes | str, t0: float) -> bytes:
        if isinstance(message, str):
            raise RequestError("text frames are not accepted; send binary msgpack frames (openpi-client format)")
        if len(message) > self.max_message_bytes:
            raise RequestError(f"frame of {len(message)} bytes exceeds the limit of {self.max_message_bytes} bytes")
        request = unpackb(message, self.max_message_bytes)
        if isinstance(request, dict) and ("__ctrl__" in request or b"__ctrl__" in request):
            return packb({"ok": True})  # openpi episode_start / episode_end markers
        obs = parse_observation(request)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        assert self._queue is not None
        await self._queue.put((obs, future, t0))
        actions, timing = await future
        self.stats["requests"] += 1
        timing["total_ms"] = (time.perf_counter() - t0) * 1e3
        return packb({"actions": actions, "server_timing": timing})

    # -- batching ----------------------------------------------------------------------
    async def _batch_loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            items = await self._gather()
            groups: dict[tuple, list] = {}
            for item in items:  # images of different sizes cannot share a batch
                obs = item[0]
                groups.setdefault((obs["agentview_rgb"].shape, obs["eye_in_hand_rgb"].shape), []).append(item)
            for group in groups.values():
                await self._run_batch(loop, group)

    async def _gather(self) -> list:
        """The next batch: what is queued, plus what the other active clients send within the window.

        A window that ran out without gaining a single request (clients out of step with each
        other, e.g. robots on their own clocks) makes the next ``window_backoff`` batches go
        without waiting, so unsynchronised clients pay the window at most once in that many.
        """
        assert self._queue is not None
        items = [await self._queue.get()]
        self._drain(items)
        if self._skip_waits:
            self._skip_waits -= 1
            return items
        now = time.perf_counter()
        expected = min(self.max_batch, sum(1 for t in self._last_request.values() if now - t < 1.0))
        deadline, gained = now + self.batch_window_s, False
        while len(items) < expected:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                items.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
            gained = True
            self._drain(items)
        if self.batch_window_s and len(items) < expected and not gained:
            self._skip_waits = self.window_backoff
        return items

    def _drain(self, items: list) -> None:
        assert self._queue is not None
        while len(items) < self.max_batch and not self._queue.empty():
            items.append(self._queue.get_nowait())

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, group: list) -> None:
        batch = stack_observations([obs for obs, _, _ in group])
        t_start = time.perf_counter()
        try:
            actions = await loop.run_in_executor(self._executor, self._predict, batch)
        except Exception as e:
            log.exception("policy.predict failed on a batch of %d", len(group))
            for _, fut, _ in group:
                if not fut.done():
                    fut.set_exception(RequestError(f"the policy failed on this observation ({type(e).__name__}: {e})"[:300]))
            return
        infer_ms = (time.perf_counter() - t_start) * 1e3
        self.stats["batches"] += 1
        for i, (_, fut, t0) in enumerate(group):
            if not fut.done():
                fut.set_result((actions[i], {"infer_ms": infer_ms, "queue_ms": (t_start - t0) * 1e3, "batch_size": len(group)}))

    def _predict(self, batch: dict[str, Any]) -> np.ndarray:
        actions = np.asarray(self.policy.predict(batch, steps=self.steps, churn=self.churn), dtype=np.float32)
        if actions.shape[0] != len(batch["language"]) or not np.isfinite(actions).all():
            raise RuntimeError(f"policy returned actions of shape {actions.shape} with non-finite values or wrong batch")
        return actions

    # -- lifecycle ---------------------------------------------------------------------
    async def serve(self, install_signal_handlers: bool = False) -> None:
        """Serve until stop() (or SIGTERM / Ctrl-C when install_signal_handlers)."""
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._queue, self._stop = asyncio.Queue(), asyncio.Event()
        if install_signal_handlers:
            import signal

            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._stop.set)
        batcher = asyncio.create_task(self._batch_loop())
        async with serve(self._handle, self.host, self.port, process_request=self._process_request,
                         max_size=4 * self.max_message_bytes, compression=None, ping_interval=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            log.info("serving on ws://%s:%d (steps=%d, churn=%.2f)", self.host, self.port, self.steps, self.churn)
            self.ready.set()
            await self._stop.wait()
            log.info("shutting down: %s", self.stats)
        batcher.cancel()
        self._executor.shutdown(wait=True)

    def stop(self) -> None:
        """Ask a running server to shut down (thread-safe)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def start_in_thread(self, timeout: float = 30.0) -> threading.Thread:
        """Run the server in a daemon thread (tests, benchmarks); returns once it listens."""
        thread = threading.Thread(target=lambda: asyncio.run(self.serve()), daemon=True, name="policy-server")
        thread.start()
        if not self.ready.wait(timeout):
            raise RuntimeError(f"server did not start listening on {self.host}:{self.port} within {timeout} s")
        return thread


class PolicyClient:
    """openpi WebsocketClientPolicy-compatible client: infer, get_server_metadata, reset."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = 8000, api_key: str | None = None, connect_timeout: float = 30.0) -> None:
        from websockets.exceptions import InvalidStatus
        from websockets.sync.client import connect

        uri = host if host.startswith("ws") else f"ws://{host}"
        uri = f"{uri}:{port}" if port is not None else uri
        headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                self._ws = connect(uri, compression=None, max_size=None, additional_headers=headers, open_timeout=10)
                break
            except InvalidStatus as e:
                raise ConnectionError(f"{uri} refused the connection: HTTP {e.response.status_code} "
                                      f"{(e.response.body or b'').decode(errors='replace').strip()}") from None
            except (ConnectionRefusedError, OSError):
                if time.monotonic() > deadline:
                    raise ConnectionError(f"no policy server at {uri} after {connect_timeout:.0f} s; start one with "
                                          "`python scripts/serve_policy.py`") from None
                time.sleep(0.5)
        self._metadata = unpackb(self._ws.recv())

    def get_server_metadata(self) -> dict[str, Any]:
        return self._metadata

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        """Send one observation; returns {"actions": (8, 7), "server_timing": {...}}."""
        self._ws.send(packb(obs))
        reply = self._ws.recv()
        if isinstance(reply, str):
            raise RuntimeError(f"Error in inference server:\n{reply}")
        return unpackb(reply)

    def reset(self) -> None:
        """Start of an episode (the server is stateless)."""

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> "PolicyClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ActionChunker:
    """Turns chunk inference into one action per control tick.

    ``act(obs)`` returns the next action of the current chunk. When only ``lead`` actions
    are left it asks for the next chunk in the background (from the newest observation), so
    the controller never waits when inference is faster than ``lead`` ticks. ``lead='auto'``
    sets it from the measured round trip: ceil(latency * control_hz) + 1. The first
    chunk of an episode (after reset()) is fetched synchronously.

    Args:
        infer: a function observation -> {"actions": (chunk, 7)} (e.g. PolicyClient.infer).
        execute: actions executed from each chunk (<= chunk length).
    """

    def __init__(self, infer: Callable[[dict[str, Any]], dict[str, Any]], execute: int = 8,
                 control_hz: float = 20.0, lead: int | str = "auto") -> None:
        self._infer, self.execute, self.control_hz, self.lead = infer, int(execute), float(control_hz), lead
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunk-prefetch")
        self.latency_s = 0.0
        self.waits = 0
        self.reset()

    def reset(self) -> None:
        self._chunk: np.ndarray | None = None
        self._index = 0
        self._pending: Future | None = None

    def _timed_infer(self, obs: dict[str, Any]) -> np.ndarray:
        t0 = time.perf_counter()
        actions = np.asarray(self._infer(obs)["actions"], dtype=np.float32)
        dt = time.perf_counter() - t0
        self.latency_s = dt if self.latency_s == 0 else 0.8 * self.latency_s + 0.2 * dt
        return actions[: self.execute]

    def _lead_ticks(self) -> int:
        if self.lead == "auto":
            return min(self.execute - 1, math.ceil(self.latency_s * self.control_hz) + 1)
        return min(self.execute - 1, int(self.lead))

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        """The action (7,) for this tick."""
        if self._chunk is None or self._index >= len(self._chunk):
            if self._pending is not None:
                if not self._pending.done():
                    self.waits += 1
                self._chunk, self._pending = self._pending.result(), None
            else:
                self._chunk = self._timed_infer(obs)
            self._index = 0
        action = self._chunk[self._index]
        self._index += 1
        remaining = len(self._chunk) - self._index
        lead = self._lead_ticks()
        if self._pending is None and lead > 0 and remaining <= lead:
            self._pending = self._pool.submit(self._timed_infer, obs)
        return action
