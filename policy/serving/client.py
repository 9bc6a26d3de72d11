"""Client side of the policy server (openpi's wire format; no openpi install needed).

``PolicyClient`` has openpi's WebsocketClientPolicy calls (``infer``,
``get_server_metadata``, ``reset``); ``ActionChunker`` hands a fixed-rate controller one
action per tick and asks for the next chunk early enough to hide the round trip.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from policy.serving.wire import packb, unpackb


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
                if e.response.status_code == 503 and time.monotonic() < deadline:  # warming up or full: retry
                    time.sleep(0.5)
                    continue
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
