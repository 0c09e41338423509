"""Scripted experts for the simulated tasks, with human-like imperfection.

    expert = make_expert("pick_cube", noise=0.2, rng=np.random.default_rng(0))
    obs, _ = env.reset(seed=0); expert.reset()
    action = expert.act(expert_observation(env))  # or expert.act(obs) when obs["state"] is privileged

Experts are reactive state machines over the privileged state (TCP pose, finger gap, object poses). When the
policy's observation is image-only or proprioceptive, read the privileged state through the documented
accessor `env.unwrapped.privileged_state()` (`expert_observation(env)` wraps it).

`noise` (>= 0, action units; 0 = a clean expert) sets, all from the passed rng:
  - Gaussian noise of std `noise` on the six motion dimensions of every action;
  - hesitation: with probability `noise / 4` per step the expert pauses for 1-4 steps (motion ~0);
  - a suboptimal approach: it first heads for a waypoint off by ~`noise * 8 cm`, then corrects;
  - a slower, per-episode speed (gain down to 1 - noise/2) and a small grasp-point bias (~`noise * 4 mm`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from q2rl.robot.sim import rotations
from q2rl.robot.sim.config import SimEnvConfig
from q2rl.robot.sim.env import BODY_POSE_DIM, HOME_ROT, PROPRIO_DIM
from q2rl.robot.sim.tasks import (
    BOARD_HEIGHT,
    CUBE_HALF,
    PEG_HALF,
    TRAY_FLOOR,
    make_task,
)

OPEN, CLOSE = -1.0, 1.0
HOVER = 0.07  # approach height above a cube's centre
CARRY_Z = 0.13
TRAVEL_TIP_Z = 0.09  # peg tip height while travelling (clears the 6 cm distractor)
GRASP_MIN, GRASP_MAX = 0.028, 0.0435  # finger gap when holding a 4 cm cube


@dataclasses.dataclass(frozen=True)
class ExpertView:
    """The privileged state, unpacked."""

    ee_pos: np.ndarray
    ee_rot: np.ndarray
    gripper: float
    body_pos: tuple[np.ndarray, ...]
    body_quat: tuple[np.ndarray, ...]

    @property
    def ee_yaw(self) -> float:
        return float(np.arctan2(self.ee_rot[1, 0], self.ee_rot[0, 0]))


def expert_observation(env) -> dict:
    """An observation carrying the privileged state, whatever the env's observation config is."""
    return {"state": env.unwrapped.privileged_state()}


def unpack_state(state: np.ndarray, n_bodies: int) -> ExpertView:
    """Split a privileged state vector (layout in q2rl.robot.sim.env) into named parts."""
    expected = PROPRIO_DIM + BODY_POSE_DIM * n_bodies
    state = np.asarray(state, dtype=np.float64)
    if state.shape != (expected,):
        raise ValueError(
            f"scripted expert needs the privileged state of length {expected}, got shape {state.shape}; "
            "pass expert_observation(env) (env.unwrapped.privileged_state()) when obs['state'] is not privileged"
        )
    bodies = state[PROPRIO_DIM:].reshape(n_bodies, BODY_POSE_DIM)
    return ExpertView(
        ee_pos=state[:3],
        ee_rot=rotations.rot6d_to_matrix(state[3:9]),
        gripper=float(state[9]),
        body_pos=tuple(b[:3] for b in bodies),
        body_quat=tuple(b[3:] for b in bodies),
    )


def nearest_square_yaw(body_yaw: float, ee_yaw: float, limit: float = 1.0) -> float:
    """The tool heading that matches a body with 90-degree symmetry: within +-limit of home, nearest ee_yaw."""
    base = rotations.wrap_angle(4.0 * body_yaw) / 4.0
    candidates = [base + k * np.pi / 2 for k in (-2, -1, 0, 1, 2) if abs(base + k * np.pi / 2) <= limit]
    return float(min(candidates, key=lambda c: abs(c - ee_yaw)))


