"""The few seams of q2rl, in one place.

    env = make_env(cfg.env)                     # robot.sim (MuJoCo) or robot.franka (real): same contract
    obs, info = env.reset(seed=0)
    while running:
        params = source.latest()                # ParameterSource: gRPC receiver or in-process learner
        action, gate = select_action(params, obs, key)   # core: pure, jitted
        next_obs, reward, terminated, truncated, info = env.step(action)
        sink.add(Transition(...))               # TransitionSink: gRPC sender (spooled) or in-process replay
        if terminated or truncated:
            sink.end_episode(EpisodeReport(...))

gRPC is one implementation of ParameterSource / TransitionSink; an in-process one serves tests.

Observation contract (sim and real alike):
    obs = {"state": float32[D], "images": {"wrist": uint8[H, W, 3], "front": uint8[H, W, 3]}}
`images` is present only when the config asks for cameras. Actions are float32[7] in [-1, 1]:
end-effector delta (x, y, z, roll, pitch, yaw) scaled per config, then the gripper (-1 open, +1 close).
Success is `info["success"]`; success terminates, the time limit truncates.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping, Protocol, runtime_checkable

import numpy as np

Observation = Mapping[str, Any]  # {"state": np.ndarray, "images": {name: np.ndarray}}
ActionSource = Literal["bc", "rl", "human"]
ACTION_DIM = 7


@dataclasses.dataclass(frozen=True)
class Transition:
    """One environment step as the actor records it (SPEC §1.2, §2).

    `next_obs` is the observation after the step; a replay stores images once per frame, so senders may
    drop `next_obs` images when the next transition's `obs` carries the same frame.
    """

    actor_id: str
    episode_id: int
    step: int
    seq: int
    obs: Observation
    action: np.ndarray
    reward: float
    terminated: bool
    truncated: bool
    next_obs: Observation
    a_bc: np.ndarray
    a_rl: np.ndarray
    q_bc: float
    q_rl: float
    source: ActionSource
    param_version: int


@dataclasses.dataclass(frozen=True)
class EpisodeReport:
    """How an episode ended, as the actor saw it."""

    actor_id: str
    episode_id: int
    length: int
    success: bool
    undiscounted_return: float
    bc_share: float
    eval: bool = False
    cut: bool = False  # ended by a crash, quit or fault rather than success/time limit
    fault: str = ""


@runtime_checkable
class RobotEnv(Protocol):
    """What an environment (simulated or real Franka) must do: a gymnasium env with the contract above."""

    observation_space: Any
    action_space: Any

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]: ...

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]: ...

    def close(self) -> None: ...


@runtime_checkable
class ParameterSource(Protocol):
    """Where the actor gets the learner's latest parameters. Never blocks."""

    def latest(self) -> tuple[int, Any] | None:
        """(version, params) of the newest set received, or None before the first one."""
        ...


@runtime_checkable
class TransitionSink(Protocol):
    """The write side of replay, as the actor sees it. Never blocks the control loop."""

    def add(self, transition: Transition) -> None: ...

    def end_episode(self, report: EpisodeReport) -> None: ...
