"""Grippers behind one small interface: the Franka Hand (through franky) and a Robotiq 2F-85 (Modbus RTU).

The environment decides *whether* to move the gripper with `GripperCommandFilter` (a real open/close change,
not more often than the cooldown) and the backend only executes it, without waiting for the fingers:

    decision = gripper_filter.decide(action[6], now)      # "open" | "close" | None
    if decision: gripper.command(close=decision == "close")
"""

from __future__ import annotations

import os
import select
import struct
import termios
import threading
import time
from typing import Callable, Literal, Protocol

from q2rl.robot.real_config import GripperConfig

GripperState = Literal["open", "close"]


class GripperError(RuntimeError):
    """The gripper did not answer or reported a fault."""


class Gripper(Protocol):
    """What the environment needs from a gripper."""

    def command(self, close: bool) -> None:
        """Start opening or closing and return at once (the fingers keep moving)."""
        ...

    def poll(self) -> None:
        """Called every control step: start a command that had to wait for the one before it."""
        ...

    def open_blocking(self) -> None:
        """Open and wait until done (used at reset), bounded by the configured timeout."""
        ...

    def width(self) -> float:
        """Current finger opening in metres."""
        ...

    def close(self) -> None: ...


class GripperCommandFilter:
    """Turns the continuous gripper action into rare open/close commands: hysteresis plus a cooldown."""

    def __init__(self, close_threshold: float, cooldown_s: float, clock: Callable[[], float] = time.monotonic):
        self.close_threshold = close_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self.state: GripperState = "open"
        self._last_command_time = -float("inf")

    def reset(self, state: GripperState = "open") -> None:
        """Forget history; the gripper is known to be in `state` (after a blocking open at reset)."""
        self.state = state
        self._last_command_time = self._clock()

    def decide(self, value: float) -> GripperState | None:
        """The command to send for action value `value`, or None (no change, inside the dead band, or cooling down)."""
        if value > self.close_threshold:
            wanted: GripperState = "close"
        elif value < -self.close_threshold:
            wanted = "open"
        else:
            return None
        now = self._clock()
        if wanted == self.state or now - self._last_command_time < self.cooldown_s:
            return None
        self.state = wanted
        self._last_command_time = now
        return wanted


class FrankaHandGripper:
    """The Franka Hand through franky's Gripper; commands use the asynchronous calls."""

    def __init__(self, cfg: GripperConfig, hostname: str, connect: Callable[[str], object] | None = None):
        import franky  # optional dependency, imported where needed

        self.cfg = cfg
        self._franky = franky
        self._gripper = (connect or franky.Gripper)(hostname)
        self._pending = None  # future of the last command
        self._waiting: bool | None = None  # close? of the newest command, while the one before it still runs
        self.last_error = ""
        if cfg.home_on_connect:
            timeout = 3 * cfg.command_timeout_s
            if not self._gripper.homing_async().wait(timeout):
                raise GripperError(f"Franka Hand homing did not finish within {timeout} s (gripper.command_timeout_s)")

    def _collect(self) -> None:
        """Surface the result of the previous command, if it finished, without waiting."""
        future, self._pending = self._pending, None
        if future is None:
            return
        if not future.wait(0.0):
            self._pending = future
            return
        try:
            future.get()
        except self._franky.Exception as e:  # a failed grasp or move is reported, not fatal
            self.last_error = str(e)

    def command(self, close: bool) -> None:
        self._collect()
        if self._pending is not None:
            # A running grasp or move cannot be replaced, and dropping franky's future waits for the fingers (holding
            # the GIL): the control loop would stall, or deadlock with an in-process simulator. The newest command
            # waits instead and starts when the fingers stop (poll); one it replaces never runs.
            self._waiting = close
            return
        self._start(close)

    def poll(self) -> None:
        self._collect()
        if self._pending is None and self._waiting is not None:
            close, self._waiting = self._waiting, None
            self._start(close)

    def _start(self, close: bool) -> None:
        if close:
            # A wide epsilon makes any grasped width count as success: we only need the fingers to close.
            self._pending = self._gripper.grasp_async(0.0, self.cfg.speed, self.cfg.force, 1.0, 1.0)
        else:
            self._pending = self._gripper.move_async(self.cfg.open_width, self.cfg.speed)

    def open_blocking(self) -> None:
        self._waiting = None  # opening replaces a waiting command
        if not self._finish_pending():
            raise GripperError(f"a Franka Hand command was still running after {self.cfg.command_timeout_s} s "
                               f"(gripper.command_timeout_s), so it could not open")
        future = self._gripper.move_async(self.cfg.open_width, self.cfg.speed)
        if not future.wait(self.cfg.command_timeout_s):
            self._pending = future  # still running: dropping it would wait for it
            raise GripperError(
                f"Franka Hand did not open within {self.cfg.command_timeout_s} s (gripper.command_timeout_s)"
            )
        future.get()

    def _finish_pending(self) -> bool:
        """Wait (bounded by the command timeout) for the running command; False if it is still running."""
        if self._pending is not None and not self._pending.wait(self.cfg.command_timeout_s):
            return False
        self._collect()
        return True

    def width(self) -> float:
        return float(self._gripper.width)

    def close(self) -> None:
        # Let a running command finish first: the connection's destructor waits for it while holding the GIL.
        self._waiting = None
        if not self._finish_pending():
            self.last_error = f"a gripper command was still running after {self.cfg.command_timeout_s} s at close"
        self._pending = self._gripper = None  # dropping the last reference disconnects