class ScriptedExpert:
    """Base of the experts: turns (target pose, gripper) into actions and adds the configured imperfection."""

    def __init__(self, task: str, noise: float, rng: np.random.Generator, cfg: SimEnvConfig):
        if noise < 0 or not np.isfinite(noise):
            raise ValueError(f"noise must be a finite number >= 0, got {noise}")
        self.task = make_task(task)
        self.noise = float(noise)
        self.rng = rng
        self.cfg = cfg
        self.reset()

    def reset(self) -> None:
        """Start a new episode: new per-episode imperfections, fresh state machine."""
        n = self.noise
        self._pause = 0
        self._gain = 1.0 - 0.5 * min(n, 1.0) * self.rng.uniform() if n > 0 else 1.0
        self._new_detour()
        self._grasp_bias = self.rng.normal(0.0, 0.004 * n, size=2) if n > 0 else np.zeros(2)
        self._reset_machine()

    def _new_detour(self) -> None:
        """A waypoint offset (x, y) the next approach wanders to before it heads for its goal."""
        self._detour = self.rng.normal(0.0, 0.08 * self.noise, size=2) if self.noise > 0 else np.zeros(2)
        self._detour_done = self.noise == 0

    def _reset_machine(self) -> None:
        pass

    def act(self, obs: dict) -> np.ndarray:
        """The next action, float32[7] in [-1, 1], from an observation with the privileged state."""
        view = unpack_state(obs["state"], len(self.task.state_bodies))
        return self._imperfect(self._clean_action(view))

    def _clean_action(self, view: ExpertView) -> np.ndarray:
        raise NotImplementedError

    def _move(self, view: ExpertView, target_pos: np.ndarray, target_yaw: float, gripper: float) -> np.ndarray:
        """The action that heads for the target TCP position and heading (tool pointing down)."""
        delta = (target_pos - view.ee_pos) / self.cfg.position_scale
        target_rot = rotations.rotz(target_yaw) @ HOME_ROT
        rot = rotations.log_map(target_rot @ view.ee_rot.T) / self.cfg.rotation_scale
        action = np.concatenate([np.clip(delta, -1, 1) * self._gain, np.clip(rot, -1, 1), [gripper]])
        return action

    def _imperfect(self, action: np.ndarray) -> np.ndarray:
        if self.noise > 0:
            if self._pause == 0 and self.rng.uniform() < self.noise / 4:
                self._pause = int(self.rng.integers(1, 5))
            if self._pause > 0:
                self._pause -= 1
                action[:6] *= 0.1
            action[:6] += self.rng.normal(0.0, self.noise, size=6)
        return np.clip(action, -1.0, 1.0).astype(np.float32)


