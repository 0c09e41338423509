"""The real Franka as a gymnasium environment, through franky-control (no ROS, no server in between).

Same contract as the simulated env (q2rl/interfaces.py): obs {"state", "images"}, a 7-D action in [-1, 1],
`control_hz` steps per second, info["success"], success terminates, the time limit truncates.

    env = FrankaEnv(cfg, signals=signals)          # signals: the operator's success/failure keys
    obs, info = env.reset(seed=0)                  # recovers a previous fault first, then moves home slowly
    obs, reward, terminated, truncated, info = env.step(action)

Each step turns the action into an absolute base-frame end-effector target (measured pose + scaled delta,
clipped to the workspace box and orientation limits) and hands it to a running CartesianImpedanceTracker
(default) or starts an asynchronous CartesianMotion that takes over from the previous one. A reflex or control
error ends the episode as truncated with info["fault"] naming the robot's error set; the next reset recovers.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import queue
import re
import threading
import time
from typing import Any, Callable, Literal, NamedTuple

import gymnasium as gym
import numpy as np
from scipy.spatial.transform import Rotation

from q2rl.interfaces import ACTION_DIM
from q2rl.robot.gripper import Gripper, GripperCommandFilter, make_gripper
from q2rl.robot.real_config import FrankaEnvConfig

Outcome = Literal["success", "failure"]
log = logging.getLogger(__name__)


class RobotError(RuntimeError):
    """The robot could not be reached, timed out, or refused a command; the message says what to do."""


class RobotTimeoutError(RobotError):
    """A robot call did not return within its timeout."""


class RobotVersionError(RobotError):
    """libfranka in franky-control does not match the robot's server version."""


# --------------------------------------------------------------------------------------------------------------
# Operator signals: the console (or a test) marks the current episode; the env polls once per step.


class OperatorSignals:
    """Thread-safe mailbox for the operator's verdict on the running episode (docs/design.md#operator-keys: s = success, f = failure)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outcome: Outcome | None = None

    def mark_success(self) -> None:
        with self._lock:
            self._outcome = "success"

    def mark_failure(self) -> None:
        with self._lock:
            self._outcome = "failure"

    def take(self) -> Outcome | None:
        """The pending verdict (cleared once taken), or None."""
        with self._lock:
            outcome, self._outcome = self._outcome, None
            return outcome

    def clear(self) -> None:
        with self._lock:
            self._outcome = None


# --------------------------------------------------------------------------------------------------------------
# Action -> target math (pure functions; quaternions are [x, y, z, w] like franky and scipy).


class SafetyLimits(NamedTuple):
    """Everything that bounds a step's target, taken from the config once."""

    scale_translation: float
    scale_rotation: float
    max_step_translation: float
    max_step_rotation: float
    workspace_low: np.ndarray
    workspace_high: np.ndarray
    home_quat: np.ndarray
    orientation_limit: np.ndarray

    @classmethod
    def from_config(cls, cfg: FrankaEnvConfig) -> SafetyLimits:
        return cls(
            cfg.action_scale_translation,
            cfg.action_scale_rotation,
            cfg.max_step_translation,
            cfg.max_step_rotation,
            np.asarray(cfg.workspace_low, float),
            np.asarray(cfg.workspace_high, float),
            rpy_to_quat(cfg.home_rpy),
            np.asarray(cfg.orientation_limit, float),
        )


class Target(NamedTuple):
    position: np.ndarray  # [3], base frame, m
    quat: np.ndarray  # [4], x y z w
    clipped: bool  # the box, orientation limit or step bound changed the request


def rpy_to_quat(rpy) -> np.ndarray:
    """Extrinsic x-y-z roll/pitch/yaw (radians) -> quaternion [x, y, z, w]."""
    return Rotation.from_euler("xyz", np.asarray(rpy, float)).as_quat()


def validate_action(action) -> np.ndarray:
    """A float64[7] copy of the action clipped to [-1, 1]; NaN/inf or a wrong shape is an error."""
    a = np.asarray(action, dtype=np.float64)
    if a.shape != (ACTION_DIM,):
        raise ValueError(
            f"action must have shape ({ACTION_DIM},), got {a.shape}: (dx, dy, dz, droll, dpitch, dyaw, gripper)"
        )
    if not np.all(np.isfinite(a)):
        raise ValueError(f"action contains NaN or inf: {a.tolist()}; the policy produced invalid output")
    return np.clip(a, -1.0, 1.0)


