"""RealSense cameras with a fake device at the pyrealsense2 pipeline seam: real numpy frames, real OpenCV,
real reader threads; stalls are reported and the camera reopened, stale frames are flagged, never repeated."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from q2rl.config import from_dict
from q2rl.robot.cameras import CameraError, CameraRig, RealSenseCamera, crop_and_resize
from q2rl.robot.real_config import CameraConfig


class FakeColorFrame:
    def __init__(self, image: np.ndarray, number: int):
        self._image, self._number = image, number

    def __bool__(self) -> bool:
        return True

    def get_data(self) -> np.ndarray:
        return self._image

    def get_timestamp(self) -> float:
        return 1000.0 * self._number / 30.0

    def get_frame_number(self) -> int:
        return self._number


class FakeFrameset:
    def __init__(self, frame: FakeColorFrame):
        self._frame = frame

    def get_color_frame(self) -> FakeColorFrame:
        return self._frame


class FakeDevice:
    """A camera on a USB bus: streams RGB frames (red = frame number) until told to stall or freeze."""

    def __init__(self, height: int = 48, width: int = 64, period_s: float = 0.01):
        self.height, self.width, self.period_s = height, width, period_s
        self.opens = 0
        self.stalled = threading.Event()
        self.frozen = False  # keeps delivering the same frame number
        self.number = 0

    def open(self, cfg: CameraConfig) -> FakePipeline:
        assert (cfg.capture_height, cfg.capture_width) == (self.height, self.width)
        self.opens += 1
        return FakePipeline(self)


class FakePipeline:
    def __init__(self, device: FakeDevice):
        self.device = device
        self.stopped = False

    def wait_for_frames(self, timeout_ms: int) -> FakeFrameset:
        d = self.device
        if self.stopped:
            raise RuntimeError("wait_for_frames cannot be called before start()")
        if d.stalled.is_set():
            time.sleep(timeout_ms / 1000)
            raise RuntimeError(f"Frame didn't arrive within {timeout_ms}")
        time.sleep(d.period_s)
        if not d.frozen:
            d.number += 1
        image = np.zeros((d.height, d.width, 3), np.uint8)
        image[..., 0] = d.number % 256  # red carries the frame number
        image[..., 2] = 7  # blue constant: checks the channel order survives
        return FakeFrameset(FakeColorFrame(image, d.number))

    def stop(self) -> None:
        self.stopped = True


def camera_config(**overrides) -> CameraConfig:
    data = dict(name="wrist", serial="123", capture_width=64, capture_height=48, height=24, width=32,
                stale_after_s=0.4, wait_timeout_s=0.1)
    data.update(overrides)
    return from_dict(CameraConfig, data)


def test_crop_and_resize_by_hand():
    image = np.zeros((480, 640, 3), np.uint8)
    image[:, :320] = (255, 0, 0)
    image[:, 320:] = (0, 0, 255)
    right = crop_and_resize(image, (320, 0, 640, 480), 128, 128)
    assert right.shape == (128, 128, 3) and right.dtype == np.uint8
    assert np.all(right == (0, 0, 255))  # only the blue half survives the crop
    # 4x4 -> 2x2 with area averaging: each output pixel is the mean of a 2x2 block.
    small = np.arange(16, dtype=np.uint8).reshape(4, 4)[..., None].repeat(3, axis=2)
    out = crop_and_resize(small, (), 2, 2)
    # Means 2.5, 4.5, 10.5, 12.5; uint8 output rounds half up.
    means = np.array([[(0 + 1 + 4 + 5) / 4, (2 + 3 + 6 + 7) / 4], [(8 + 9 + 12 + 13) / 4, (10 + 11 + 14 + 15) / 4]])
    np.testing.assert_array_equal(out[..., 0], np.floor(means + 0.5))


def test_reader_delivers_fresh_timestamped_rgb_frames():
    device = FakeDevice()
    camera = RealSenseCamera(camera_config(crop=[0, 0, 32, 24]), device.open)
    try:
        first = camera.wait_for_frame(2.0)
        deadline = time.monotonic() + 5.0
        while (second := camera.wait_for_frame(2.0)).number == first.number and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first.image.shape == (24, 32, 3) and first.image.dtype == np.uint8
        assert second.number > first.number and second.timestamp > first.timestamp
        assert 0.0 <= time.monotonic() - second.timestamp < camera.cfg.stale_after_s
        assert second.image[0, 0, 0] == second.number % 256 and second.image[0, 0, 2] == 7  # still RGB
    finally:
        camera.close()


def test_stalled_camera_is_reported_flagged_and_reopened():
    device = FakeDevice()
    camera = RealSenseCamera(camera_config(), device.open, reopen_delay_s=0.05)
    try:
        camera.wait_for_frame(2.0)
        device.stalled.set()
        time.sleep(0.8)  # > stale_after_s and > one wait timeout
        with pytest.raises(CameraError, match="old"):
            camera.latest()
        status = camera.status()
        assert status.stalls >= 1 and "didn't arrive" in status.last_error
        device.stalled.clear()
        frame = camera.wait_for_frame(2.0)
        assert device.opens >= 2 and camera.status().reopens >= 1
        assert time.monotonic() - frame.timestamp < camera.cfg.stale_after_s
    finally:
        camera.close()


def test_a_repeated_frame_number_is_not_a_new_frame():
    device = FakeDevice()
    camera = RealSenseCamera(camera_config(), device.open)
    try:
        camera.wait_for_frame(2.0)
        device.frozen = True
        time.sleep(0.8)
        with pytest.raises(CameraError, match="old"):
            camera.latest()
    finally:
        camera.close()


def test_rig_keeps_images_and_names_the_stale_camera():
    wrist, front = FakeDevice(), FakeDevice()
    devices = {"wrist": wrist, "front": front}
    cfgs = (camera_config(name="wrist", serial="1"), camera_config(name="front", serial="2"))
    rig = CameraRig(cfgs, lambda cfg: devices[cfg.name].open(cfg))
    try:
        images, stale = rig.latest()
        assert stale == [] and set(images) == {"wrist", "front"}
        assert images["front"].shape == (24, 32, 3)
        front.stalled.set()
        time.sleep(0.8)
        images, stale = rig.latest()
        assert stale == ["front"] and images["front"].shape == (24, 32, 3)
    finally:
        rig.close()


def test_missing_serial_with_the_real_library_names_the_serial():
    pytest.importorskip("pyrealsense2")
    from q2rl.robot.cameras import open_realsense_pipeline

    with pytest.raises(CameraError, match="serial 000000000000 is not connected"):
        open_realsense_pipeline(camera_config(serial="000000000000"))
