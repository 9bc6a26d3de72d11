"""The wire format of openpi-client, and validation of incoming observations.

Frames are binary msgpack. numpy arrays travel as maps with *bytes* keys
``{b"__ndarray__": True, b"data": bytes, b"dtype": dtype.str, b"shape": shape}`` and numpy
scalars as ``{b"__npgeneric__": True, b"data": item, b"dtype": dtype.str}``, exactly as
openpi_client.msgpack_numpy writes them, so existing robot controllers talk to our server.

Decoding is hardened for untrusted input: only numeric/bool dtypes, a buffer whose size
matches the shape, bounded container sizes. Any problem raises ``RequestError`` with a
short message meant for the client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

_ALLOWED_KINDS = "biuf"  # bool, int, uint, float


class RequestError(ValueError):
    """A bad request; its message is sent to the client as a text frame."""


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in ("V", "O", "c"):
        raise ValueError(f"cannot send numpy dtype {obj.dtype} over the wire")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": np.ascontiguousarray(obj).tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def _decode_dtype(raw: Any) -> np.dtype:
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    try:
        dtype = np.dtype(raw)
    except (TypeError, ValueError):
        raise RequestError(f"bad array dtype {raw!r}; send a numeric numpy dtype such as '<f4' or '|u1'") from None
    if dtype.kind not in _ALLOWED_KINDS:
        raise RequestError(f"array dtype {dtype} is not allowed; send bool, integer or float arrays")
    return dtype


def _unpack_hook(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        dtype = _decode_dtype(obj.get(b"dtype"))
        shape, data = obj.get(b"shape"), obj.get(b"data")
        if not isinstance(shape, (list, tuple)) or not all(isinstance(s, int) and 0 <= s < 2**31 for s in shape):
            raise RequestError(f"bad array shape {shape!r}; expected a list of non-negative integers")
        if not isinstance(data, bytes):
            raise RequestError("array data must be bytes")
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if len(data) != expected:
            raise RequestError(f"array data holds {len(data)} bytes; shape {list(shape)} of {dtype} needs {expected}")
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if b"__npgeneric__" in obj:
        dtype = _decode_dtype(obj.get(b"dtype"))
        try:
            return dtype.type(obj.get(b"data"))
        except (TypeError, ValueError, OverflowError):
            raise RequestError(f"bad numpy scalar of dtype {dtype}") from None
    return obj


def packb(obj: Any) -> bytes:
    """Serialise a (nested) dict with numpy arrays to a msgpack frame."""
    return msgpack.packb(obj, default=_pack_default, use_bin_type=True)


def unpackb(data: bytes, max_len: int = 64 * 1024 * 1024) -> Any:
    """Decode a msgpack frame with numpy arrays. Raises RequestError on malformed input."""
    try:
        return msgpack.unpackb(
            data, object_hook=_unpack_hook, raw=False, strict_map_key=False,
            max_bin_len=max_len, max_str_len=max_len, max_array_len=100_000, max_map_len=10_000,
        )
    except RequestError:
        raise
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError, UnicodeDecodeError) as e:
        raise RequestError(f"frame is not valid msgpack ({type(e).__name__}); send openpi-client msgpack frames") from None
    except Exception as e:  # msgpack raises a few other types on garbage
        raise RequestError(f"frame is not valid msgpack ({type(e).__name__}); send openpi-client msgpack frames") from None


# --- observations ---------------------------------------------------------------------

# openpi LIBERO key -> package key. "observation/state" is joint_states (7) + gripper_states (2).
OPENPI_KEYS = {"observation/image": "agentview_rgb", "observation/wrist_image": "eye_in_hand_rgb", "prompt": "language"}
STATE_KEY = "observation/state"
IMAGE_KEYS = ("agentview_rgb", "eye_in_hand_rgb")
PACKAGE_KEYS = (*IMAGE_KEYS, "joint_states", "gripper_states", "language")
ACCEPTED_KEYS = (*PACKAGE_KEYS, *OPENPI_KEYS, STATE_KEY)


def _as_key(k: Any) -> str:
    return k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)


def _vector(name: str, value: Any, size: int) -> np.ndarray:
    arr = np.asarray(value) if isinstance(value, (np.ndarray, list, tuple, np.generic)) else None
    if arr is None or arr.dtype.kind not in "iuf":
        raise RequestError(f"{name} must be a numeric array of {size} values, got {type(value).__name__}")
    arr = arr.astype(np.float32).reshape(-1) if arr.size == size else None
    if arr is None:
        raise RequestError(f"{name} must hold {size} values, got shape {np.shape(value)}")
    if not np.isfinite(arr).all():
        raise RequestError(f"{name} contains NaN or inf")
    return arr


def _image(name: str, value: Any) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise RequestError(f"{name} must be a numpy uint8 array (H, W, 3), got {type(value).__name__}")
    if value.dtype != np.uint8:
        raise RequestError(f"{name} has dtype {value.dtype}; send uint8 (H, W, 3) images")
    if value.ndim != 3 or value.shape[-1] != 3 or not (16 <= value.shape[0] <= 1024 and 16 <= value.shape[1] <= 1024):
        raise RequestError(f"{name} has shape {value.shape}; send (H, W, 3) with 16 <= H, W <= 1024")
    return value


def parse_observation(obs: Any) -> dict[str, Any]:
    """Validate one request and return the policy observation (package keys, unbatched).

    Accepts the package's keys (agentview_rgb, eye_in_hand_rgb, joint_states, gripper_states,
    language) or openpi's LIBERO keys (observation/image, observation/wrist_image,
    observation/state = joint_states (7) + gripper_states (2), prompt). Images are upright
    uint8 (H, W, 3), as openpi's LIBERO example sends them (rotated 180 degrees from render).
    """
    if not isinstance(obs, Mapping):
        raise RequestError(f"request must be a msgpack map of observation keys, got {type(obs).__name__}")
    obs = {_as_key(k): v for k, v in obs.items()}
    unknown = sorted(set(obs) - set(ACCEPTED_KEYS))
    if unknown:
        raise RequestError(f"unknown observation key(s) {unknown}; accepted: {list(ACCEPTED_KEYS)}")
    out: dict[str, Any] = {}
    for key, value in obs.items():
        target = OPENPI_KEYS.get(key, key)
        if key == STATE_KEY:
            state = _vector(key, value, 9)
            pairs = [("joint_states", state[:7]), ("gripper_states", state[7:])]
        else:
            pairs = [(target, value)]
        for name, val in pairs:
            if name in out:
                raise RequestError(f"observation gives {name!r} twice (package key and openpi key); send one")
            out[name] = val
    missing = [k for k in PACKAGE_KEYS if k not in out]
    if missing:
        raise RequestError(f"observation lacks {missing}; send {list(PACKAGE_KEYS)} or the openpi LIBERO keys")
    for k in IMAGE_KEYS:
        out[k] = _image(k, out[k])
    out["joint_states"] = _vector("joint_states", out["joint_states"], 7)
    out["gripper_states"] = _vector("gripper_states", out["gripper_states"], 2)
    lang = out["language"]
    if not isinstance(lang, str) or not lang.strip() or len(lang) > 1000:
        raise RequestError("language/prompt must be a non-empty string of at most 1000 characters")
    return out


def stack_observations(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack validated single observations into a policy batch (B, ...)."""
    batch: dict[str, Any] = {k: np.stack([o[k] for o in items]) for k in (*IMAGE_KEYS, "joint_states", "gripper_states")}
    batch["language"] = [o["language"] for o in items]
    return batch