def bound_norm(vector: np.ndarray, limit: float) -> tuple[np.ndarray, bool]:
    """`vector` scaled down to length `limit` if longer; and whether it was."""
    norm = float(np.linalg.norm(vector))
    if norm <= limit:
        return vector, False
    return vector * (limit / norm), True


def action_to_delta(action: np.ndarray, limits: SafetyLimits) -> tuple[np.ndarray, np.ndarray, bool]:
    """Scaled, bounded step delta: (translation m [3], rotation vector rad [3], bounded?)."""
    translation, t_bounded = bound_norm(action[:3] * limits.scale_translation, limits.max_step_translation)
    rotation, r_bounded = bound_norm(action[3:6] * limits.scale_rotation, limits.max_step_rotation)
    return translation, rotation, t_bounded or r_bounded


def clip_to_workspace(position: np.ndarray, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, bool]:
    clipped = np.clip(position, low, high)
    return clipped, bool(np.any(clipped != position))


def clip_orientation(quat: np.ndarray, home_quat: np.ndarray, limit: np.ndarray) -> tuple[np.ndarray, bool]:
    """Limit the base-frame rotation from the home orientation, per axis of its rotation vector."""
    home = Rotation.from_quat(home_quat)
    offset = (Rotation.from_quat(quat) * home.inv()).as_rotvec()
    clipped = np.clip(offset, -limit, limit)
    if np.array_equal(clipped, offset):
        return quat, False
    return (Rotation.from_rotvec(clipped) * home).as_quat(), True


def compute_target(action: np.ndarray, position: np.ndarray, quat: np.ndarray, limits: SafetyLimits) -> Target:
    """Absolute target = measured pose + scaled delta (rotation applied in the base frame), then clipped."""
    translation, rotation, bounded = action_to_delta(action, limits)
    target_position, box_clipped = clip_to_workspace(
        position + translation, limits.workspace_low, limits.workspace_high
    )
    target_quat = (Rotation.from_rotvec(rotation) * Rotation.from_quat(quat)).as_quat()
    target_quat, orientation_clipped = clip_orientation(target_quat, limits.home_quat, limits.orientation_limit)
    clipped = bounded or box_clipped or orientation_clipped
    return Target(target_position, align_quat(target_quat, limits.home_quat), clipped)


