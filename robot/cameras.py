"""RealSense colour cameras by serial number: one reader thread per camera keeps only the latest frame.

    rig = CameraRig(cfg.cameras)                 # opens every camera, starts its reader
    images, stale = rig.latest()                 # {"wrist": uint8[H, W, 3] RGB, ...}, names of stale cameras
    rig.close()

Each frame is cropped (per camera), resized with OpenCV to the configured size and stamped with the host time
it arrived. A camera whose frames stop (a `wait_for_frames` timeout, a USB hiccup) is reported, stopped and
reopened by its reader; until a new frame arrives `latest()` names it as stale instead of silently handing
out the old image again. The hardware seam is `open_pipeline(cfg)`: anything with pyrealsense2's
`wait_for_frames(timeout_ms)` / `stop()`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, NamedTuple, Protocol

import cv2
import numpy as np

from q2rl.robot.real_config import CameraConfig

log = logging.getLogger(__name__)


class CameraError(RuntimeError):
    """A camera could not be opened or delivered no usable frame."""


class Frame(NamedTuple):
    image: np.ndarray  # uint8[height, width, 3], RGB
    timestamp: float  # host time.monotonic() when the frame arrived
    device_timestamp_ms: float  # the camera's own timestamp
    number: int  # the camera's frame counter


class CameraStatus(NamedTuple):
    name: str
    frames: int
    stalls: int
    reopens: int
    age_s: float  # seconds since the latest frame (inf before the first)
    last_error: str


class Pipeline(Protocol):
    """The part of pyrealsense2.pipeline we use (started, streaming colour)."""

    def wait_for_frames(self, timeout_ms: int) -> Any: ...

    def stop(self) -> None: ...


def open_realsense_pipeline(cfg: CameraConfig) -> Pipeline:
    """Start a pyrealsense2 pipeline streaming RGB colour from the camera with serial `cfg.serial`."""
    try:
        import pyrealsense2 as rs
    except ImportError as e:
        raise CameraError(
            f"pyrealsense2 is not installed ({e}); pip install -e '.[robot]' (needs apt libusb-1.0-0)"
        ) from None
    connected = [d.get_info(rs.camera_info.serial_number) for d in rs.context().query_devices()]
    if cfg.serial not in connected:
        raise CameraError(
            f"camera {cfg.name!r}: serial {cfg.serial} is not connected (connected: {connected or 'none'}); "
            "check the USB 3 cable and env.franka.cameras[].serial"
        )
    config = rs.config()
    config.enable_device(cfg.serial)
    config.enable_stream(rs.stream.color, cfg.capture_width, cfg.capture_height, rs.format.rgb8, cfg.fps)
    pipeline = rs.pipeline()
    try:
        pipeline.start(config)
    except RuntimeError as e:
        raise CameraError(
            f"camera {cfg.name!r} ({cfg.serial}) refused {cfg.capture_width}x{cfg.capture_height}@{cfg.fps} RGB: {e}"
        ) from None
    return pipeline


def crop_and_resize(image: np.ndarray, crop: tuple[int, ...], height: int, width: int) -> np.ndarray:
    """Crop (x0, y0, x1, y1) if given, then resize to height x width (INTER_AREA when shrinking)."""
    if crop:
        x0, y0, x1, y1 = crop
        image = image[y0:y1, x0:x1]
    if image.shape[:2] == (height, width):
        return np.ascontiguousarray(image)
    shrinking = image.shape[0] > height or image.shape[1] > width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def _color_image(frameset: Any, cfg: CameraConfig) -> tuple[np.ndarray, float, int]:
    frame = frameset.get_color_frame()
    if not frame:
        raise CameraError("frameset without a colour frame")
    image = np.asanyarray(frame.get_data())
    if image.shape != (cfg.capture_height, cfg.capture_width, 3) or image.dtype != np.uint8:
        raise CameraError(
            f"expected uint8[{cfg.capture_height}, {cfg.capture_width}, 3] RGB, got {image.dtype}{list(image.shape)}"
        )
    return image, float(frame.get_timestamp()), int(frame.get_frame_number())


class RealSenseCamera:
    """One camera and its reader thread; `latest()` returns the newest frame or raises if it is stale."""

    def __init__(
        self,
        cfg: CameraConfig,
        open_pipeline: Callable[[CameraConfig], Pipeline] = open_realsense_pipeline,
        reopen_delay_s: float = 0.5,
    ):
        self.cfg = cfg
        self._open_pipeline = open_pipeline
        self._reopen_delay_s = reopen_delay_s
        self._lock = threading.Lock()
        self._frame: Frame | None = None
        self._frames = self._stalls = self._reopens = 0
        self._last_error = ""
        self._stop = threading.Event()
        self._pipeline: Pipeline | None = open_pipeline(cfg)  # fail loudly at start-up, not in the thread
        self._thread = threading.Thread(target=self._run, name=f"camera-{cfg.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last_number = None
        while not self._stop.is_set():
            if self._pipeline is None:
                self._reopen()
                continue
            try:
                frameset = self._pipeline.wait_for_frames(int(self.cfg.wait_timeout_s * 1000))
                image, device_ms, number = _color_image(frameset, self.cfg)
            except (RuntimeError, CameraError) as e:  # pyrealsense2 raises RuntimeError on a timeout
                if self._stop.is_set():
                    break
                self._report_stall(str(e))
                continue
            if number == last_number:  # the same frame again is not news
                continue
            last_number = number
            processed = crop_and_resize(image, self.cfg.crop, self.cfg.height, self.cfg.width)
            with self._lock:
                self._frame = Frame(processed, time.monotonic(), device_ms, number)
                self._frames += 1

    def _report_stall(self, error: str) -> None:
        with self._lock:
            self._stalls += 1
            self._last_error = error
        log.warning("camera %s (%s) stalled: %s; reopening", self.cfg.name, self.cfg.serial, error)
        pipeline, self._pipeline = self._pipeline, None
        try:
            pipeline.stop()
        except RuntimeError as e:
            log.warning("camera %s: stop failed: %s", self.cfg.name, e)

    def _reopen(self) -> None:
        if self._stop.wait(self._reopen_delay_s):
            return
        try:
            self._pipeline = self._open_pipeline(self.cfg)
        except (RuntimeError, CameraError) as e:
            with self._lock:
                self._last_error = f"reopen failed: {e}"
            return
        with self._lock:
            self._reopens += 1

    def latest(self) -> Frame:
        """The newest frame; CameraError if there is none yet or it is older than stale_after_s."""
        with self._lock:
            frame, error = self._frame, self._last_error
        if frame is None:
            raise CameraError(f"camera {self.cfg.name!r}: no frame yet{f' ({error})' if error else ''}")
        age = time.monotonic() - frame.timestamp
        if age > self.cfg.stale_after_s:
            raise CameraError(f"camera {self.cfg.name!r}: latest frame is {age:.2f} s old ({error or 'no error'})")
        return frame

    def wait_for_frame(self, timeout_s: float) -> Frame:
        """Block until a fresh frame exists (start-up), or raise CameraError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.latest()
            except CameraError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)

    def status(self) -> CameraStatus:
        with self._lock:
            age = time.monotonic() - self._frame.timestamp if self._frame else float("inf")
            return CameraStatus(self.cfg.name, self._frames, self._stalls, self._reopens, age, self._last_error)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.cfg.wait_timeout_s + 1.0)
        if self._pipeline is not None:
            try:
                self._pipeline.stop()
            except RuntimeError:
                pass
            self._pipeline = None


class CameraRig:
    """All configured cameras; `latest()` gives one image per camera plus the names of stale ones."""

    def __init__(
        self,
        cfgs: tuple[CameraConfig, ...],
        open_pipeline: Callable[[CameraConfig], Pipeline] = open_realsense_pipeline,
        startup_timeout_s: float = 5.0,
    ):
        self.cameras: list[RealSenseCamera] = []
        try:
            for cfg in cfgs:
                self.cameras.append(RealSenseCamera(cfg, open_pipeline))
            for camera in self.cameras:
                camera.wait_for_frame(startup_timeout_s)
        except Exception:
            self.close()
            raise
        self._last_images = {c.cfg.name: c.latest().image for c in self.cameras}

    def latest(self) -> tuple[dict[str, np.ndarray], list[str]]:
        """Newest image per camera; a stale camera keeps its previous image *and* is named in the list."""
        stale = []
        for camera in self.cameras:
            try:
                self._last_images[camera.cfg.name] = camera.latest().image
            except CameraError:
                stale.append(camera.cfg.name)
        return dict(self._last_images), stale

    def status(self) -> list[CameraStatus]:
        return [c.status() for c in self.cameras]

    def close(self) -> None:
        for camera in self.cameras:
            camera.close()