# ---------------------------------------------------------------------------------------------------------------
# Robotiq 2F-85 over Modbus RTU (RS-485 USB adapter). Register map from the Robotiq 2F-85 manual:
# output registers at 0x03E8 (rACT/rGTO, position, speed, force), input registers at 0x07D0 (status, position).

ROBOTIQ_OUTPUT_ADDRESS = 0x03E8
ROBOTIQ_INPUT_ADDRESS = 0x07D0
ROBOTIQ_MAX_WIDTH = 0.085
ROBOTIQ_MAX_FORCE = 235.0
ROBOTIQ_MAX_SPEED = 0.15

_BAUD = {9600: termios.B9600, 19200: termios.B19200, 38400: termios.B38400, 57600: termios.B57600,
         115200: termios.B115200}


def modbus_crc16(frame: bytes) -> int:
    """Modbus RTU CRC-16 (polynomial 0xA001 reflected, initial 0xFFFF)."""
    crc = 0xFFFF
    for byte in frame:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def with_crc(frame: bytes) -> bytes:
    return frame + struct.pack("<H", modbus_crc16(frame))


def write_registers_frame(slave: int, address: int, payload: bytes) -> bytes:
    """Function 16 (write multiple registers) request; `payload` is an even number of bytes."""
    count = len(payload) // 2
    return with_crc(struct.pack(">BBHHB", slave, 0x10, address, count, len(payload)) + payload)


def read_input_registers_frame(slave: int, address: int, count: int) -> bytes:
    """Function 4 (read input registers) request."""
    return with_crc(struct.pack(">BBHH", slave, 0x04, address, count))


def robotiq_command_payload(position: int, speed: int, force: int, activate: bool = True) -> bytes:
    """The 6 output bytes: action request (rACT | rGTO), two reserved, position, speed, force (0..255 each)."""
    action = 0x09 if activate else 0x00  # bit0 rACT, bit3 rGTO
    return bytes([action, 0, 0, position & 0xFF, speed & 0xFF, force & 0xFF])


def width_to_robotiq_position(width: float) -> int:
    """Finger opening in metres -> Robotiq position byte (0 = fully open at 85 mm, 255 = closed)."""
    fraction = min(max(width / ROBOTIQ_MAX_WIDTH, 0.0), 1.0)
    return int(round(255 * (1.0 - fraction)))


def robotiq_position_to_width(position: int) -> float:
    return ROBOTIQ_MAX_WIDTH * (1.0 - position / 255.0)


class SerialPort:
    """A raw 8N1 serial port on a file descriptor, with timed reads (no pyserial needed)."""

    def __init__(self, path: str, baudrate: int):
        if baudrate not in _BAUD:
            raise GripperError(f"robotiq_baudrate: {baudrate} is not one of {sorted(_BAUD)}")
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        except OSError as e:
            raise GripperError(f"cannot open Robotiq serial port {path}: {e} (check gripper.robotiq_port and "
                               f"that your user is in the dialout group)") from None
        attrs = termios.tcgetattr(self.fd)
        attrs[0] = 0  # iflag: raw
        attrs[1] = 0  # oflag
        attrs[2] = termios.CS8 | termios.CREAD | termios.CLOCAL  # 8N1
        attrs[3] = 0  # lflag: no echo, non-canonical
        attrs[4] = attrs[5] = _BAUD[baudrate]
        attrs[6][termios.VMIN] = 0
        attrs[6][termios.VTIME] = 0
        termios.tcsetattr(self.fd, termios.TCSANOW, attrs)
        termios.tcflush(self.fd, termios.TCIOFLUSH)

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def read_exactly(self, n: int, timeout_s: float) -> bytes:
        deadline = time.monotonic() + timeout_s
        out = b""
        while len(out) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.fd], [], [], remaining)[0]:
                raise GripperError(f"Robotiq did not answer within {timeout_s} s (got {len(out)}/{n} bytes); "
                                   "check power, wiring and gripper.robotiq_slave_id")
            out += os.read(self.fd, n - len(out))
        return out

    def close(self) -> None:
        os.close(self.fd)


