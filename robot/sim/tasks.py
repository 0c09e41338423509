"""The simulated tasks: scene objects, start distributions, success tests and time limits.

Every task names the bodies whose poses make up the privileged part of the state (`state_bodies`), in a
fixed order; a task and its `_shifted` variant share that order, so a policy trained on one runs on the
other. The shifted variants move the start region of the objects and add a distractor body that is not in
the state (it is visible to cameras and physically present), like the Q2RL paper's distribution shift.

Default time limits at 10 Hz (the scripted expert at noise 0 needs about half of each):
    pick_cube   60 steps (6 s)    lift the cube 8 cm
    peg_insert  80 steps (8 s)    insert a grasped square peg into a hole with 1.5 mm clearance per side
    kitting    200 steps (20 s)   put two cubes into a tray
"""

from __future__ import annotations

import dataclasses

import mujoco
import numpy as np

from q2rl.robot.sim import rotations

TABLE_Z = 0.0
CUBE_HALF = 0.02
LIFT_HEIGHT = 0.08  # pick_cube succeeds when the cube's centre is this far above its resting height
PEG_HALF = (0.01, 0.01, 0.04)
PEG_GRASP_OFFSET = 0.003  # peg centre below the TCP (along the tool axis) when it starts in the hand
HOLE_HALF = 0.0115  # 1.5 mm clearance per side around the 2 cm peg
BOARD_HALF = 0.06
BOARD_HEIGHT = 0.04
PEG_SUCCESS_DEPTH = 0.025  # how far the peg's tip must be below the board's top
PEG_SUCCESS_XY = 0.006
TRAY_INNER_HALF = 0.075
TRAY_WALL = 0.005
TRAY_WALL_HEIGHT = 0.03
TRAY_FLOOR = 0.006
KITTING_MARGIN = 0.005

# Workspace box of the TCP (metres, world frame); targets are clipped into it.
WORKSPACE_LOW = np.array([0.28, -0.32, 0.012])
WORKSPACE_HIGH = np.array([0.75, 0.32, 0.35])
EE_START = np.array([0.45, 0.0, 0.20])
EE_START_NOISE = np.array([0.03, 0.05, 0.03])
EE_START_YAW_NOISE = 0.15


@dataclasses.dataclass(frozen=True)
class Region:
    """An axis-aligned rectangle on the table: centre (x, y) and half-extent (x, y)."""

    center: tuple[float, float]
    half: tuple[float, float]

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        return np.asarray(self.center) + rng.uniform(-1.0, 1.0, size=2) * np.asarray(self.half)


@dataclasses.dataclass
class ResetPlan:
    """Where a reset puts the robot and the objects.

    free_bodies: body name -> (pos[3], quat[4]) for bodies with a free joint.
    mocap_bodies: body name -> (pos[3], quat[4]) for fixed fixtures (board, tray) moved per episode.
    grasped_body: a free body that starts held between the fingers (placed by the env after the arm),
        its centre `grasp_offset` metres past the TCP along the tool axis.
    """

    ee_pos: np.ndarray
    ee_yaw: float
    free_bodies: dict[str, tuple[np.ndarray, np.ndarray]]
    mocap_bodies: dict[str, tuple[np.ndarray, np.ndarray]]
    grasped_body: str | None = None
    grasped_half_width: float = 0.0
    grasp_offset: float = 0.0


def _box_body(name: str, half: tuple[float, float, float], rgba: str, mass: float) -> str:
    return (
        f'<body name="{name}" pos="0 0 {half[2]}"><freejoint name="{name}"/>'
        f'<geom type="box" size="{half[0]} {half[1]} {half[2]}" mass="{mass}" rgba="{rgba}" condim="4" '
        f'friction="1.0 0.01 0.001"/></body>'
    )


def _distractor_body() -> str:
    return (
        '<body name="distractor" pos="0 0 0.03"><freejoint name="distractor"/>'
        '<geom type="cylinder" size="0.022 0.03" mass="0.08" rgba="0.2 0.35 0.9 1" condim="4"/></body>'
    )


def _sample_separated(rng: np.random.Generator, regions: list[Region], min_dist: float) -> list[np.ndarray]:
    """One point per region, pairwise at least `min_dist` apart (rejection sampling from rng)."""
    for _ in range(1000):
        points = [r.sample(rng) for r in regions]
        if all(np.linalg.norm(a - b) >= min_dist for i, a in enumerate(points) for b in points[i + 1 :]):
            return points
    raise RuntimeError("could not place objects apart; the regions are too small")


