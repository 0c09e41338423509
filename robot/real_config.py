"""Configuration of the real Franka environment: the `env.franka` section of a run config.

Every field has a one-line help (`describe(FrankaEnvConfig)`), and `validate()` rejects values that would be
unsafe or meaningless on the robot with an error that names the field and the fix. Units: metres, radians,
seconds, newtons, kilograms. Poses are in the robot base frame.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from q2rl.config import ConfigError, check_numbers, doc

STATE_KEYS = ("ee_pos", "ee_rot6d", "ee_quat", "gripper_width", "ee_vel", "ee_wrench", "joint_pos")
_STATE_KEY_SIZES = {
    "ee_pos": 3, "ee_rot6d": 6, "ee_quat": 4, "gripper_width": 1, "ee_vel": 6, "ee_wrench": 6, "joint_pos": 7,
}


def state_size(keys: tuple[str, ...]) -> int:
    """Length of the flat state vector built from `keys`."""
    return sum(_STATE_KEY_SIZES[k] for k in keys)


def _positive(name: str, value: float, hint: str = "") -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{name}: must be a positive finite number, got {value!r}{hint}")


@dataclasses.dataclass(frozen=True)
class CameraConfig:
    """One RealSense colour stream, cropped and resized to the policy's image size."""

    name: str = doc("wrist", "Image key in obs['images'] (the names the policy was trained with: wrist, front).")
    serial: str = doc("", "RealSense serial number (printed on the camera; `rs-enumerate-devices -s` lists them).")
    capture_width: int = doc(640, "Colour stream width requested from the camera (a mode the camera supports).")
    capture_height: int = doc(480, "Colour stream height requested from the camera.")
    fps: int = doc(30, "Camera frame rate; 15, 30 or 60 on D4xx colour sensors.")
    crop: tuple[int, ...] = doc(
        (), "Crop box (x0, y0, x1, y1) in capture pixels applied before resizing; empty = the whole frame."
    )
    height: int = doc(128, "Output image height after resize (obs['images'][name] is uint8[height, width, 3]).")
    width: int = doc(128, "Output image width after resize.")
    stale_after_s: float = doc(0.5, "A frame older than this is stale: the episode is cut and the camera reopened.")
    wait_timeout_s: float = doc(1.0, "Timeout of one wait_for_frames call; a longer stall reopens the camera.")

    def validate(self) -> None:
        if not self.name.isidentifier():
            raise ConfigError(f"name: {self.name!r} must be a plain identifier such as wrist or front")
        if not self.serial:
            raise ConfigError("serial: required; set the camera's serial number (`rs-enumerate-devices -s` lists them)")
        for field in ("capture_width", "capture_height", "fps", "height", "width"):
            if getattr(self, field) <= 0:
                raise ConfigError(f"{field}: must be positive, got {getattr(self, field)}")
        if self.crop:
            if len(self.crop) != 4:
                raise ConfigError(f"crop: expected (x0, y0, x1, y1) or an empty list, got {self.crop!r}")
            x0, y0, x1, y1 = self.crop
            if not (0 <= x0 < x1 <= self.capture_width and 0 <= y0 < y1 <= self.capture_height):
                raise ConfigError(
                    f"crop: {self.crop!r} must satisfy 0 <= x0 < x1 <= capture_width ({self.capture_width}) and "
                    f"0 <= y0 < y1 <= capture_height ({self.capture_height})"
                )
        _positive("stale_after_s", self.stale_after_s)
        _positive("wait_timeout_s", self.wait_timeout_s)


