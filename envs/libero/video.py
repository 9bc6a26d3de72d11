"""Video in and out for LeRobot datasets, through the ffmpeg binary that imageio-ffmpeg ships
(already a dependency: no PyAV, no torchvision, no torchcodec).

``encode_frames`` streams (H, W, 3) uint8 frames into an mp4 (LeRobot's default settings:
AV1 via libsvtav1, yuv420p, a keyframe every 2 frames, crf 30); ``decode_frames`` streams
them back, every frame in order (no resampling: ``-fps_mode passthrough``); ``decode_image``
reads one PNG/JPEG (LeRobot's ``image`` features keep such bytes in the parquet files).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

CODECS = {"libsvtav1": "av1", "libaom-av1": "av1", "libx264": "h264", "h264": "h264", "libx265": "hevc", "hevc": "hevc"}
DEFAULT_CODEC = "libsvtav1"  # LeRobot's default (lerobot.datasets.video_utils.encode_video_frames)


def _ffmpeg():
    try:
        import imageio_ffmpeg
    except ImportError:
        raise ValueError("LeRobot videos need the ffmpeg of imageio-ffmpeg: pip install imageio-ffmpeg") from None
    return imageio_ffmpeg


class VideoWriter:
    """An mp4 being written, frame by frame ((H, W, 3) uint8, one size); ``close()`` finishes it."""

    def __init__(self, path: str | Path, fps: float, codec: str = DEFAULT_CODEC, crf: int = 30, gop: int = 2) -> None:
        if codec not in CODECS:
            raise ValueError(f"video codec {codec!r} is not one of {', '.join(CODECS)}")
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1: errors only (its banner goes to stderr otherwise)
        self.path, self.fps, self.codec, self.frames = Path(path), fps, codec, 0
        self._params = ["-g", str(gop), "-crf", str(crf)] + (["-preset", "8"] if codec == "libsvtav1" else [])
        self._gen = None

    def add(self, frames: Iterable[np.ndarray]) -> None:
        for frame in frames:
            frame = np.ascontiguousarray(frame, dtype=np.uint8)
            if self._gen is None:
                h, w = frame.shape[:2]
                self._gen = _ffmpeg().write_frames(str(self.path), (w, h), fps=self.fps, codec=self.codec, pix_fmt_out="yuv420p",
                                                   quality=None, macro_block_size=1, ffmpeg_log_level="error",
                                                   output_params=self._params)
                self._gen.send(None)
            self._gen.send(frame.tobytes())
            self.frames += 1

    def close(self) -> int:
        if self._gen is not None:
            self._gen.close()
            self._gen = None
        return self.frames


def encode_frames(path: str | Path, frames: Iterable[np.ndarray], fps: float, codec: str = DEFAULT_CODEC, crf: int = 30,
                  gop: int = 2) -> int:
    """Write ``frames`` ((H, W, 3) uint8, one size) to the mp4 ``path``; returns the frame count."""
    writer = VideoWriter(path, fps, codec, crf, gop)
    try:
        writer.add(frames)
    finally:
        n = writer.close()
    return n


def decode_frames(path: str | Path) -> Iterator[np.ndarray]:
    """Every frame of the video ``path`` in order, (H, W, 3) uint8 RGB."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"video {path} does not exist")
    gen = _ffmpeg().read_frames(str(path), pix_fmt="rgb24", output_params=["-fps_mode", "passthrough"])
    meta = next(gen)
    w, h = meta["size"]
    try:
        for raw in gen:
            yield np.frombuffer(raw, np.uint8).reshape(h, w, 3)
    finally:
        gen.close()


def decode_image(data: bytes) -> np.ndarray:
    """PNG/JPEG bytes -> (H, W, 3) uint8 RGB."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
