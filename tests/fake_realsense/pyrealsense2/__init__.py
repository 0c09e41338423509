"""A stand-in for the pyrealsense2 module, for test processes: put tests/fake_realsense first on PYTHONPATH and a
q2rl process sees RealSense cameras (serials in $Q2RL_FAKE_REALSENSE_SERIALS, comma-separated; default "1") that
stream RGB frames at the requested size and rate. Only what robot/cameras.py uses, with pyrealsense2's names: the
thinnest seam under the real camera code (serial check, stream setup, reader thread, staleness, crop and resize)."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import numpy as np

camera_info = SimpleNamespace(serial_number="serial_number")
stream = SimpleNamespace(color="color")
format = SimpleNamespace(rgb8="rgb8")  # noqa: A001 - pyrealsense2's name


def _serials() -> list[str]:
    return [s for s in os.environ.get("Q2RL_FAKE_REALSENSE_SERIALS", "1").split(",") if s]


class _Device:
    def __init__(self, serial: str):
        self.serial = serial

    def get_info(self, what: str) -> str:
        assert what == camera_info.serial_number
        return self.serial


class context:  # noqa: N801 - pyrealsense2's name
    def query_devices(self) -> list[_Device]:
        return [_Device(s) for s in _serials()]


class config:  # noqa: N801
    def __init__(self):
        self.serial, self.size, self.fps = None, None, None

    def enable_device(self, serial: str) -> None:
        self.serial = serial

    def enable_stream(self, kind, width: int, height: int, fmt, fps: int) -> None:
        assert kind == stream.color and fmt == format.rgb8
        self.size, self.fps = (height, width), fps


class _Frame:
    def __init__(self, image: np.ndarray, number: int, fps: int):
        self._image, self._number, self._fps = image, number, fps

    def __bool__(self) -> bool:
        return True

    def get_data(self) -> np.ndarray:
        return self._image

    def get_timestamp(self) -> float:
        return 1000.0 * self._number / self._fps

    def get_frame_number(self) -> int:
        return self._number


class _Frameset:
    def __init__(self, frame: _Frame):
        self._frame = frame

    def get_color_frame(self) -> _Frame:
        return self._frame


class pipeline:  # noqa: N801
    def __init__(self):
        self.cfg, self.number, self.started = None, 0, False

    def start(self, cfg: config) -> None:
        if cfg.serial not in _serials():
            raise RuntimeError(f"No device connected with serial {cfg.serial}")
        self.cfg, self.started = cfg, True

    def wait_for_frames(self, timeout_ms: int = 5000) -> _Frameset:
        if not self.started:
            raise RuntimeError("wait_for_frames cannot be called before start()")
        time.sleep(1.0 / self.cfg.fps)
        self.number += 1
        h, w = self.cfg.size
        image = np.zeros((h, w, 3), np.uint8)
        image[..., 0] = self.number % 256  # a picture that changes from frame to frame
        image[:, : w // 2, 1] = 200
        return _Frameset(_Frame(image, self.number, self.cfg.fps))

    def stop(self) -> None:
        self.started = False