@dataclasses.dataclass(frozen=True)
class GripperConfig:
    """The gripper: Franka Hand (through franky) or a Robotiq 2F-85 (Modbus RTU over USB-serial)."""

    kind: Literal["franka_hand", "robotiq", "none"] = doc("franka_hand", "Which gripper is mounted.")
    close_threshold: float = doc(0.5, "Action[6] above this closes, below -this opens; in between keeps the state.")
    cooldown_s: float = doc(0.5, "Minimum time between two gripper commands (stops chattering near the threshold).")
    speed: float = doc(0.1, "Finger speed in m/s (Franka Hand: up to 0.1; Robotiq: mapped onto 0..255).")
    force: float = doc(40.0, "Grasp force in N (Franka Hand: up to 70; Robotiq: mapped onto 0..255 of 235 N).")
    open_width: float = doc(0.08, "Opening width in m (Franka Hand max 0.08, Robotiq 2F-85 max 0.085).")
    command_timeout_s: float = doc(3.0, "Timeout of blocking gripper calls (opening at reset; homing gets 3x).")
    home_on_connect: bool = doc(True, "Franka Hand: home when connecting (calibrates the width; a few seconds).")
    robotiq_port: str = doc("/dev/ttyUSB0", "Serial device of the Robotiq RS-485 adapter.")
    robotiq_slave_id: int = doc(9, "Modbus slave id of the Robotiq gripper (9 out of the box).")
    robotiq_baudrate: int = doc(115200, "Robotiq serial baud rate (115200 out of the box).")

    def validate(self) -> None:
        if not 0.0 < self.close_threshold < 1.0:
            raise ConfigError(f"close_threshold: must be in (0, 1), got {self.close_threshold}")
        check_numbers(self, ">= 0", "cooldown_s")
        check_numbers(self, ">= 1", "robotiq_baudrate")
        _positive("speed", self.speed)
        _positive("force", self.force)
        _positive("command_timeout_s", self.command_timeout_s)
        limit = 0.085 if self.kind == "robotiq" else 0.08
        if not 0.0 < self.open_width <= limit + 1e-9:
            raise ConfigError(f"open_width: must be in (0, {limit}] m for {self.kind}, got {self.open_width}")
        if self.kind == "franka_hand" and (self.speed > 0.1 or self.force > 70.0):
            raise ConfigError(
                f"speed/force: the Franka Hand allows at most 0.1 m/s and 70 N, got {self.speed}, {self.force}"
            )
        if not 1 <= self.robotiq_slave_id <= 247:
            raise ConfigError(f"robotiq_slave_id: Modbus ids are 1..247, got {self.robotiq_slave_id}")


@dataclasses.dataclass(frozen=True)
class ImpedanceConfig:
    """Gains of franky's CartesianImpedanceTracker (the default control mode)."""

    translational_stiffness: float = doc(1000.0, "Cartesian translational stiffness in N/m (200..3000 is sensible).")
    rotational_stiffness: float = doc(50.0, "Cartesian rotational stiffness in Nm/rad (10..150 is sensible).")
    translational_error_clip: float = doc(
        0.03, "Per-axis clip of the position error fed to the spring law in m (bounds the force on contact)."
    )
    rotational_error_clip: float = doc(0.2, "Per-axis clip of the orientation error fed to the spring law in rad.")
    posture_stiffness: float = doc(5.0, "Null-space stiffness pulling the elbow toward home_joints (0 = off).")
    max_delta_tau: float = doc(0.5, "Largest torque change per 1 ms cycle in Nm (avoids discontinuity reflexes).")

    def validate(self) -> None:
        for name in ("translational_stiffness", "rotational_stiffness", "translational_error_clip",
                     "rotational_error_clip", "max_delta_tau"):
            _positive(name, getattr(self, name))
        if self.translational_stiffness > 4000 or self.rotational_stiffness > 300:
            raise ConfigError(
                "translational_stiffness/rotational_stiffness: above 4000 N/m or 300 Nm/rad the FR3 torque loop "
                "becomes unstable; lower them"
            )
        check_numbers(self, ">= 0", "posture_stiffness")


@dataclasses.dataclass(frozen=True)
class PayloadConfig:
    """What hangs on the flange beyond the configured end effector (sent with set_load)."""

    mass: float = doc(0.0, "Extra payload mass in kg (the grasped tool or part); 0 = none.")
    center_of_mass: tuple[float, float, float] = doc((0.0, 0.0, 0.0), "Payload centre of mass in the flange frame, m.")
    inertia: tuple[float, ...] = doc(
        (0.0,) * 9, "Payload inertia tensor about its centre of mass, column-major 3x3, kg m^2."
    )

    def validate(self) -> None:
        if not 0.0 <= self.mass <= 3.0:
            raise ConfigError(f"mass: must be in [0, 3] kg (FR3 payload limit), got {self.mass}")
        if len(self.inertia) != 9:
            raise ConfigError(f"inertia: expected 9 values (column-major 3x3), got {len(self.inertia)}")
        check_numbers(self, "finite", "center_of_mass", "inertia")


@dataclasses.dataclass(frozen=True)
class CollisionConfig:
    """Collision (reflex) thresholds: exceeding them stops the robot with a reflex error."""

    torque_thresholds: tuple[float, ...] = doc(
        (20.0, 20.0, 18.0, 18.0, 16.0, 14.0, 12.0), "Per-joint external torque thresholds in Nm (7 values)."
    )
    force_thresholds: tuple[float, ...] = doc(
        (20.0, 20.0, 20.0, 25.0, 25.0, 25.0), "Cartesian external force/torque thresholds (x y z in N, rx ry rz in Nm)."
    )

    def validate(self) -> None:
        if len(self.torque_thresholds) != 7:
            raise ConfigError(f"torque_thresholds: expected 7 positive values, got {self.torque_thresholds!r}")
        if len(self.force_thresholds) != 6:
            raise ConfigError(f"force_thresholds: expected 6 positive values, got {self.force_thresholds!r}")
        check_numbers(self, "> 0", "torque_thresholds", "force_thresholds")