class _PickSkill:
    """Approach, descend, close, lift: the grasp of a 4 cm cube, reused by pick_cube and kitting."""

    def __init__(self, expert: ScriptedExpert):
        self.expert = expert
        self.phase = "approach"
        self.closing_steps = 0

    def holding(self, view: ExpertView, cube: np.ndarray) -> bool:
        rel = cube - view.ee_pos
        return GRASP_MIN < view.gripper < GRASP_MAX and np.linalg.norm(rel[:2]) < 0.02 and abs(rel[2]) < 0.025

    def act(self, view: ExpertView, cube: np.ndarray, cube_quat: np.ndarray) -> np.ndarray | None:
        """An action towards grasping the cube, or None once it is held and lifted off the table."""
        ex = self.expert
        yaw = nearest_square_yaw(rotations.quat_yaw(cube_quat), view.ee_yaw)
        grasp_xy = cube[:2] + ex._grasp_bias
        xy_err = np.linalg.norm(grasp_xy - view.ee_pos[:2])
        yaw_err = abs(rotations.wrap_angle(yaw - view.ee_yaw))
        if self.phase in ("close", "lift") and self.closing_steps >= 3 and not self.holding(view, cube):
            self.phase, self.closing_steps = "approach", 0  # the grasp missed or slipped: try again
        if self.phase == "approach":
            if not ex._detour_done:
                waypoint = np.append(grasp_xy + ex._detour, cube[2] + HOVER + 0.03)
                if np.linalg.norm(waypoint - view.ee_pos) < 0.02:
                    ex._detour_done = True
                return ex._move(view, waypoint, yaw, OPEN)
            hover = np.append(grasp_xy, cube[2] + HOVER)
            if view.ee_pos[2] < cube[2] + 0.03 and xy_err > 0.01:  # too low to slide over: rise first
                return ex._move(view, np.append(view.ee_pos[:2], cube[2] + HOVER), yaw, OPEN)
            if xy_err < 0.006 and yaw_err < 0.06 and view.gripper > 0.06:
                self.phase = "descend"
            else:
                return ex._move(view, hover, yaw, OPEN)
        if self.phase == "descend":
            if xy_err > 0.015:
                self.phase = "approach"
                return ex._move(view, np.append(grasp_xy, cube[2] + HOVER), yaw, OPEN)
            if view.ee_pos[2] - cube[2] > 0.004:
                return ex._move(view, np.append(grasp_xy, cube[2]), yaw, OPEN)
            self.phase = "close"
        if self.phase == "close":
            self.closing_steps += 1
            if self.closing_steps < 3:
                return ex._move(view, view.ee_pos, view.ee_yaw, CLOSE)
            self.phase = "lift"
        return None


class PickCubeExpert(ScriptedExpert):
    """Grasp the cube and lift it."""

    def _reset_machine(self) -> None:
        self.skill = _PickSkill(self)

    def _clean_action(self, view: ExpertView) -> np.ndarray:
        cube, quat = view.body_pos[0], view.body_quat[0]
        action = self.skill.act(view, cube, quat)
        if action is None:  # holding: lift straight up
            action = self._move(view, np.append(view.ee_pos[:2], CUBE_HALF + 0.15), view.ee_yaw, CLOSE)
        return action


class PegInsertExpert(ScriptedExpert):
    """Line the held peg up over the hole (position and heading), then push it in, re-aligning when stuck."""

    def _reset_machine(self) -> None:
        self.inserting = False
        self.stuck_steps = 0
        self.last_z = np.inf

    def _clean_action(self, view: ExpertView) -> np.ndarray:
        peg, peg_quat = view.body_pos[0], view.body_quat[0]
        board, board_quat = view.body_pos[1], view.body_quat[1]
        offset = peg[:2] - view.ee_pos[:2]  # where the peg sits relative to the TCP
        hole_xy = board[:2] + self._grasp_bias * 0.5
        xy_err = np.linalg.norm(hole_xy - peg[:2])
        # Heading the peg must turn by to match the hole (90-degree symmetric), kept within the tilt limits.
        peg_in_hand = rotations.wrap_angle(rotations.quat_yaw(peg_quat) - view.ee_yaw)
        target_yaw = nearest_square_yaw(rotations.quat_yaw(board_quat) - peg_in_hand, view.ee_yaw)
        yaw_delta = rotations.wrap_angle(target_yaw - view.ee_yaw)
        tip_z = peg[2] - PEG_HALF[2]
        top = board[2] + BOARD_HEIGHT
        above = top + 0.015  # tip height at which the peg is lined up
        tcp_xy = hole_xy - offset
        if not self._detour_done:
            waypoint = np.append(tcp_xy + self._detour, view.ee_pos[2] + (above - tip_z) + 0.03)
            if np.linalg.norm(waypoint - view.ee_pos) < 0.02:
                self._detour_done = True
            return self._move(view, waypoint, target_yaw, CLOSE)
        aligned = xy_err < 0.0025 and abs(yaw_delta) < 0.03
        if not self.inserting:
            if tip_z < top + 0.005 and xy_err > 0.004:  # tip below the top but off the hole: back out first
                return self._move(view, np.append(view.ee_pos[:2], view.ee_pos[2] + 0.02), target_yaw, CLOSE)
            if aligned and abs(tip_z - above) < 0.01:
                self.inserting, self.stuck_steps, self.last_z = True, 0, tip_z
            else:
                # Travel with the tip high enough to clear other objects; come down once over the hole.
                tip_goal = above if xy_err < 0.02 else max(above, TRAVEL_TIP_Z)
                return self._move(view, np.append(tcp_xy, view.ee_pos[2] + (tip_goal - tip_z)), target_yaw, CLOSE)
        # Inserting: keep correcting x/y/heading while pushing down; back off if it stops going in.
        self.stuck_steps = self.stuck_steps + 1 if tip_z > self.last_z - 0.002 else 0
        self.last_z = min(self.last_z, tip_z)
        if self.stuck_steps >= 3 or xy_err > 0.006:
            self.inserting = False
            return self._move(view, np.append(tcp_xy, view.ee_pos[2] + 0.02), target_yaw, CLOSE)
        return self._move(view, np.append(tcp_xy, view.ee_pos[2] - 0.015), target_yaw, CLOSE)


