"""The wire format of openpi-client, and validation of incoming observations.

Frames are binary msgpack. numpy arrays travel as maps with *bytes* keys
``{b"__ndarray__": True, b"data": bytes, b"dtype": dtype.str, b"shape": shape}`` and numpy
scalars as ``{b"__npgeneric__": True, b"data": item, b"dtype": dtype.str}``, exactly as
openpi_client.msgpack_numpy writes them, so existing robot controllers talk to our server.

Decoding is hardened for untrusted input. Before any Python object is built, ``scan_frame``
walks the msgpack headers (never the payload bytes) and refuses a frame with more than
``MAX_OBJECTS`` objects, containers nested deeper than ``MAX_DEPTH``, ext types, non-string
map keys, truncated or trailing bytes; its cost is bounded by MAX_OBJECTS whatever the frame
size. Arrays must carry a numeric/bool dtype and a buffer whose size matches the shape. Any
problem raises ``RequestError`` with one short line meant for the client (``clip`` bounds
everything echoed from the request).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

from policy.features import (DEFAULT_FEATURES, IMAGE, LANGUAGE, OBJECTS, PROPRIO_LAYOUTS, STATE, FeatureSpec, describe_state,
                             stack_objects)

_ALLOWED_KINDS = "biuf"  # bool, int, uint, float
MAX_OBJECTS = 4096  # msgpack objects in one frame (an openpi observation holds about 60)
MAX_DEPTH = 16  # container nesting (an openpi observation nests 3 deep)
MAX_DIMS = 8  # dimensions of an array
MAX_ERROR_CHARS = 300  # longest error text sent to a client


class RequestError(ValueError):
    """A bad request; its message is sent to the client as a text frame."""


def clip(value: Any, limit: int = 40) -> str:
    """repr() of something the client sent, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# msgpack first byte -> bytes of payload after it, for the fixed-size scalars
_FIXED = {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}
_STR_BIN = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}  # -> bytes of the length field
_EXT = frozenset((0xC7, 0xC8, 0xC9, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8))


def scan_frame(data: bytes, max_objects: int = MAX_OBJECTS, max_depth: int = MAX_DEPTH) -> None:
    """Check a msgpack frame's structure without building it; raise RequestError if it is hostile.

    Walks the type headers only (str/bin payloads are skipped, not read), so the cost is at
    most ``max_objects`` steps however large or deep the frame.
    """
    n, i, count, depth = len(data), 0, 0, 0
    stack: list[tuple[int, bool]] = []
    remaining, in_map = 1, False
    truncated = RequestError("frame is truncated msgpack; send one complete openpi-client msgpack frame")
    while True:
        if remaining == 0:
            if not stack:
                break
            remaining, in_map = stack.pop()
            depth -= 1
            continue
        if i >= n:
            raise truncated
        is_key = in_map and remaining % 2 == 0
        b = data[i]
        i += 1
        remaining -= 1
        count += 1
        if count > max_objects:
            raise RequestError(f"frame holds more than {max_objects} msgpack objects; send arrays as numpy "
                               "(openpi msgpack_numpy), not nested lists")
        if is_key and not (0xA0 <= b <= 0xBF or b in _STR_BIN):
            raise RequestError("msgpack map keys must be strings (str or bin)")
        if b <= 0x7F or b >= 0xE0:
            continue
        if b in _FIXED:
            i += _FIXED[b]
            continue
        if 0xA0 <= b <= 0xBF:
            i += b & 0x1F
            continue
        if b in _STR_BIN:
            w = _STR_BIN[b]
            if i + w > n:
                raise truncated
            i += w + int.from_bytes(data[i:i + w], "big")
            continue
        if 0x80 <= b <= 0x9F:
            size, is_map = b & 0x0F, b < 0x90
        elif b in (0xDC, 0xDD, 0xDE, 0xDF):
            w = 2 if b in (0xDC, 0xDE) else 4
            if i + w > n:
                raise truncated
            size, is_map = int.from_bytes(data[i:i + w], "big"), b >= 0xDE
            i += w
        elif b in _EXT:
            raise RequestError("msgpack ext types are not accepted; send plain msgpack (openpi-client format)")
        else:  # 0xC1, never used by msgpack
            raise RequestError("frame is not valid msgpack (byte 0xc1); send openpi-client msgpack frames")
        items = 2 * size if is_map else size
        if items > max_objects:
            raise RequestError(f"a msgpack {'map' if is_map else 'array'} of {size} entries exceeds the limit of "
                               f"{max_objects} objects per frame")
        if items:
            if depth + 1 > max_depth:
                raise RequestError(f"msgpack containers nest deeper than {max_depth} levels; send a flat observation map")
            stack.append((remaining, in_map))
            remaining, in_map = items, is_map
            depth += 1
    if i > n:
        raise truncated
    if i < n:
        raise RequestError(f"frame holds {n - i} bytes after its msgpack object; send one object per frame")


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in ("V", "O", "c"):
        raise ValueError(f"cannot send numpy dtype {obj.dtype} over the wire")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": np.ascontiguousarray(obj).tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def _decode_dtype(raw: Any) -> np.dtype:
    if raw is None:
        raise RequestError("array dtype missing; an __ndarray__ map needs b'dtype' such as '<f4' or '|u1'")
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    if not isinstance(raw, str) or len(raw) > 8:
        raise RequestError(f"bad array dtype {clip(raw)}; send a numeric numpy dtype string such as '<f4' or '|u1'")
    try:
        dtype = np.dtype(raw)
    except (TypeError, ValueError, SyntaxError):
        raise RequestError(f"bad array dtype {clip(raw)}; send a numeric numpy dtype such as '<f4' or '|u1'") from None
    if dtype.kind not in _ALLOWED_KINDS:
        raise RequestError(f"array dtype {dtype} is not allowed; send bool, integer or float arrays")
    return dtype


