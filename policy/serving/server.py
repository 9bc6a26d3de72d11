"""Policy server speaking openpi-client's websocket protocol (docs/architecture.md, docs/serving.md).

Server: on connect it sends its metadata; each binary msgpack frame is one observation and
gets ``{"actions": (8, 7) float32, "server_timing": {...}}`` back. Requests that arrive
together (from any number of clients) are batched into one ``policy.predict`` call. A bad
request gets one short text frame (at most 300 characters) naming the problem (openpi-client
raises it as RuntimeError); the full traceback of unexpected errors goes to the server log
only; the connection and the server keep serving.

Bounds (what one client can cost the server): frames are decoded in a small thread pool,
one frame per connection at a time, after a header scan that refuses hostile structure
(``wire.scan_frame``: at most 4096 objects, 16 levels) before any object is built; a
connection buffers at most one queued frame of ``max_message_bytes`` (larger frames close
it with code 1009); at most ``max_connections`` clients are admitted (more get HTTP 503);
prompts the policy has not seen are cached up to ``max_cached_prompts``. The model is loaded
and warmed by one predict before ``ready`` is set; until then ``GET /healthz`` and websocket
handshakes answer 503. ``GET /healthz`` needs no API key.

The client side is :mod:`policy.serving.client`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Any

import numpy as np

from policy.protocol import Policy
from policy.features import FeatureSpec, proprio_layout
from policy.serving.wire import (FEATURES, MAX_ERROR_CHARS, STATE_KEY, RequestError, openpi_aliases, packb, parse_observation,
                                 stack_observations, unpackb)

log = logging.getLogger("policy.serving.server")
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
REFUSED_BYTES_PER_S = 16 * 1024 * 1024  # a connection's refused frames are paced to this rate
DEFAULT_MAX_CONNECTIONS = 16
DEFAULT_MAX_CACHED_PROMPTS = 1024
MAX_QUEUED_FRAMES = 1  # websockets' max_queue: frames buffered per connection before it stops reading
CTRL = object()  # a decoded openpi __ctrl__ marker


def error_text(message: str) -> str:
    """The text frame for a bad request: one line, at most MAX_ERROR_CHARS characters."""
    text = " ".join(f"bad request: {message}".split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 14] + " ... (cut off)"


def worst_case_connection_bytes(max_message_bytes: int) -> int:
    """Bytes one connection can make the server hold for its frames, at most.

    The frame being read (websockets' buffer) + MAX_QUEUED_FRAMES + 1 queued (the high-water
    mark pauses reading only above it) + the message being decoded + its decoded arrays
    + the copy in the stacked batch: (MAX_QUEUED_FRAMES + 5) frames.
    """
    return (MAX_QUEUED_FRAMES + 5) * max_message_bytes


class PolicyServer:
    """Websocket policy server with request batching.

    Args:
        policy: a :class:`policy.protocol.Policy` (only ``predict(obs_batch, steps, churn) -> (B, 8, 7)``
            is called); observations are keyed by its ``config.spec`` (the features it was built
            with, e.g. the eef proprio layout) or, without one, by ``wire.FEATURES``.
        steps, churn: sampler settings used for every request.
        host, port: bind address (127.0.0.1 unless told otherwise; port 0 picks a free one).
        api_key: if set, clients must send ``Authorization: Api-Key <key>`` at the handshake.
        max_message_bytes: largest frame; a larger one closes the connection (websocket code
            1009, the reason names both sizes).
        max_connections: most clients connected at once; more are refused at the handshake
            with HTTP 503. Memory for frames is at most max_connections x
            ``worst_case_connection_bytes(max_message_bytes)``.
        max_cached_prompts: language embeddings kept for prompts outside the policy's saved
            cache (least recently used dropped first); the saved cache is kept whole.
        warmup: run one predict on a dummy observation before ``ready`` (loads the language
            model, allocates buffers), so the first client does not wait seconds.
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

    def __init__(self, policy: Policy, steps: int = 2, churn: float = 0.0, host: str = "127.0.0.1", port: int = 8000,
                 api_key: str | None = None, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, max_batch: int = 32,
                 batch_window_ms: float = 5.0, window_backoff: int = 16, metadata: dict[str, Any] | None = None,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, max_cached_prompts: int = DEFAULT_MAX_CACHED_PROMPTS,
                 warmup: bool = True) -> None:
        if (max_batch < 1 or max_message_bytes < 1024 or not 0 <= batch_window_ms <= 1000 or window_backoff < 0
                or max_connections < 1 or max_cached_prompts < 0):
            raise ValueError("max_batch must be >= 1, max_message_bytes >= 1024, batch_window_ms in [0, 1000], "
                             "window_backoff >= 0, max_connections >= 1 and max_cached_prompts >= 0")
        self.batch_window_s = float(batch_window_ms) / 1e3
        self.window_backoff = int(window_backoff)
        self._last_request: dict[int, float] = {}  # connection -> perf_counter of its last request
        self._skip_waits = 0  # batches left that go without the window (see _gather)
        self.policy, self.steps, self.churn = policy, int(steps), float(churn)
        self.host, self.port, self.api_key = host, int(port), api_key or None
        self.max_message_bytes, self.max_batch = int(max_message_bytes), int(max_batch)
        self.max_connections, self.warmup = int(max_connections), bool(warmup)
        language = getattr(policy, "language", None)
        if language is not None and hasattr(language, "max_added"):
            language.max_added = int(max_cached_prompts)
        spec = getattr(getattr(policy, "config", None), "spec", None)
        self.features: FeatureSpec = spec if isinstance(spec, FeatureSpec) else FEATURES
        spec = self.features
        chunk_length, action_dim = spec.action.shape
        aliases = openpi_aliases(spec)
        openpi_shapes = {k: list(spec.observation[spec.observation_keys.index(v)].shape) for k, v in aliases.items()
                         if k != "prompt"}
        openpi_shapes = {**openpi_shapes, STATE_KEY: [spec.state_dim], "prompt": []}
        self.metadata = {"action_dim": action_dim, "chunk_length": chunk_length, "steps": self.steps, "churn": self.churn,
                         "observation_keys": {"package": list(spec.observation_keys), "openpi": list(openpi_shapes)},
                         "observation_shapes": {"package": {f.name: list(f.shape) for f in spec.observation},
                                                "openpi": openpi_shapes},
                         "proprio": {"layout": proprio_layout(spec), "features": [f.name for f in spec.states],
                                     "dim": spec.state_dim},
                         "max_message_bytes": self.max_message_bytes, "max_batch": self.max_batch,
                         "max_connections": self.max_connections,
                         "batch_window_ms": float(batch_window_ms), **(metadata or {})}
        self.stats = {"requests": 0, "errors": 0, "batches": 0}
        self._queue: asyncio.Queue | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-infer")
        # decoding: each connection decodes one frame at a time, so the pool's FIFO serves connections in turn
        self._decoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="frame-decode")
        self._admitted: set[Any] = set()  # connections past process_request, not yet closed
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.listening = threading.Event()  # the socket is open (healthz answers; 503 until ready)
        self.ready = threading.Event()  # warmed up and serving

    # -- handshake -------------------------------------------------------------------
    def _process_request(self, connection: Any, request: Any) -> Any:
        if request.path.split("?")[0] == "/healthz":
            if not self.ready.is_set():
                return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "warming up\n")
            return connection.respond(HTTPStatus.OK, "OK\n")
        if self.api_key:
            sent = request.headers.get_all("Authorization")
            if len(sent) > 1:
                log.warning("refused a connection from %s: %d Authorization headers", connection.remote_address, len(sent))
                return connection.respond(HTTPStatus.BAD_REQUEST, "send one Authorization header ('Authorization: Api-Key <key>')\n")
            if not sent or not hmac.compare_digest(sent[0].encode("utf-8", "replace"), f"Api-Key {self.api_key}".encode()):
                log.warning("refused a connection from %s: missing or wrong API key", connection.remote_address)
                return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong API key (send 'Authorization: Api-Key <key>')\n")
        if not self.ready.is_set():
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "the policy server is warming up; retry in a few seconds\n")
        from websockets.protocol import State

        self._admitted = {c for c in self._admitted if c.state is not State.CLOSED}
        if len(self._admitted) >= self.max_connections:
            log.warning("refused a connection from %s: %d clients connected, the limit (--max-connections)",
                        connection.remote_address, len(self._admitted))
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE,
                                      f"the policy server is at its limit of {self.max_connections} connections; retry later\n")
        self._admitted.add(connection)
        return None

    # -- per connection ----------------------------------------------------------------
    async def _handle(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            await self._serve_connection(ws)
        except ConnectionClosed as e:  # e.g. openpi-client never sends a close frame
            log.info("connection from %s closed abnormally: %s", ws.remote_address, e)
        finally:
            self._last_request.pop(id(ws), None)
            self._admitted.discard(ws)

    async def _serve_connection(self, ws: Any) -> None:
        await ws.send(packb(self.metadata))
        async for message in ws:
            t0 = time.perf_counter()
            self._last_request[id(ws)] = t0
            pause = 0.0
            try:
                reply = await self._answer(message, t0)
            except RequestError as e:
                self.stats["errors"] += 1
                reply = error_text(str(e))
                # refused bytes cost the sender time: while this connection waits its (one-frame)
                # receive queue stays full, so a client flooding large bad frames is slowed to
                # REFUSED_BYTES_PER_S and the others keep the event loop; small mistakes cost ~nothing
                pause = len(message) / REFUSED_BYTES_PER_S
            except Exception:
                self.stats["errors"] += 1
                log.exception("unexpected error while serving a request")
                reply = "internal server error (details in the server log)"
            del message  # out here neither the frame nor an exception's traceback holding it lives on
            await ws.send(reply)
            if pause:
                await asyncio.sleep(pause)

    def _decode(self, message: bytes) -> Any:
        request = unpackb(message, self.max_message_bytes)
        if isinstance(request, dict) and ("__ctrl__" in request or b"__ctrl__" in request):
            return CTRL  # openpi episode_start / episode_end markers
        return parse_observation(request, self.features)

    async def _answer(self, message: bytes | str, t0: float) -> bytes:
        if isinstance(message, str):
            raise RequestError("text frames are not accepted; send binary msgpack frames (openpi-client format)")
        if len(message) > self.max_message_bytes:
            raise RequestError(f"frame of {len(message)} bytes exceeds the limit of {self.max_message_bytes} bytes")
        obs = await asyncio.get_running_loop().run_in_executor(self._decoder, self._decode, message)
        del message
        if obs is CTRL:
            return packb({"ok": True})
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
                groups.setdefault(tuple(obs[k].shape for k in self.features.image_keys), []).append(item)
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
        batch = stack_observations([obs for obs, _, _ in group], self.features)
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
        if actions.shape[0] != len(batch[self.features.language.name]) or not np.isfinite(actions).all():
            raise RuntimeError(f"policy returned actions of shape {actions.shape} with non-finite values or wrong batch")
        return actions

    def _warmup(self) -> None:
        """One predict on a dummy observation: loads the language model, warms the network."""
        config = getattr(self.policy, "config", None)
        size = int(self.metadata.get("image_size") or getattr(config, "image_size", 0) or 128)
        obs = self.features.example(None, size, text="warm up")  # black images, zero states
        t0 = time.perf_counter()
        try:
            self._predict(stack_observations([obs], self.features))
        except Exception as e:  # serve anyway: the error will name itself on each request
            log.warning("warm-up predict failed (%s: %s); serving anyway", type(e).__name__, str(e)[:200])
            return
        log.info("warm-up predict took %.1f s", time.perf_counter() - t0)

    # -- lifecycle ---------------------------------------------------------------------
    async def serve(self, install_signal_handlers: bool = False) -> None:
        """Serve until stop() (or SIGTERM / Ctrl-C when install_signal_handlers).

        The socket opens first (``listening``; /healthz and handshakes answer 503), then the
        warm-up predict runs, then ``ready`` is set and clients are admitted.
        """
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._queue, self._stop = asyncio.Queue(), asyncio.Event()
        if install_signal_handlers:
            import signal

            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._stop.set)
        batcher = asyncio.create_task(self._batch_loop())
        try:
            async with serve(self._handle, self.host, self.port, process_request=self._process_request,
                             max_size=self.max_message_bytes, max_queue=MAX_QUEUED_FRAMES, compression=None,
                             ping_interval=None) as server:
                self.port = server.sockets[0].getsockname()[1]
                self.listening.set()
                if self.warmup:
                    log.info("listening on ws://%s:%d; warming up (healthz 503 until ready)", self.host, self.port)
                    warm = self._loop.run_in_executor(self._executor, self._warmup)
                    stop = asyncio.ensure_future(self._stop.wait())
                    await asyncio.wait([warm, stop], return_when=asyncio.FIRST_COMPLETED)
                    stop.cancel()
                if not self._stop.is_set():
                    log.info("serving on ws://%s:%d (steps=%d, churn=%.2f, at most %d connections)", self.host, self.port,
                             self.steps, self.churn, self.max_connections)
                    self.ready.set()
                await self._stop.wait()
                log.info("shutting down: %s", self.stats)
        finally:
            batcher.cancel()
            self._executor.shutdown(wait=True)
            self._decoder.shutdown(wait=True)

    def stop(self) -> None:
        """Ask a running server to shut down (thread-safe)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def start_in_thread(self, timeout: float = 60.0, wait_ready: bool = True) -> threading.Thread:
        """Run the server in a daemon thread (tests, benchmarks); returns once it is ready
        (warmed up), or once it listens when ``wait_ready`` is False."""
        thread = threading.Thread(target=lambda: asyncio.run(self.serve()), daemon=True, name="policy-server")
        thread.start()
        event = self.ready if wait_ready else self.listening
        if not event.wait(timeout):
            raise RuntimeError(f"server did not become {'ready' if wait_ready else 'listening'} on {self.host}:{self.port} "
                               f"within {timeout} s")
        return thread
