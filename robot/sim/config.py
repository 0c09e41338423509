"""Configuration of the simulated Franka environments (the `env.sim` section of the run config)."""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

from q2rl.config import ConfigError, check_numbers, doc

TaskName = Literal["pick_cube", "peg_insert", "kitting", "pick_cube_shifted", "peg_insert_shifted", "kitting_shifted"]
CAMERA_NAMES = ("wrist", "front")


@dataclasses.dataclass(frozen=True)
class SimEnvConfig:
    """A simulated Franka task: what is observed, how actions are scaled, how the physics runs."""

    task: TaskName = doc("pick_cube", "Task: pick_cube | peg_insert | kitting, or the *_shifted variant of one.")
    control_hz: float = doc(10.0, "Control rate in Hz: one env.step spans 1/control_hz seconds of physics.")
    max_episode_steps: int = doc(0, "Time limit in control steps (truncates); 0 = the task's default.")
    position_scale: float = doc(0.02, "Metres of end-effector motion per unit of the x/y/z action.")
    rotation_scale: float = doc(0.1, "Radians of end-effector rotation per unit of the roll/pitch/yaw action.")
    cameras: tuple[str, ...] = doc((), "Cameras rendered into obs['images'] (wrist, front); empty = state only.")
    image_size: int = doc(64, "Height and width in pixels of every rendered image.")
    gripper_mode: Literal["binary", "continuous"] = doc(
        "binary",
        "binary: like the real gripper, action > threshold closes, < -threshold opens, in between keeps the state; "
        "continuous: the action sets the finger-gap target (-1 open .. +1 closed).",
    )
    gripper_threshold: float = doc(0.5, "Dead band of the binary gripper (same meaning as the real robot's close_threshold).")
    privileged_state: bool = doc(True, "Append object poses (position + quaternion per task object) to obs['state'].")
    physics_timestep: float = doc(0.005, "MuJoCo timestep in seconds; 1/control_hz must be a whole multiple of it.")
    shadows: bool = doc(False, "Render shadows (slow in software EGL).")
    reflections: bool = doc(False, "Render reflections (slow in software EGL).")
    render_slices: int = doc(
        12, "Tessellation of round shapes in images (MuJoCo's default is 28; fewer slices render faster in software GL, "
            "bench/sim_speed.py)."
    )
    antialias_samples: int = doc(0, "Multisample anti-aliasing samples (0 = off; >0 is slow in software EGL).")

    def validate(self) -> None:
        if self.task not in get_args(TaskName):
            raise ConfigError(f"task: {self.task!r} is not one of {list(get_args(TaskName))}")
        check_numbers(self, "> 0", "control_hz", "physics_timestep")
        ratio = 1.0 / (self.control_hz * self.physics_timestep)
        if abs(ratio - round(ratio)) > 1e-6 or round(ratio) < 1:
            raise ConfigError(
                f"physics_timestep: 1/control_hz = {1 / self.control_hz:g} s is not a whole multiple of "
                f"{self.physics_timestep:g} s; pick a timestep that divides the control period"
            )
        if self.physics_timestep > 0.01:
            raise ConfigError(f"physics_timestep: {self.physics_timestep} s is unstable for grasping; use <= 0.01")
        if self.max_episode_steps < 0:
            raise ConfigError(f"max_episode_steps: must be >= 0 (0 = task default), got {self.max_episode_steps}")
        if self.position_scale <= 0 or self.position_scale > 0.1:
            raise ConfigError(f"position_scale: expected metres per action unit in (0, 0.1], got {self.position_scale}")
        if self.rotation_scale <= 0 or self.rotation_scale > 0.5:
            raise ConfigError(f"rotation_scale: expected radians per action unit in (0, 0.5], got {self.rotation_scale}")
        unknown = [c for c in self.cameras if c not in CAMERA_NAMES]
        if unknown:
            raise ConfigError(f"cameras: unknown camera(s) {unknown}; choose from {list(CAMERA_NAMES)}")
        if len(set(self.cameras)) != len(self.cameras):
            raise ConfigError(f"cameras: {list(self.cameras)} names a camera twice")
        if not 8 <= self.image_size <= 1024:
            raise ConfigError(f"image_size: expected 8..1024 pixels, got {self.image_size}")
        if self.gripper_mode not in ("binary", "continuous"):
            raise ConfigError(f"gripper_mode: {self.gripper_mode!r} is not one of 'binary', 'continuous'")
        if not 0.0 <= self.gripper_threshold < 1.0:
            raise ConfigError(f"gripper_threshold: must be in [0, 1), got {self.gripper_threshold}")
        if not 3 <= self.render_slices <= 64:
            raise ConfigError(f"render_slices: expected 3..64, got {self.render_slices}")
        if self.antialias_samples < 0:
            raise ConfigError(f"antialias_samples: must be >= 0, got {self.antialias_samples}")

    @property
    def substeps(self) -> int:
        """Physics steps per control step."""
        return int(round(1.0 / (self.control_hz * self.physics_timestep)))