def align_quat(quat: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The sign of `quat` closest to `reference` (q and -q are the same rotation; observations must not flip)."""
    return -quat if float(np.dot(quat, reference)) < 0 else quat


# --------------------------------------------------------------------------------------------------------------
# Panda vs FR3: libfranka refuses a robot whose server version it does not speak.

# libfranka release whose franky-control wheel speaks each robot server version (franky's compatibility table).
LIBFRANKA_FOR_SERVER_VERSION = {3: "0.7.1", 4: "0.8.0", 5: "0.9.2", 6: "0.12.1", 7: "0.13.3", 8: "0.14.2",
                                9: "0.17.0", 10: "0.21.2"}


def version_mismatch_advice(message: str, installed_franky: str = "2.0.0") -> str:
    """What to install when libfranka reports `Incompatible library version (server version: N, ...)`."""
    match = re.search(r"server version:\s*(\d+)", message)
    server = int(match.group(1)) if match else None
    head = f"franky-control {installed_franky} cannot talk to this robot: {message.strip()}"
    if server is None:
        return head + "\nLook up the robot's server version in Desk and see docs/real_robot.md."
    libfranka = LIBFRANKA_FOR_SERVER_VERSION.get(server)
    robot = "a Franka Emika Panda (system 4.x)" if server <= 5 else "an FR3"
    if libfranka is None:
        return (head + f"\nServer version {server} is newer than any franky wheel known here; upgrade with "
                "`pip install -U franky-control` and see docs/real_robot.md.")
    return (
        head
        + f"\nThe robot speaks server version {server} ({robot}); it needs franky-control built against "
        f"libfranka {libfranka}. Install it with:\n"
        f"  pip install --force-reinstall 'franky-control=={installed_franky}' --extra-index-url "
        f"https://timschneider42.github.io/franky/whl/by-robot-server-version/{server}/\n"
        "and set env.franka.robot_model accordingly (docs/real_robot.md, 'Panda or FR3')."
    )


def _import_franky():
    try:
        import franky
    except ImportError as e:
        raise RobotError(
            f"franky-control is not installed ({e}); pip install -e '.[robot]' (docs/real_robot.md)"
        ) from None
    return franky


# --------------------------------------------------------------------------------------------------------------


class _TimedCaller:
    """Runs robot calls on one daemon worker thread so a hung call returns control to us after its timeout.

    A daemon thread, not a ThreadPoolExecutor: the interpreter joins pool threads at exit, so a call stuck in
    libfranka (its own connect timeout is about a minute) would keep the process alive that long.
    """

    def __init__(self, name: str):
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()
        self.hung = ""  # set once a call timed out: the worker may still be blocked inside it

    def _serve(self) -> None:
        while True:
            item = self._requests.get()
            if item is None:
                return
            fn, future = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as e:  # handed to the caller, raised there
                    future.set_exception(e)
            del item, fn, future  # release the robot objects the call referenced

    def __call__(self, fn: Callable[[], Any], timeout_s: float, what: str) -> Any:
        if self.hung:
            raise RobotTimeoutError(f"{what}: the robot link is down since '{self.hung}' hung; restart the actor")
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._requests.put((fn, future))
        try:
            return future.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            self.hung = what
            raise RobotTimeoutError(
                f"{what} did not return within {timeout_s} s: check the network to the robot and that FCI is active"
            ) from None
        finally:
            # A raised error's traceback holds this frame, and the future holds the error: break that cycle so
            # the robot connection is released when the env is closed, not at some later garbage collection.
            del future, fn

    def shutdown(self) -> None:
        self._requests.put(None)
        if not self.hung:
            self._thread.join(timeout=5.0)


def _observation_space(cfg: FrankaEnvConfig) -> gym.spaces.Dict:
    spaces: dict[str, gym.Space] = {
        "state": gym.spaces.Box(-np.inf, np.inf, (cfg.state_dim,), np.float32),
    }
    if cfg.cameras:
        spaces["images"] = gym.spaces.Dict(
            {c.name: gym.spaces.Box(0, 255, (c.height, c.width, 3), np.uint8) for c in cfg.cameras}
        )
    return gym.spaces.Dict(spaces)


@dataclasses.dataclass
class _Measured:
    position: np.ndarray
    quat: np.ndarray
    twist: np.ndarray
    wrench: np.ndarray
    joints: np.ndarray


class FrankaEnv(gym.Env):
    """The real robot behind the sim env's contract; success comes from the operator (OperatorSignals)."""

    metadata = {"render_modes": []}

    def __init__(
        self,
        cfg: FrankaEnvConfig,
        *,
        signals: OperatorSignals | None = None,
        cameras: Any = None,
        gripper: Gripper | None = None,
    ):
        """Connect to the robot (and gripper, cameras). `cameras`/`gripper` override the configured devices."""
        self.cfg = cfg
        self.signals = signals or OperatorSignals()
        self.limits = SafetyLimits.from_config(cfg)
        self.observation_space = _observation_space(cfg)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        self._franky = _import_franky()
        self._call = _TimedCaller("franka")
        self._robot = self._connect()
        self._configure_robot()
        self._gripper = gripper if gripper is not None else self._call(
            lambda: make_gripper(cfg.gripper, cfg.robot_ip),
            cfg.connect_timeout_s + 3 * cfg.gripper.command_timeout_s,  # connect, then homing or activation
            "connecting to the gripper",
        )
        self._gripper_filter = GripperCommandFilter(cfg.gripper.close_threshold, cfg.gripper.cooldown_s)
        self._cameras = cameras
        if self._cameras is None and cfg.cameras:
            from q2rl.robot.cameras import CameraRig

            self._cameras = CameraRig(cfg.cameras)
        self._rng = np.random.default_rng()
        self._tracker = None
        self._fault = ""  # robot errors of the last fault, until recovered
        self._episodes = 0
        self._step = 0
        self._next_tick = 0.0
        self.last_target: Target | None = None

    # ---- connection -------------------------------------------------------------------------------------------

    def _connect(self):
        franky, cfg = self._franky, self.cfg
        realtime = franky.RealtimeConfig.Enforce if cfg.realtime == "enforce" else franky.RealtimeConfig.Ignore

        def connect():
            return franky.Robot(cfg.robot_ip, realtime_config=realtime)

        try:
            return self._call(connect, cfg.connect_timeout_s, f"connecting to the robot at {cfg.robot_ip}")
        except franky.IncompatibleVersionException as e:
            raise RobotVersionError(version_mismatch_advice(str(e))) from None
        except franky.NetworkException as e:
            raise RobotError(
                f"cannot reach the robot at {cfg.robot_ip}: {e}. Check env.franka.robot_ip, the cable, and that FCI is "
                "activated in Desk (brakes open, robot in execution mode)."
            ) from None
        except franky.RealtimeException as e:
            raise RobotError(f"{e}: run on a PREEMPT_RT kernel with rtprio rights (docs/real_robot.md)") from None

    def _configure_robot(self) -> None:
        cfg, robot = self.cfg, self._robot

        def configure():
            robot.relative_dynamics_factor = cfg.relative_dynamics_factor
            robot.set_collision_behavior(list(cfg.collision.torque_thresholds), list(cfg.collision.force_thresholds))
            robot.set_load(cfg.payload.mass, list(cfg.payload.center_of_mass), list(cfg.payload.inertia))

        self._call(configure, cfg.connect_timeout_s, "configuring dynamics, collision thresholds and payload")

    # ---- measurements -----------------------------------------------------------------------------------------

    def _measure(self) -> _Measured:
        robot = self._robot

        def read():
            cartesian = robot.current_cartesian_state
            state = robot.state
            return cartesian, state

        cartesian, state = self._call(read, self.cfg.command_timeout_s, "reading the robot state")
        pose = cartesian.pose.end_effector_pose
        twist = cartesian.velocity.end_effector_twist
        return _Measured(
            position=np.asarray(pose.translation, float).reshape(3),
            quat=align_quat(np.asarray(pose.quaternion, float).reshape(4), self.limits.home_quat),
            twist=np.concatenate([np.ravel(twist.linear), np.ravel(twist.angular)]).astype(float),
            wrench=np.asarray(state.O_F_ext_hat_K, float).reshape(6),
            joints=np.asarray(state.q, float).reshape(7),
        )

    def _state_vector(self, m: _Measured) -> np.ndarray:
        rotation = Rotation.from_quat(m.quat).as_matrix()
        parts = {
            "ee_pos": m.position,
            "ee_rot6d": np.concatenate([rotation[:, 0], rotation[:, 1]]),  # as the simulator's rot6d
            "ee_quat": m.quat,
            "ee_vel": m.twist,
            "ee_wrench": m.wrench,
            "joint_pos": m.joints,
        }
        out = []
        for key in self.cfg.state_keys:
            if key == "gripper_width":
                width = self._call(self._gripper.width, self.cfg.command_timeout_s, "reading the gripper width")
                out.append(np.array([width]))
            else:
                out.append(parts[key])
        return np.concatenate(out).astype(np.float32)

    def _observe(self, m: _Measured) -> tuple[dict, list[str]]:
        obs: dict[str, Any] = {"state": self._state_vector(m)}
        stale: list[str] = []
        if self._cameras is not None:
            images, stale = self._cameras.latest()
            obs["images"] = images
        return obs, stale

    # ---- faults -----------------------------------------------------------------------------------------------

    def _errors_text(self) -> str:
        try:
            state = self._call(lambda: self._robot.state, self.cfg.command_timeout_s, "reading the robot errors")
        except RobotTimeoutError:
            return "robot state unavailable"
        return f"current_errors={state.current_errors} last_motion_errors={state.last_motion_errors}"

    def _record_fault(self, error: Exception) -> str:
        self._fault = f"{type(error).__name__}: {str(error).splitlines()[0]} [{self._errors_text()}]"
        self._tracker = None  # a faulted torque loop is gone; a new tracker starts after recovery
        return self._fault

    def _poll_fault(self) -> str:
        """The fault text if the running motion ended with a control error since the last poll, else ''."""
        try:
            self._call(self._robot.poll_motion, self.cfg.command_timeout_s, "polling the motion")
        except self._franky.ControlException as e:
            return self._record_fault(e)
        if self._tracker is not None and not self._call(
            lambda: self._robot.is_in_control, self.cfg.command_timeout_s, "reading is_in_control"
        ):
            return self._record_fault(RobotError("the impedance controller stopped without an error report"))
        return ""

    def recover(self) -> None:
        """recover_from_errors after a recorded fault (only then: a blanket clear would hide real faults)."""
        if not self._fault:
            return
        self._call(self._robot.recover_from_errors, self.cfg.recover_timeout_s, "recover_from_errors")
        self._fault = ""

    @property
    def fault(self) -> str:
        """The unrecovered fault ('' when none)."""
        return self._fault

    # ---- motions ----------------------------------------------------------------------------------------------

    def _run_motion(self, motion, what: str) -> None:
        """Execute a reset motion synchronously with a timeout; a control error is raised as RobotError."""
        robot, timeout = self._robot, self.cfg.reset_timeout_s
        try:
            self._call(lambda: robot.move(motion, asynchronous=True), self.cfg.command_timeout_s, what)
            finished = self._call(lambda: robot.join_motion(timeout=timeout), timeout + 1.0, what)
        except (self._franky.ControlException, self._franky.CommandException) as e:
            raise RobotError(f"{what} failed: {self._record_fault(e)}") from None
        if not finished:
            self._call(robot.stop, self.cfg.command_timeout_s, "stopping the robot")
            raise RobotTimeoutError(f"{what} did not finish within {timeout} s (reset_timeout_s); is the path blocked?")

    def _stop_tracker(self) -> None:
        tracker, self._tracker = self._tracker, None
        if tracker is None:
            return
        try:
            self._call(tracker.stop, self.cfg.reset_timeout_s, "stopping the impedance controller")
        except self._franky.ControlException as e:
            self._record_fault(e)

    def _start_tracker(self) -> None:
        franky, imp = self._franky, self.cfg.impedance
        kwargs: dict[str, Any] = dict(
            translational_stiffness=imp.translational_stiffness,
            rotational_stiffness=imp.rotational_stiffness,
            translational_error_clip=np.full(3, imp.translational_error_clip),
            rotational_error_clip=np.full(3, imp.rotational_error_clip),
            max_delta_tau=imp.max_delta_tau,
        )
        if imp.posture_stiffness > 0:
            kwargs["posture_task"] = franky.PostureTask(list(self.cfg.home_joints), stiffness=imp.posture_stiffness)
        self._tracker = self._call(
            lambda: franky.CartesianImpedanceTracker(self._robot, **kwargs),
            self.cfg.connect_timeout_s,
            "starting the impedance controller",
        )

    def _send_target(self, target: Target) -> None:
        franky = self._franky
        pose = franky.Affine(target.position, target.quat)
        if self._tracker is not None:
            self._call(lambda: self._tracker.set_target(pose), self.cfg.command_timeout_s, "sending the target")
        else:
            motion = franky.CartesianMotion(
                pose, franky.ReferenceType.Absolute, relative_dynamics_factor=franky.RelativeDynamicsFactor(1.0)
            )
            # Asynchronous: the new motion takes over from the running one.
            self._call(
                lambda: self._robot.move(motion, asynchronous=True), self.cfg.command_timeout_s, "sending the target"
            )

    def home_target(self) -> tuple[np.ndarray, np.ndarray]:
        """Home pose with the configured uniform random offsets, drawn from the env's RNG."""
        cfg = self.cfg
        position = np.asarray(cfg.home_position) + self._rng.uniform(-1, 1, 3) * np.asarray(cfg.reset_position_noise)
        rpy = np.asarray(cfg.home_rpy) + self._rng.uniform(-1, 1, 3) * np.asarray(cfg.reset_rpy_noise)
        return position, align_quat(rpy_to_quat(rpy), self.limits.home_quat)

    # ---- gymnasium --------------------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """Recover a recorded fault, stop the controller, (periodically) joint-reset, move home slowly, open."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        franky, cfg = self._franky, self.cfg
        self._stop_tracker()
        recovered = self._fault
        self.recover()
        # Motion factors multiply the robot-wide relative_dynamics_factor; this makes reset_dynamics_factor absolute.
        slow = franky.RelativeDynamicsFactor(min(1.0, cfg.reset_dynamics_factor / cfg.relative_dynamics_factor))
        joint_reset = cfg.joint_reset_every > 0 and self._episodes % cfg.joint_reset_every == 0
        if joint_reset:
            self._run_motion(franky.JointMotion(list(cfg.home_joints), relative_dynamics_factor=slow), "joint reset")
        position, quat = self.home_target()
        home = franky.CartesianMotion(franky.Affine(position, quat), franky.ReferenceType.Absolute,
                                      relative_dynamics_factor=slow)
        self._run_motion(home, "moving home")
        if self._gripper is not None:
            self._call(self._gripper.open_blocking, cfg.gripper.command_timeout_s + 1.0, "opening the gripper")
            self._gripper_filter.reset("open")
        if cfg.control_mode == "impedance":
            self._start_tracker()
        self.signals.clear()
        self._episodes += 1
        self._step = 0
        measured = self._measure()
        obs, stale = self._observe(measured)
        self._next_tick = time.monotonic() + 1.0 / cfg.control_hz
        info = {"success": False, "fault": "", "recovered": recovered, "joint_reset": joint_reset,
                "stale_cameras": stale}
        return obs, info

    def step(self, action) -> tuple[dict, float, bool, bool, dict]:
        a = validate_action(action)
        self._step += 1
        # A faulted robot gets no further commands until reset() has recovered it.
        fault = self._fault or self._poll_fault()
        target = None
        if not fault:
            measured = self._measure()
            target = compute_target(a, measured.position, measured.quat, self.limits)
            self.last_target = target
            try:
                self._send_target(target)
            except (self._franky.ControlException, self._franky.CommandException) as e:  # e.g. rejected in reflex
                fault = self._record_fault(e)
            if self._gripper is not None and not fault:
                decision = self._gripper_filter.decide(float(a[6]))
                self._call(lambda: self._command_gripper(decision), self.cfg.command_timeout_s,
                           "commanding the gripper")
        self._wait_for_tick()
        if not fault:
            fault = self._poll_fault()
        measured = self._measure()
        obs, stale = self._observe(measured)
        if stale and not fault:
            fault = f"stale camera frames: {', '.join(stale)} (reopening; check the USB link)"
        outcome = self.signals.take()
        success = outcome == "success" and not fault
        terminated = success
        truncated = not terminated and (bool(fault) or outcome == "failure" or self._step >= self.cfg.max_episode_steps)
        info = {
            "success": success,
            "fault": fault,
            "operator": outcome or "",
            "target_clipped": bool(target.clipped) if target is not None else False,
            "stale_cameras": stale,
            "step": self._step,
        }
        return obs, float(success), terminated, truncated, info

    def _finish_motion(self) -> None:
        """Wait for a running Cartesian motion (bounded), then stop: the connection must not close mid-motion."""
        robot = self._robot
        try:
            timeout = self.cfg.command_timeout_s * 5
            if not self._call(lambda: robot.join_motion(timeout=timeout), timeout + 1.0, "finishing the motion"):
                self._call(robot.stop, self.cfg.command_timeout_s, "stopping the robot")
        except self._franky.ControlException as e:
            self._record_fault(e)

    def _command_gripper(self, decision: str | None) -> None:
        if decision is not None:
            self._gripper.command(decision == "close")
        self._gripper.poll()  # starts a command that waited for the fingers to stop

    def _wait_for_tick(self) -> None:
        now = time.monotonic()
        if self._next_tick > now:
            time.sleep(self._next_tick - now)
            self._next_tick += 1.0 / self.cfg.control_hz
        else:  # overran the period: re-anchor instead of bursting to catch up
            self._next_tick = now + 1.0 / self.cfg.control_hz

    def close(self) -> None:
        try:
            if self._robot is not None and not self._call.hung:
                self._stop_tracker()
                self._finish_motion()
        except RobotError as e:  # closing must still release the cameras and the gripper
            log.warning("closing the robot connection: %s", e)
        finally:
            if self._cameras is not None:
                self._cameras.close()
            if self._gripper is not None:
                self._gripper.close()
            self._call.shutdown()
            self._robot = None  # dropping the last reference disconnects libfranka