class RobotiqGripper:
    """Robotiq 2F-85 over Modbus RTU: activation at start, position commands that return once acknowledged."""

    def __init__(self, cfg: GripperConfig, port: SerialPort | None = None, reply_timeout_s: float = 0.2):
        self.cfg = cfg
        self._port = port or SerialPort(cfg.robotiq_port, cfg.robotiq_baudrate)
        self._lock = threading.Lock()
        self._reply_timeout_s = reply_timeout_s
        self._speed = int(round(255 * min(cfg.speed / ROBOTIQ_MAX_SPEED, 1.0)))
        self._force = int(round(255 * min(cfg.force / ROBOTIQ_MAX_FORCE, 1.0)))
        self.last_error = ""
        self.activate()

    def _transact(self, request: bytes, reply_length: int) -> bytes:
        with self._lock:
            self._port.write(request)
            reply = self._port.read_exactly(reply_length, self._reply_timeout_s)
        if modbus_crc16(reply[:-2]) != struct.unpack("<H", reply[-2:])[0]:
            raise GripperError(f"Robotiq reply has a bad CRC: {reply.hex()} (noise on the RS-485 line?)")
        if reply[0] != self.cfg.robotiq_slave_id or reply[1] != request[1]:
            raise GripperError(f"Robotiq replied with an unexpected frame {reply.hex()} to {request.hex()}")
        return reply

    def _write(self, payload: bytes) -> None:
        request = write_registers_frame(self.cfg.robotiq_slave_id, ROBOTIQ_OUTPUT_ADDRESS, payload)
        self._transact(request, 8)

    def status(self) -> tuple[int, int, int]:
        """(status byte, fault byte, position byte) from the input registers."""
        request = read_input_registers_frame(self.cfg.robotiq_slave_id, ROBOTIQ_INPUT_ADDRESS, 3)
        reply = self._transact(request, 5 + 6)
        data = reply[3:9]
        return data[0], data[2], data[4]

    def activate(self) -> None:
        """Reset then activate (rACT), and wait for the activation to complete (gSTA == 3)."""
        self._write(bytes(6))
        self._write(robotiq_command_payload(0, self._speed, self._force, activate=True))
        deadline = time.monotonic() + self.cfg.command_timeout_s
        while True:
            status, fault, _ = self.status()
            if (status >> 4) & 0x3 == 3:
                return
            if time.monotonic() > deadline:
                raise GripperError(f"Robotiq activation did not complete within {self.cfg.command_timeout_s} s "
                                   f"(status 0x{status:02x}, fault 0x{fault:02x})")
            time.sleep(0.05)

    def command(self, close: bool) -> None:
        position = 255 if close else width_to_robotiq_position(self.cfg.open_width)
        self._write(robotiq_command_payload(position, self._speed, self._force))

    def poll(self) -> None:
        """Nothing waits: a new position request replaces the running one in the gripper's registers."""

    def open_blocking(self) -> None:
        self.command(close=False)
        target = width_to_robotiq_position(self.cfg.open_width)
        deadline = time.monotonic() + self.cfg.command_timeout_s
        while True:
            status, fault, position = self.status()
            if fault:
                raise GripperError(f"Robotiq fault 0x{fault:02x} while opening (see the 2F-85 manual, gFLT)")
            if abs(position - target) <= 3 or (status >> 6) == 3:  # gOBJ 3: reached the requested position
                return
            if time.monotonic() > deadline:
                raise GripperError(
                    f"Robotiq did not open within {self.cfg.command_timeout_s} s (gripper.command_timeout_s)"
                )
            time.sleep(0.02)

    def width(self) -> float:
        return robotiq_position_to_width(self.status()[2])

    def close(self) -> None:
        self._port.close()


def make_gripper(cfg: GripperConfig, robot_ip: str) -> Gripper | None:
    """The configured gripper backend (None when gripper.kind is none)."""
    if cfg.kind == "none":
        return None
    if cfg.kind == "robotiq":
        return RobotiqGripper(cfg)
    return FrankaHandGripper(cfg, robot_ip)