def _sample_away(rng: np.random.Generator, region: Region, avoid: np.ndarray, min_dist: float) -> np.ndarray:
    """A point of `region` at least `min_dist` from `avoid` (rejection sampling from rng)."""
    for _ in range(1000):
        point = region.sample(rng)
        if np.linalg.norm(point - avoid) >= min_dist:
            return point
    raise RuntimeError("could not place an object away from another; the region is too small")


def _ee_start(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    pos = EE_START + rng.uniform(-1.0, 1.0, size=3) * EE_START_NOISE
    return pos, float(rng.uniform(-EE_START_YAW_NOISE, EE_START_YAW_NOISE))


class Task:
    """Base of the tasks: subclasses fill in the scene, the start distribution and the success test."""

    name: str = ""
    default_max_steps: int = 0
    state_bodies: tuple[str, ...] = ()

    def __init__(self, shifted: bool):
        self.shifted = shifted

    @property
    def full_name(self) -> str:
        return self.name + ("_shifted" if self.shifted else "")

    def scene_xml(self) -> str:
        """MJCF worldbody children of the task's objects."""
        raise NotImplementedError

    def plan_reset(self, rng: np.random.Generator) -> ResetPlan:
        raise NotImplementedError

    def success(self, model: mujoco.MjModel, data: mujoco.MjData) -> bool:
        raise NotImplementedError


def _body_pos(model: mujoco.MjModel, data: mujoco.MjData, name: str) -> np.ndarray:
    return data.xpos[model.body(name).id]


def _body_quat(model: mujoco.MjModel, data: mujoco.MjData, name: str) -> np.ndarray:
    return data.xquat[model.body(name).id]


class PickCube(Task):
    """Lift a 4 cm cube (random position and heading) 8 cm off the table."""

    name = "pick_cube"
    default_max_steps = 60
    state_bodies = ("cube",)
    region = Region((0.5, 0.0), (0.08, 0.10))
    shifted_region = Region((0.5, 0.19), (0.08, 0.05))

    def scene_xml(self) -> str:
        xml = _box_body("cube", (CUBE_HALF,) * 3, "0.85 0.2 0.2 1", 0.05)
        return xml + (_distractor_body() if self.shifted else "")

    def plan_reset(self, rng: np.random.Generator) -> ResetPlan:
        ee_pos, ee_yaw = _ee_start(rng)
        region = self.shifted_region if self.shifted else self.region
        xy = region.sample(rng)
        yaw = rng.uniform(-np.pi / 4, np.pi / 4)
        free = {"cube": (np.array([xy[0], xy[1], CUBE_HALF]), rotations.yaw_quat(yaw))}
        if self.shifted:  # the distractor sits where the cube used to be
            free["distractor"] = (np.append(self.region.sample(rng), 0.03), np.array([1.0, 0, 0, 0]))
        return ResetPlan(ee_pos, ee_yaw, free, {})

    def success(self, model: mujoco.MjModel, data: mujoco.MjData) -> bool:
        return bool(_body_pos(model, data, "cube")[2] > CUBE_HALF + LIFT_HEIGHT)


class PegInsert(Task):
    """Insert a square peg, which starts in the hand, into a square hole in a board (1.5 mm clearance)."""

    name = "peg_insert"
    default_max_steps = 80
    state_bodies = ("peg", "board")
    region = Region((0.55, 0.0), (0.05, 0.10))
    shifted_region = Region((0.55, -0.2), (0.05, 0.05))
    board_yaw = 0.4

    def scene_xml(self) -> str:
        h, b, z = HOLE_HALF, BOARD_HALF, BOARD_HEIGHT / 2
        side = (b - h) / 2
        walls = [
            (0, h + side, b, side),
            (0, -(h + side), b, side),
            (h + side, 0, side, h),
            (-(h + side), 0, side, h),
        ]
        geoms = "".join(
            f'<geom type="box" pos="{x} {y} {z}" size="{sx} {sy} {z}" rgba="0.55 0.4 0.25 1"/>' for x, y, sx, sy in walls
        )
        xml = f'<body name="board" mocap="true" pos="0.55 0 0">{geoms}</body>'
        xml += _box_body("peg", PEG_HALF, "0.95 0.65 0.1 1", 0.03)
        return xml + (_distractor_body() if self.shifted else "")

    def plan_reset(self, rng: np.random.Generator) -> ResetPlan:
        ee_pos, ee_yaw = _ee_start(rng)
        region = self.shifted_region if self.shifted else self.region
        xy = region.sample(rng)
        yaw = rng.uniform(-self.board_yaw, self.board_yaw)
        mocap = {"board": (np.array([xy[0], xy[1], TABLE_Z]), rotations.yaw_quat(yaw))}
        free = {"peg": (np.zeros(3), np.array([1.0, 0, 0, 0]))}  # placed in the hand by the env
        if self.shifted:  # the distractor sits in the nominal region, off the board
            spot = _sample_away(rng, self.region, xy, 0.12)
            free["distractor"] = (np.append(spot, 0.03), np.array([1.0, 0, 0, 0]))
        return ResetPlan(
            ee_pos, ee_yaw, free, mocap, grasped_body="peg", grasped_half_width=PEG_HALF[0],
            grasp_offset=PEG_GRASP_OFFSET + rng.uniform(-0.005, 0.012),  # how deep the hand holds the peg varies
        )

    def success(self, model: mujoco.MjModel, data: mujoco.MjData) -> bool:
        peg, board = _body_pos(model, data, "peg"), _body_pos(model, data, "board")
        tip_z = peg[2] - PEG_HALF[2]
        inside = np.linalg.norm(peg[:2] - board[:2]) < PEG_SUCCESS_XY
        return bool(inside and tip_z < board[2] + BOARD_HEIGHT - PEG_SUCCESS_DEPTH)


class Kitting(Task):
    """Put two cubes into a tray (long horizon: two pick-and-place cycles)."""

    name = "kitting"
    default_max_steps = 200
    state_bodies = ("cube_a", "cube_b", "tray")
    object_regions = (Region((0.45, -0.12), (0.05, 0.08)), Region((0.6, -0.12), (0.05, 0.08)))
    shifted_object_regions = (Region((0.62, -0.2), (0.05, 0.06)), Region((0.62, 0.0), (0.05, 0.05)))
    tray_region = Region((0.5, 0.18), (0.04, 0.03))

    def scene_xml(self) -> str:
        i, w, hw = TRAY_INNER_HALF, TRAY_WALL, TRAY_WALL_HEIGHT / 2
        o = i + w
        geoms = f'<geom type="box" pos="0 0 {TRAY_FLOOR / 2}" size="{o} {o} {TRAY_FLOOR / 2}" rgba="0.3 0.3 0.3 1"/>'
        for x, y, sx, sy in [(0, o - w, o, w), (0, -(o - w), o, w), (o - w, 0, w, o), (-(o - w), 0, w, o)]:
            geoms += f'<geom type="box" pos="{x} {y} {hw}" size="{sx} {sy} {hw}" rgba="0.3 0.3 0.3 1"/>'
        xml = f'<body name="tray" mocap="true" pos="0.5 0.18 0">{geoms}</body>'
        xml += _box_body("cube_a", (CUBE_HALF,) * 3, "0.85 0.2 0.2 1", 0.05)
        xml += _box_body("cube_b", (CUBE_HALF,) * 3, "0.2 0.75 0.25 1", 0.05)
        return xml + (_distractor_body() if self.shifted else "")

    def plan_reset(self, rng: np.random.Generator) -> ResetPlan:
        ee_pos, ee_yaw = _ee_start(rng)
        regions = list(self.shifted_object_regions if self.shifted else self.object_regions)
        if self.shifted:
            regions.append(self.object_regions[0])  # the distractor
        points = _sample_separated(rng, regions, 0.08)
        free = {}
        for name, xy in zip(("cube_a", "cube_b"), points):
            free[name] = (np.array([xy[0], xy[1], CUBE_HALF]), rotations.yaw_quat(rng.uniform(-np.pi / 4, np.pi / 4)))
        if self.shifted:
            free["distractor"] = (np.append(points[2], 0.03), np.array([1.0, 0, 0, 0]))
        tray = np.append(self.tray_region.sample(rng), TABLE_Z)
        return ResetPlan(ee_pos, ee_yaw, free, {"tray": (tray, np.array([1.0, 0, 0, 0]))})

    def success(self, model: mujoco.MjModel, data: mujoco.MjData) -> bool:
        tray = _body_pos(model, data, "tray")
        limit = TRAY_INNER_HALF - CUBE_HALF + KITTING_MARGIN
        for name in ("cube_a", "cube_b"):
            p = _body_pos(model, data, name)
            if np.any(np.abs(p[:2] - tray[:2]) > limit) or p[2] > TRAY_FLOOR + CUBE_HALF + 0.01:
                return False
        return True


_TASK_CLASSES = {cls.name: cls for cls in (PickCube, PegInsert, Kitting)}
TASKS: tuple[str, ...] = tuple(n for base in _TASK_CLASSES for n in (base, base + "_shifted"))


def make_task(name: str) -> Task:
    """The task called `name` (one of TASKS)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {list(TASKS)}")
    shifted = name.endswith("_shifted")
    return _TASK_CLASSES[name.removesuffix("_shifted")](shifted)
