"""The simulated Franka as a gymnasium env with the real robot's contract (see q2rl.interfaces).

Action (float32[7] in [-1, 1], clipped): TCP delta x, y, z (times `position_scale` metres), roll, pitch, yaw
about the fixed world axes (times `rotation_scale` radians; the three form a rotation vector in the base frame
applied before the current target orientation, exactly as q2rl.robot.franka does), gripper: with `gripper_mode="binary"` (default, like the real robot's
GripperCommandFilter) above +threshold closes, below -threshold opens, in between keeps the last command;
with "continuous" the value sets the finger-gap target (-1 fully open .. +1 closed).

Control, once per 0.1 s step: the target TCP pose moves by the action (the target stays within 1 cm /
0.1 rad of the measured pose, so pushing against the table cannot wind up force, and within the task's
workspace box and tilt limits); two damped-least-squares IK iterations, with a null-space pull towards the
home posture, turn it into joint targets for the joint position servos; the targets ramp over the first
80 % of the step (a jump would saturate the servos) and MuJoCo runs the substeps in five calls, without
Python per substep. This is what keeps it at thousands of steps per second.

State (float32): TCP position (3), TCP orientation as 6-D rotation (first two columns of the rotation
matrix, world frame; 6), finger gap in metres (1); with `privileged_state`, then per task body
(`task.state_bodies`) its position (3) and quaternion (w, x, y, z with w >= 0; 4).
"""

from __future__ import annotations

import os
import weakref

import gymnasium as gym
import mujoco
import numpy as np

from q2rl.robot.sim import rotations
from q2rl.robot.sim.config import SimEnvConfig
from q2rl.robot.sim.model import ARM_JOINTS, build_model
from q2rl.robot.sim.tasks import WORKSPACE_HIGH, WORKSPACE_LOW, ResetPlan, Task, make_task

PROPRIO_DIM = 10
BODY_POSE_DIM = 7
STATE_BOUND = 10.0
MAX_FINGER = 0.04  # per finger; the gap is twice the finger joint
# Home orientation of the TCP: pointing down, fingers opening along world y.
HOME_ROT = np.diag([1.0, -1.0, -1.0])
# Tilt limits of the target orientation around HOME_ROT, as a rotation vector (roll, pitch, yaw), radians.
ROTATION_LIMIT = np.array([0.6, 0.6, 1.2])
POSITION_WINDUP = 0.01
ROTATION_WINDUP = 0.1
IK_DAMPING = 1e-3
NULLSPACE_GAIN = 0.5
Q_HOME_GUESS = np.array([0.0, 0.2, 0.0, -2.2, 0.0, 2.4, 0.785])
RAMP_CHUNKS = 5
IK_ITERATIONS_PER_STEP = 2
SETTLE_STEPS = 30  # physics steps after a reset so grasps and resting objects settle