def _unpack_hook(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        if obj[b"__ndarray__"] is not True:
            raise RequestError(f"__ndarray__ is {clip(obj[b'__ndarray__'])}; it marks a numpy array and must be True")
        dtype = _decode_dtype(obj.get(b"dtype"))
        shape, data = obj.get(b"shape"), obj.get(b"data")
        if (not isinstance(shape, (list, tuple)) or len(shape) > MAX_DIMS
                or not all(type(s) is int and 0 <= s < 2**31 for s in shape)):
            raise RequestError(f"bad array shape {clip(shape)}; expected a list of at most {MAX_DIMS} non-negative integers")
        if not isinstance(data, bytes):
            raise RequestError(f"array data must be bytes, got {type(data).__name__}")
        expected = math.prod(shape) * dtype.itemsize
        if len(data) != expected:
            raise RequestError(f"array data holds {len(data)} bytes; shape {list(shape)} of {dtype} needs {clip(expected, 20)}")
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if b"__npgeneric__" in obj:
        if obj[b"__npgeneric__"] is not True:
            raise RequestError(f"__npgeneric__ is {clip(obj[b'__npgeneric__'])}; it marks a numpy scalar and must be True")
        dtype = _decode_dtype(obj.get(b"dtype"))
        value = obj.get(b"data")
        if type(value) not in (bool, int, float):
            raise RequestError(f"numpy scalar data must be a number, got {type(value).__name__}")
        try:
            return dtype.type(value)
        except (TypeError, ValueError, OverflowError):
            raise RequestError(f"numpy scalar {clip(value, 30)} does not fit dtype {dtype}") from None
    return obj


def packb(obj: Any) -> bytes:
    """Serialise a (nested) dict with numpy arrays to a msgpack frame."""
    return msgpack.packb(obj, default=_pack_default, use_bin_type=True)


def _refuse_ext(code: int, data: bytes) -> Any:
    raise RequestError("msgpack ext types are not accepted; send plain msgpack (openpi-client format)")


def unpackb(data: bytes, max_len: int = 64 * 1024 * 1024, max_objects: int = MAX_OBJECTS) -> Any:
    """Decode a msgpack frame with numpy arrays. Raises RequestError on malformed input.

    The frame is scanned first (``scan_frame``), so hostile structure costs at most
    ``max_objects`` steps and builds no objects.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise RequestError(f"frame must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_len:
        raise RequestError(f"frame of {len(data)} bytes exceeds the limit of {max_len} bytes")
    scan_frame(data, max_objects)
    try:
        return msgpack.unpackb(
            data, object_hook=_unpack_hook, ext_hook=_refuse_ext, raw=False, strict_map_key=False,
            max_bin_len=max_len, max_str_len=max_len, max_array_len=max_objects, max_map_len=max_objects,
            max_ext_len=0,
        )
    except RequestError:
        raise
    except UnicodeDecodeError:
        raise RequestError("a msgpack str is not valid UTF-8; send text as UTF-8 str or as bin") from None
    except Exception as e:  # msgpack raises several types on garbage; unhashable keys raise TypeError
        raise RequestError(f"frame is not valid msgpack ({type(e).__name__}); send openpi-client msgpack frames") from None


# --- observations ---------------------------------------------------------------------

# The package's keys are the observation features of the policy's FeatureSpec (default
# policy.features.DEFAULT_FEATURES; the server passes its policy's ``config.spec``).
# openpi's LIBERO keys are aliases: two cameras and the prompt by name, and
# "observation/state" = the state features concatenated in spec order, split back here:
# joint_states (7) + gripper_states (2) for the joints layout, ee_pos (3) + ee_ori (3) +
# gripper_states (2) for the eef layout (what openpi's LIBERO example sends).
FEATURES = DEFAULT_FEATURES
OPENPI_KEYS = {"observation/image": "agentview_rgb", "observation/wrist_image": "eye_in_hand_rgb",
               "prompt": FEATURES.language.name}
STATE_KEY = "observation/state"
OPENPI_OBSERVATION_KEYS = ("observation/image", "observation/wrist_image", STATE_KEY, "prompt")


def openpi_aliases(spec: FeatureSpec = DEFAULT_FEATURES) -> dict[str, str]:
    """openpi key -> package key, for the aliases whose target ``spec`` declares."""
    aliases = {**OPENPI_KEYS, "prompt": spec.language.name}
    return {k: v for k, v in aliases.items() if v in spec.observation_keys}


def accepted_keys(spec: FeatureSpec = DEFAULT_FEATURES) -> tuple[str, ...]:
    """The keys an observation for a policy with ``spec`` may hold: the package keys, the openpi aliases."""
    return (*spec.observation_keys, *openpi_aliases(spec), *((STATE_KEY,) if spec.states else ()))


STATE_NAMES = frozenset(f.name for feats in PROPRIO_LAYOUTS.values() for f in feats)  # of any layout
IMAGE_KEYS = FEATURES.image_keys
PACKAGE_KEYS = FEATURES.observation_keys
ACCEPTED_KEYS = accepted_keys(FEATURES)
assert set(OPENPI_KEYS.values()) <= set(PACKAGE_KEYS), "an openpi alias names a key the feature spec does not declare"


def _as_key(k: Any) -> str:
    return k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)


def _vector(name: str, value: Any, size: int, layout: str = "") -> np.ndarray:
    try:
        arr = np.asarray(value) if isinstance(value, (np.ndarray, list, tuple, np.generic)) else None
    except (ValueError, TypeError, OverflowError):  # ragged nesting, more than numpy's 64 dimensions
        raise RequestError(f"{name} must be a flat list or array of {size} numbers; got a ragged or too deeply nested list") from None
    if arr is None or arr.dtype.kind not in "iuf":
        raise RequestError(f"{name} must be a numeric array of {size} values, got {type(value).__name__}")
    if arr.size != size:
        if layout:
            raise RequestError(f"{name} has {arr.size} values; this policy expects {layout}")
        raise RequestError(f"{name} must hold {size} values, got shape {clip(arr.shape)}")
    arr = arr.astype(np.float32).reshape(-1)
    if not np.isfinite(arr).all():
        raise RequestError(f"{name} contains NaN or inf")
    return arr


def _image(name: str, value: Any) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise RequestError(f"{name} must be a numpy uint8 array (H, W, 3), got {type(value).__name__}")
    if value.dtype != np.uint8:
        raise RequestError(f"{name} has dtype {value.dtype}; send uint8 (H, W, 3) images")
    if value.ndim != 3 or value.shape[-1] != 3 or not (16 <= value.shape[0] <= 1024 and 16 <= value.shape[1] <= 1024):
        raise RequestError(f"{name} has shape {clip(value.shape)}; send (H, W, 3) with 16 <= H, W <= 1024")
    return value


MAX_SCENE_OBJECTS = 64  # rows of object_poses one observation may hold


def _objects(spec: FeatureSpec, poses: Any, names: Any) -> tuple[np.ndarray, list[str]]:
    """Validated object tokens of one observation: poses (N, k) float32 and N names."""
    poses_f, names_f = spec.objects  # type: ignore[misc]
    k = poses_f.shape[1]
    if not isinstance(poses, (np.ndarray, list, tuple)):
        raise RequestError(f"{poses_f.name} must be a numeric array (N objects, {k}), got {type(poses).__name__}")
    try:
        arr = np.asarray(poses)
    except (ValueError, TypeError, OverflowError):
        raise RequestError(f"{poses_f.name} must be a numeric array (N objects, {k}); got a ragged list") from None
    if arr.dtype.kind not in "iuf" or arr.ndim != 2 or arr.shape[1] != k or not 1 <= arr.shape[0] <= MAX_SCENE_OBJECTS:
        raise RequestError(f"{poses_f.name} has shape {clip(arr.shape)} dtype {arr.dtype}; send (N, {k}) numbers, "
                           f"1 <= N <= {MAX_SCENE_OBJECTS} (per object: pos 3, quat 4, pos in the gripper frame 3)")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise RequestError(f"{poses_f.name} contains NaN or inf")
    if not isinstance(names, (list, tuple)) or len(names) != len(arr):
        got = f"{len(names)} names" if isinstance(names, (list, tuple)) else type(names).__name__
        raise RequestError(f"{names_f.name} must be a list of {len(arr)} object names (one per row of "
                           f"{poses_f.name}), got {got}")
    texts = [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]
    if not all(isinstance(n, str) and 0 < len(n.strip()) <= 100 for n in texts):
        raise RequestError(f"{names_f.name} must hold non-empty strings of at most 100 characters "
                           "(the simulator's names, e.g. akita_black_bowl_1)")
    return arr, list(texts)


def parse_observation(obs: Any, spec: FeatureSpec = DEFAULT_FEATURES) -> dict[str, Any]:
    """Validate one request and return the policy observation (package keys, unbatched).

    Accepts the package's keys (the observation features of ``spec``, by default
    agentview_rgb, eye_in_hand_rgb, joint_states, gripper_states, language) or openpi's
    LIBERO keys (observation/image, observation/wrist_image, observation/state = the state
    features concatenated in spec order, prompt). Images are upright uint8 (H, W, 3), as
    openpi's LIBERO example sends them (rotated 180 degrees from render). A state of the
    wrong layout gets one error naming the layout ``spec`` expects.
    """
    if not isinstance(obs, Mapping):
        raise RequestError(f"request must be a msgpack map of observation keys, got {type(obs).__name__}")
    keyed: dict[str, Any] = {}
    for k, v in obs.items():
        key = _as_key(k)
        if key in keyed:
            raise RequestError(f"observation key {clip(key)} given twice (as str and as bytes); send it once")
        keyed[key] = v
    obs = keyed
    accepted, aliases = accepted_keys(spec), openpi_aliases(spec)
    unknown = sorted(set(obs) - set(accepted))
    if unknown:
        shown = ", ".join(clip(k) for k in unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        layout = ""
        if any(k in STATE_NAMES for k in unknown):
            layout = f"; this policy expects {describe_state(spec)}"
        raise RequestError(f"unknown observation key(s) {shown}{layout}; accepted: {list(accepted)}")
    out: dict[str, Any] = {}
    for key, value in obs.items():
        target = aliases.get(key, key)
        if key == STATE_KEY:
            state = _vector(key, value, spec.state_dim, describe_state(spec))
            offsets = np.cumsum([0, *(f.size for f in spec.states)])
            pairs = [(f.name, state[a:b]) for f, a, b in zip(spec.states, offsets[:-1], offsets[1:])]
        else:
            pairs = [(target, value)]
        for name, val in pairs:
            if name in out:
                raise RequestError(f"observation gives {name!r} twice (package key and openpi key); send one")
            out[name] = val
    package_keys = spec.observation_keys
    missing = [k for k in package_keys if k not in out]
    if missing:
        raise RequestError(f"observation lacks {missing}; send {list(package_keys)} or the openpi LIBERO keys")
    for f in spec.observation:  # in spec order: images, states, objects, language
        if f.kind == IMAGE:
            out[f.name] = _image(f.name, out[f.name])
        elif f.kind == STATE:
            out[f.name] = _vector(f.name, out[f.name], f.size)
        elif f.kind == OBJECTS:
            names = spec.objects[1].name  # type: ignore[index]
            out[f.name], out[names] = _objects(spec, out[f.name], out[names])
        elif f.kind == LANGUAGE:
            lang = out[f.name]
            if not isinstance(lang, str) or not lang.strip() or len(lang) > 1000:
                raise RequestError("language/prompt must be a non-empty string of at most 1000 characters")
    return out


def stack_observations(items: list[dict[str, Any]], spec: FeatureSpec = DEFAULT_FEATURES) -> dict[str, Any]:
    """Stack validated single observations into a policy batch (B, ...); object tokens are
    padded to the batch's largest scene (zero rows named "", which the policy masks out)."""
    batch: dict[str, Any] = {f.name: np.stack([o[f.name] for o in items]) for f in spec.observation
                             if f.kind in (IMAGE, STATE)}
    if spec.objects:
        poses, names = spec.objects
        batch[poses.name], batch[names.name] = stack_objects([o[poses.name] for o in items],
                                                             [o[names.name] for o in items])
    batch[spec.language.name] = [o[spec.language.name] for o in items]
    return batch