class KittingExpert(ScriptedExpert):
    """Pick each cube in turn and place it into its slot in the tray."""

    slots = (np.array([-0.035, 0.0]), np.array([0.035, 0.0]))

    def _reset_machine(self) -> None:
        self.skill = _PickSkill(self)
        self.current = 0

    def _placed(self, cube: np.ndarray, tray: np.ndarray) -> bool:
        return bool(np.all(np.abs(cube[:2] - tray[:2]) < 0.055) and cube[2] < TRAY_FLOOR + CUBE_HALF + 0.01)

    def _clean_action(self, view: ExpertView) -> np.ndarray:
        tray = view.body_pos[2]
        while self.current < 2 and self._placed(view.body_pos[self.current], tray):
            self.current += 1
            self.skill = _PickSkill(self)
            self._new_detour()  # each pick wanders on its own
        if self.current >= 2:
            return self._move(view, np.append(view.ee_pos[:2], CARRY_Z), view.ee_yaw, OPEN)
        cube, quat = view.body_pos[self.current], view.body_quat[self.current]
        slot = np.append(tray[:2] + self.slots[self.current], TRAY_FLOOR + CUBE_HALF + 0.012)
        if not self.skill.holding(view, cube) or self.skill.phase != "lift":
            action = self.skill.act(view, cube, quat)
            if action is not None:
                return action
        # Holding: carry high, move over the slot, lower, let go.
        xy_err = np.linalg.norm(slot[:2] - view.ee_pos[:2])
        if xy_err > 0.008:
            if view.ee_pos[2] < CARRY_Z - 0.03 and xy_err > 0.03:  # rise before moving sideways
                return self._move(view, np.append(view.ee_pos[:2], CARRY_Z), view.ee_yaw, CLOSE)
            return self._move(view, np.append(slot[:2], CARRY_Z), view.ee_yaw, CLOSE)
        if view.ee_pos[2] - slot[2] > 0.006:
            return self._move(view, slot, view.ee_yaw, CLOSE)
        return self._move(view, view.ee_pos, view.ee_yaw, OPEN)


_EXPERTS = {"pick_cube": PickCubeExpert, "peg_insert": PegInsertExpert, "kitting": KittingExpert}


def make_expert(
    task: str, noise: float, rng: np.random.Generator, cfg: SimEnvConfig | None = None
) -> ScriptedExpert:
    """The scripted expert of `task` (shifted variants use their base task's expert).

    `cfg` must match the env's action scaling (position_scale, rotation_scale); default SimEnvConfig().
    """
    cfg = cfg or SimEnvConfig(task=task)
    base = make_task(task).name
    return _EXPERTS[base](task, noise, rng, cfg)