class FrankaSimEnv(gym.Env):
    """A simulated Panda doing one task; see the module docstring for the action and state layout."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, cfg: SimEnvConfig):
        cfg.validate()
        self.cfg = cfg
        self.render_mode = "rgb_array"
        self.task: Task = make_task(cfg.task)
        self.model = build_model(self.task, cfg)
        self.data = mujoco.MjData(self.model)
        self._scratch = mujoco.MjData(self.model)  # IK iterates on this copy, never on the live state
        self.max_episode_steps = cfg.max_episode_steps or self.task.default_max_steps
        self._tcp = self.model.site("tcp").id
        self._arm_qpos = np.array([self.model.joint(j).qposadr[0] for j in ARM_JOINTS])
        self._arm_dof = np.array([self.model.joint(j).dofadr[0] for j in ARM_JOINTS])
        self._finger_qpos = np.array([self.model.joint(f"finger_joint{i}").qposadr[0] for i in (1, 2)])
        self._q_low = self.model.jnt_range[[self.model.joint(j).id for j in ARM_JOINTS], 0]
        self._q_high = self.model.jnt_range[[self.model.joint(j).id for j in ARM_JOINTS], 1]
        self._body_ids = [self.model.body(b).id for b in self.task.state_bodies]
        self._jacp = np.zeros((3, self.model.nv))
        self._jacr = np.zeros((3, self.model.nv))
        self.q_home = Q_HOME_GUESS  # the IK's null-space target while solving for the real home posture
        self.q_home = self._solve_ik(Q_HOME_GUESS, np.array([0.45, 0.0, 0.2]), HOME_ROT, iterations=200)
        self._target_pos = np.zeros(3)
        self._target_rot = HOME_ROT.copy()
        self.elapsed_steps = 0  # control steps since the last reset
        self._gripper_closed = False
        self._renderer: mujoco.Renderer | None = None
        self._view_renderers: dict[int, mujoco.Renderer] = {}  # render_view's, by size
        self.observation_space = self._make_observation_space()
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(7,), dtype=np.float32)

    # ----------------------------------------------------------------------------------------- spaces
    @property
    def state_dim(self) -> int:
        return PROPRIO_DIM + (BODY_POSE_DIM * len(self._body_ids) if self.cfg.privileged_state else 0)

    def _make_observation_space(self) -> gym.spaces.Dict:
        spaces: dict[str, gym.Space] = {
            # Loose finite bounds (metres, unit vectors, quaternions): the table plane keeps objects near.
            "state": gym.spaces.Box(-STATE_BOUND, STATE_BOUND, shape=(self.state_dim,), dtype=np.float32)
        }
        if self.cfg.cameras:
            shape = (self.cfg.image_size, self.cfg.image_size, 3)
            spaces["images"] = gym.spaces.Dict(
                {c: gym.spaces.Box(0, 255, shape=shape, dtype=np.uint8) for c in self.cfg.cameras}
            )
        return gym.spaces.Dict(spaces)

    # ------------------------------------------------------------------------------------ kinematics
    def tcp_pose(self, data: mujoco.MjData | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Measured TCP position and rotation matrix (world frame)."""
        data = self.data if data is None else data
        return data.site_xpos[self._tcp].copy(), data.site_xmat[self._tcp].reshape(3, 3).copy()

    def _ik_step(self, data: mujoco.MjData, target_pos: np.ndarray, target_rot: np.ndarray) -> np.ndarray:
        """Joint positions one damped-least-squares step closer to the target pose (kinematics must be fresh)."""
        pos, rot = self.tcp_pose(data)
        error = np.concatenate([target_pos - pos, rotations.log_map(target_rot @ rot.T)])
        mujoco.mj_jacSite(self.model, data, self._jacp, self._jacr, self._tcp)
        jac = np.vstack([self._jacp[:, self._arm_dof], self._jacr[:, self._arm_dof]])
        q = data.qpos[self._arm_qpos]
        pinv = jac.T @ np.linalg.inv(jac @ jac.T + IK_DAMPING * np.eye(6))  # damped pseudo-inverse
        # Null-space pull towards the home posture keeps the elbow where a Panda operator expects it.
        pull = NULLSPACE_GAIN * (self.q_home - q)
        dq = pinv @ error + pull - pinv @ (jac @ pull)
        return np.clip(q + dq, self._q_low, self._q_high)

    def _solve_ik(self, q0: np.ndarray, pos: np.ndarray, rot: np.ndarray, iterations: int) -> np.ndarray:
        """Joint positions that put the TCP at (pos, rot), by iterating IK steps on a scratch copy."""
        d = self._scratch
        d.qpos[:] = self.data.qpos
        d.qpos[self._arm_qpos] = q0
        for _ in range(iterations):
            mujoco.mj_kinematics(self.model, d)
            mujoco.mj_comPos(self.model, d)
            d.qpos[self._arm_qpos] = self._ik_step(d, pos, rot)
        return d.qpos[self._arm_qpos].copy()

    # ------------------------------------------------------------------------------------------ reset
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        plan = self.task.plan_reset(self.np_random)
        self._apply_plan(plan)
        self.elapsed_steps = 0
        return self._observation(), {"success": False}

    def _apply_plan(self, plan: ResetPlan) -> None:
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        ee_rot = rotations.rotz(plan.ee_yaw) @ HOME_ROT
        q = self._solve_ik(self.q_home, plan.ee_pos, ee_rot, iterations=30)
        d.qpos[self._arm_qpos] = q
        d.ctrl[: len(ARM_JOINTS)] = q
        finger = MAX_FINGER
        for name, (pos, quat) in plan.mocap_bodies.items():
            mocap = m.body_mocapid[m.body(name).id]
            d.mocap_pos[mocap], d.mocap_quat[mocap] = pos, quat
        for name, (pos, quat) in plan.free_bodies.items():
            adr = m.joint(name).qposadr[0]
            d.qpos[adr : adr + 3], d.qpos[adr + 3 : adr + 7] = pos, quat
        mujoco.mj_kinematics(m, d)
        if plan.grasped_body is not None:
            tcp_pos, tcp_rot = self.tcp_pose()
            adr = m.joint(plan.grasped_body).qposadr[0]
            d.qpos[adr : adr + 3] = tcp_pos + tcp_rot[:, 2] * plan.grasp_offset
            body_rot = tcp_rot @ HOME_ROT.T  # upright body with the hand's heading
            quat = np.zeros(4)
            mujoco.mju_mat2Quat(quat, body_rot.ravel())
            d.qpos[adr + 3 : adr + 7] = quat
            finger = plan.grasped_half_width
        d.qpos[self._finger_qpos] = finger
        self._gripper_closed = plan.grasped_body is not None
        d.ctrl[len(ARM_JOINTS)] = 0.0 if self._gripper_closed else MAX_FINGER
        mujoco.mj_forward(m, d)
        mujoco.mj_step(m, d, nstep=SETTLE_STEPS)
        self._refresh_kinematics()
        self._target_pos, self._target_rot = self.tcp_pose()

    def _refresh_kinematics(self) -> None:
        # mj_step leaves positions one substep stale; the observation and the next IK step need them fresh.
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)

    # ------------------------------------------------------------------------------------------- step
    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        action = self._checked_action(action)
        pos, rot = self.tcp_pose()
        target_pos, target_rot = self._next_target(pos, rot, action)
        self._target_pos, self._target_rot = target_pos, target_rot
        d = self.data
        q_start = d.qpos[self._arm_qpos].copy()
        q_goal = self._solve_ik(q_start, target_pos, target_rot, iterations=IK_ITERATIONS_PER_STEP)
        d.ctrl[len(ARM_JOINTS)] = self._finger_target(action[6])
        # Ramp the joint targets over the first part of the step: a step change would saturate the servos.
        chunks = [len(c) for c in np.array_split(np.arange(self.cfg.substeps), RAMP_CHUNKS) if len(c)]
        for i, nstep in enumerate(chunks):
            frac = min(1.0, (i + 1) / (len(chunks) - 1)) if len(chunks) > 1 else 1.0
            d.ctrl[: len(ARM_JOINTS)] = q_start + frac * (q_goal - q_start)
            mujoco.mj_step(self.model, d, nstep=nstep)
        self._refresh_kinematics()
        self.elapsed_steps += 1
        success = self.task.success(self.model, d)
        truncated = (not success) and self.elapsed_steps >= self.max_episode_steps
        info = {"success": success}
        return self._observation(), float(success), success, truncated, info

    def _finger_target(self, value: float) -> float:
        """Finger joint target for the gripper action (binary with a dead band, or continuous)."""
        if self.cfg.gripper_mode == "continuous":
            return MAX_FINGER * (1.0 - value) / 2.0
        if value > self.cfg.gripper_threshold:
            self._gripper_closed = True
        elif value < -self.cfg.gripper_threshold:
            self._gripper_closed = False
        return 0.0 if self._gripper_closed else MAX_FINGER

    @staticmethod
    def _checked_action(action: np.ndarray) -> np.ndarray:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (7,):
            raise ValueError(f"action must have shape (7,) (xyz, roll/pitch/yaw, gripper), got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action contains NaN or inf: {a.tolist()}; the policy produced a non-finite action")
        return np.clip(a, -1.0, 1.0)

    def _next_target(self, pos: np.ndarray, rot: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        base_pos = pos + np.clip(self._target_pos - pos, -POSITION_WINDUP, POSITION_WINDUP)
        target_pos = np.clip(base_pos + action[:3] * self.cfg.position_scale, WORKSPACE_LOW, WORKSPACE_HIGH)
        lag = rotations.log_map(self._target_rot @ rot.T)
        lag_angle = np.linalg.norm(lag)
        if lag_angle > ROTATION_WINDUP:
            lag *= ROTATION_WINDUP / lag_angle
        base_rot = rotations.exp_map(lag) @ rot
        # Like the real robot (q2rl.robot.franka): a rotation vector in the base frame, applied on the left.
        target_rot = rotations.exp_map(action[3:6] * self.cfg.rotation_scale) @ base_rot
        tilt = np.clip(rotations.log_map(target_rot @ HOME_ROT.T), -ROTATION_LIMIT, ROTATION_LIMIT)
        return target_pos, rotations.exp_map(tilt) @ HOME_ROT

    # ------------------------------------------------------------------------------------ observation
    def privileged_state(self) -> np.ndarray:
        """The state with object poses, whatever `privileged_state` says (for scripted experts and logging)."""
        pos, rot = self.tcp_pose()
        parts = [pos, rotations.rot6d(rot), [self.gripper_width()]]
        for body in self._body_ids:
            parts.append(self.data.xpos[body])
            parts.append(rotations.canonical_quat(self.data.xquat[body]))
        return np.concatenate(parts).astype(np.float32)

    def gripper_width(self) -> float:
        """Gap between the finger pads in metres."""
        return float(self.data.qpos[self._finger_qpos].sum())

    def _observation(self) -> dict:
        state = self.privileged_state()
        if not self.cfg.privileged_state:
            state = state[:PROPRIO_DIM].copy()
        obs = {"state": state}
        if self.cfg.cameras:
            obs["images"] = {c: self._render(c) for c in self.cfg.cameras}
        return obs

    def _new_renderer(self, size: int) -> mujoco.Renderer:
        try:
            renderer = mujoco.Renderer(self.model, size, size)
        except mujoco.FatalError as e:  # MUJOCO_GL is read when mujoco is imported: too late to set it here
            raise RuntimeError(
                f"MuJoCo cannot render the cameras {list(self.cfg.cameras)} (MUJOCO_GL="
                f"{os.environ.get('MUJOCO_GL', 'unset')}): set MUJOCO_GL=egl (headless; osmesa needs apt libosmesa6) "
                f"before starting Python, as the q2rl command and .venv/bin/activate do ({e})") from None
        # Free the GL context at interpreter exit too (before EGL is torn down) if nobody calls close().
        weakref.finalize(self, renderer.close)
        flags = renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = self.cfg.shadows
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = self.cfg.reflections
        flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = False
        return renderer

    def _render(self, camera: str) -> np.ndarray:
        if self._renderer is None:
            self._renderer = self._new_renderer(self.cfg.image_size)
        self._renderer.update_scene(self.data, camera=camera)
        return self._renderer.render()

    def render_view(self, camera: str = "front", size: int = 320) -> np.ndarray:
        """An RGB frame of `camera` at `size` x `size` pixels, whatever the observation's image size (rollout
        videos want more pixels than a policy reads); the observation's images are unchanged by it."""
        renderer = self._view_renderers.get(size)
        if renderer is None:
            # The offscreen buffer is sized when a renderer is made: widen it for this one (rendering only).
            visual = self.model.vis.global_
            visual.offwidth, visual.offheight = max(visual.offwidth, size), max(visual.offheight, size)
            renderer = self._view_renderers[size] = self._new_renderer(size)
        renderer.update_scene(self.data, camera=camera)
        return renderer.render()

    def render(self) -> np.ndarray:
        """An RGB frame from the front camera (gymnasium's rgb_array mode)."""
        return self._render("front")

    def close(self) -> None:
        for renderer in [self._renderer, *self._view_renderers.values()]:
            if renderer is not None:
                renderer.close()
        self._renderer, self._view_renderers = None, {}