@dataclasses.dataclass(frozen=True)
class FrankaEnvConfig:
    """The real Franka task: connection, control, safety box, reset, gripper, cameras, episode length."""

    task: str = doc("franka", "Task name for run directories and demo metadata (e.g. peg_insertion).")
    robot_ip: str = doc("172.16.0.2", "FCI address of the robot (Desk > Settings > Network; FCI must be activated).")
    robot_model: Literal["fr3", "panda"] = doc(
        "fr3", "fr3: franky-control from PyPI (libfranka 0.21); panda: the libfranka 0.9 wheel (docs/real_robot.md)."
    )
    realtime: Literal["enforce", "ignore"] = doc(
        "enforce", "libfranka realtime check; 'ignore' only for simulation (franky-sim) or debugging."
    )
    control_mode: Literal["impedance", "cartesian"] = doc(
        "impedance", "impedance: CartesianImpedanceTracker (compliant, default); cartesian: CartesianMotion targets."
    )
    control_hz: float = doc(10.0, "Environment steps per second (the policy's control rate).")
    max_episode_steps: int = doc(100, "Time limit in steps; reaching it truncates the episode.")
    state_keys: tuple[str, ...] = doc(
        ("ee_pos", "ee_rot6d", "gripper_width"),
        f"Parts of obs['state'], in order; any of {', '.join(STATE_KEYS)}. The default matches the simulator's "
        "proprioception (position, first two rotation-matrix columns, finger gap in m).",
    )
    action_scale_translation: float = doc(0.02, "Metres of end-effector motion per unit action on x, y, z.")
    action_scale_rotation: float = doc(0.1, "Radians of rotation per unit action on roll, pitch, yaw (base frame).")
    max_step_translation: float = doc(0.03, "Upper bound on the length of one step's translation delta, m.")
    max_step_rotation: float = doc(0.15, "Upper bound on the angle of one step's rotation delta, rad.")
    workspace_low: tuple[float, float, float] = doc((0.35, -0.2, 0.05), "Lower corner of the safety box (x, y, z), m.")
    workspace_high: tuple[float, float, float] = doc((0.7, 0.2, 0.45), "Upper corner of the safety box (x, y, z), m.")
    orientation_limit: tuple[float, float, float] = doc(
        (0.3, 0.3, 0.6), "Largest rotation away from the home orientation per base axis (rotation vector), rad."
    )
    home_position: tuple[float, float, float] = doc((0.5, 0.0, 0.3), "End-effector home position, m (inside the box).")
    home_rpy: tuple[float, float, float] = doc(
        (math.pi, 0.0, 0.0), "Home orientation as extrinsic x-y-z roll, pitch, yaw, rad ((pi, 0, 0) points down)."
    )
    home_joints: tuple[float, ...] = doc(
        (0.0, -0.3, 0.0, -2.2, 0.0, 1.9, 0.785), "Joint configuration of the periodic joint reset (7 values, rad)."
    )
    reset_position_noise: tuple[float, float, float] = doc(
        (0.0, 0.0, 0.0), "Uniform +- random offset of the home position at each reset, m."
    )
    reset_rpy_noise: tuple[float, float, float] = doc((0.0, 0.0, 0.0), "Uniform +- random offset of home_rpy, rad.")
    joint_reset_every: int = doc(10, "Move to home_joints every this many episodes (0 = never).")
    reset_dynamics_factor: float = doc(
        0.1, "Velocity/acceleration/jerk of reset motions as a fraction of the robot's limits (0, 1]; capped at "
        "relative_dynamics_factor."
    )
    relative_dynamics_factor: float = doc(
        0.15, "Robot-wide fraction (0, 1] of the velocity/acceleration/jerk limits (franky's relative dynamics factor)."
    )
    impedance: ImpedanceConfig = doc(ImpedanceConfig(), "Impedance controller gains.")
    collision: CollisionConfig = doc(CollisionConfig(), "Collision reflex thresholds.")
    payload: PayloadConfig = doc(PayloadConfig(), "Payload on the flange.")
    gripper: GripperConfig = doc(GripperConfig(), "Gripper.")
    cameras: tuple[CameraConfig, ...] = doc((), "RealSense cameras; empty = state-only observations.")
    connect_timeout_s: float = doc(10.0, "Timeout for connecting to the robot and the gripper.")
    command_timeout_s: float = doc(1.0, "Timeout of one robot command or state read during a step.")
    reset_timeout_s: float = doc(30.0, "Timeout of a whole reset motion (home or joint reset).")
    recover_timeout_s: float = doc(10.0, "Timeout of recover_from_errors.")

    def validate(self) -> None:
        if not self.task or not all(ch.isalnum() or ch in "_-" for ch in self.task):
            raise ConfigError(f"task: {self.task!r} must be a short name of letters, digits, _ or - (used in paths)")
        _positive("control_hz", self.control_hz)
        if self.control_hz > 50:
            raise ConfigError(f"control_hz: {self.control_hz} is above 50 Hz; policy steps are 10-20 Hz, lower it")
        if self.max_episode_steps <= 0:
            raise ConfigError(f"max_episode_steps: must be positive, got {self.max_episode_steps}")
        unknown = [k for k in self.state_keys if k not in STATE_KEYS]
        if unknown or not self.state_keys or len(set(self.state_keys)) != len(self.state_keys):
            raise ConfigError(
                f"state_keys: {list(self.state_keys)!r} must be distinct names from {', '.join(STATE_KEYS)}"
            )
        for name in ("action_scale_translation", "action_scale_rotation", "max_step_translation", "max_step_rotation",
                     "connect_timeout_s", "command_timeout_s", "reset_timeout_s", "recover_timeout_s"):
            _positive(name, getattr(self, name))
        if self.action_scale_translation > 0.1:
            raise ConfigError(
                f"action_scale_translation: {self.action_scale_translation} m per step is unsafe; use <= 0.1"
            )
        for i, (lo, hi) in enumerate(zip(self.workspace_low, self.workspace_high)):
            if not lo < hi:
                raise ConfigError(f"workspace_low/workspace_high: axis {'xyz'[i]} needs low < high, got {lo} >= {hi}")
        inside = all(lo <= p <= hi for lo, p, hi in zip(self.workspace_low, self.home_position, self.workspace_high))
        if not inside:
            raise ConfigError(
                f"home_position: {self.home_position} is outside the workspace box "
                f"{self.workspace_low}..{self.workspace_high}; move it inside or widen the box"
            )
        for i, (noise, lo, hi, p) in enumerate(
            zip(self.reset_position_noise, self.workspace_low, self.workspace_high, self.home_position)
        ):
            if noise < 0 or p - noise < lo or p + noise > hi:
                raise ConfigError(
                    f"reset_position_noise: +-{noise} on {'xyz'[i]} leaves the workspace box from home {p}; reduce it"
                )
        if min(self.orientation_limit) < 0 or max(self.orientation_limit) >= math.pi:
            raise ConfigError(f"orientation_limit: each value must be in [0, pi), got {self.orientation_limit}")
        too_large = any(n > lim for n, lim in zip(self.reset_rpy_noise, self.orientation_limit))
        if min(self.reset_rpy_noise) < 0 or too_large:
            raise ConfigError("reset_rpy_noise: must be >= 0 and within orientation_limit per axis")
        if len(self.home_joints) != 7:
            raise ConfigError(f"home_joints: expected 7 joint angles, got {len(self.home_joints)}")
        check_numbers(self, "finite", "home_joints", "home_rpy", "workspace_low", "workspace_high", "home_position",
                      "orientation_limit", "reset_position_noise", "reset_rpy_noise")
        if self.joint_reset_every < 0:
            raise ConfigError(f"joint_reset_every: must be >= 0 (0 = never), got {self.joint_reset_every}")
        for name in ("reset_dynamics_factor", "relative_dynamics_factor"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"{name}: must be in (0, 1], got {value}")
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ConfigError(f"cameras: names must be distinct, got {names}")
        serials = [c.serial for c in self.cameras]
        if len(set(serials)) != len(serials):
            raise ConfigError(f"cameras: each camera needs its own serial, got {serials}")
        if self.gripper.kind == "none" and "gripper_width" in self.state_keys:
            raise ConfigError("state_keys: gripper_width needs a gripper; remove it or set gripper.kind")

    @property
    def state_dim(self) -> int:
        return state_size(self.state_keys)


def load_franka_env_config(path, overrides=()) -> FrankaEnvConfig:
    """The `env.franka` section of a run-config file (other sections are not read), with `a.b=value` overrides."""
    from q2rl.config import read_yaml_with_overrides

    data = read_yaml_with_overrides(path, overrides)
    env = data.get("env") or {}
    if not isinstance(env, dict):
        raise ConfigError(f"env: expected a mapping in {path}")
    backend = env.get("backend", "franka")
    if backend != "franka":
        raise ConfigError(f"env.backend: {backend!r} in {path}; a real-robot config needs backend: franka")
    from q2rl.config import from_dict

    try:
        return from_dict(FrankaEnvConfig, env.get("franka") or {})
    except ConfigError as e:
        raise ConfigError(f"env.franka.{e} in {path}") from None
