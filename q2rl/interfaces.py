"""The few seams of q2rl, in one place.

    env = make_env(cfg.env)                     # robot.sim (MuJoCo) or robot.franka (real): same contract
    obs, info = env.reset(seed=0)
    while running:
        params = source.latest()                # ParameterSource: gRPC receiver or in-process link
        hold while source.grants() forbids the next seq   # sim pacing; a real robot keeps its control rate
        action, gate = select_action(params, obs, key)   # core: pure, jitted
        next_obs, reward, terminated, truncated, info = env.step(action)
        sink.add(Transition(...))               # TransitionSink: gRPC sender (spooled) or in-process link
        if terminated or truncated:
            sink.end_episode(EpisodeReport(...))

    learner.publish(board)                      # ParameterBoard: the learner's side of the same link

Two implementations of these seams, one system: gRPC between processes (actor.link.ActorLink and
learner.service.LearnerService with its ParameterBoard), and in one process (q2rl.local.LocalLink), which
the benchmarks and tests use to run the very same Actor and Learner without a network.

Observation contract (sim and real alike):
    obs = {"state": float32[D], "images": {"wrist": uint8[H, W, 3], "front": uint8[H, W, 3]}}
`images` is present only when the config asks for cameras. Actions are float32[7] in [-1, 1]:
end-effector delta (x, y, z, roll, pitch, yaw) scaled per config, then the gripper (-1 open, +1 close).
Success is `info["success"]`; success terminates, the time limit truncates.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

Observation = Mapping[str, Any]  # {"state": np.ndarray, "images": {name: np.ndarray}}
ActionSource = Literal["bc", "rl", "human"]
ACTION_DIM = 7


@dataclasses.dataclass(frozen=True)
class Transition:
    """One environment step as the actor records it (docs/design.md#per-step-record).

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


@dataclasses.dataclass(frozen=True)
class Grants:
    """Sim pacing: the highest seq each actor may send now. An actor the learner has not heard from yet may send
    up to its first seq + `new_actor_steps` (-1: nothing yet)."""

    max_seq: Mapping[str, int]
    new_actor_steps: int = -1

    def for_actor(self, actor_id: str, first_seq: int) -> int:
        """The highest seq `actor_id` may send; `first_seq` is the seq it started this process at."""
        mine = self.max_seq.get(actor_id)
        return int(mine) if mine is not None else first_seq + self.new_actor_steps


def example_obs(state_dim: int, images: Mapping[str, tuple[int, int, int]]) -> dict:
    """One zero observation with the contract's layout (shapes only; initialises the networks)."""
    obs: dict[str, Any] = {"state": np.zeros((state_dim,), np.float32)}
    if images:
        obs["images"] = {k: np.zeros(v, np.uint8) for k, v in images.items()}
    return obs


class ObservationError(ValueError):
    """An environment's observation breaks the contract above; the message names the field and what to check."""


def policy_obs(obs: Observation, cameras: Sequence[str] | Mapping[str, tuple[int, int, int]],
               state_dim: int | None = None) -> dict:
    """Only the parts of an observation the networks read (a fixed structure for the jitted functions), checked
    against the contract: a finite state (of `state_dim` values, when given) and, per camera, a uint8 HxWx3 image (of
    the given shape, when `cameras` maps names to shapes). ObservationError says what is wrong; a camera that stopped
    delivering or a resized stream must never reach the networks as a shape error deep inside JAX."""
    if "state" not in obs:
        raise ObservationError("observation: no 'state' (the robot's proprioception)")
    state = np.asarray(obs["state"], np.float32)
    if state.ndim != 1 or (state_dim is not None and state.shape[0] != state_dim):
        raise ObservationError(f"observation: state has shape {state.shape}, the run reads "
                               f"[{state_dim if state_dim is not None else 'D'}]")
    if not np.all(np.isfinite(state)):
        raise ObservationError(f"observation: state holds non-finite values at indices "
                               f"{np.flatnonzero(~np.isfinite(state)).tolist()}; check the robot's state stream")
    out: dict = {"state": state}
    if cameras:
        images = obs.get("images") or {}
        shapes = cameras if isinstance(cameras, Mapping) else dict.fromkeys(cameras)
        for name, shape in shapes.items():
            if name not in images:
                raise ObservationError(f"observation: camera {name!r} is missing (it gives {sorted(images) or 'none'});"
                                       " check that camera's connection and the config's camera names")
            image = np.asarray(images[name])
            want = tuple(shape) if shape is not None else (None, None, 3)
            if image.dtype != np.uint8 or image.ndim != 3 or any(w not in (None, h) for w, h in zip(want, image.shape)):
                size = "x".join("H" if w is None else str(w) for w in want)
                raise ObservationError(f"observation: camera {name!r} gave a {image.dtype} image of shape "
                                       f"{image.shape}; the run reads uint8 {size} RGB (the config's image size)")
        out["images"] = {name: images[name] for name in shapes}
    return out


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
        """(version, {subset: tree}) of the newest parameter set received, or None before the first one; a new
        tuple object per set received (the actor adopts by identity: a restarted learner may repeat a version)."""
        ...

    def grants(self) -> Grants | None:
        """The newest pacing grants received, or None before the first."""
        ...


@runtime_checkable
class ParameterBoard(Protocol):
    """Where the learner publishes: the newest parameter set (latest only) and the pacing grants."""

    def publish(self, version: int, subsets: Mapping[str, Any]) -> None:
        """Make {subset: tree} the newest set; `version` increases with every set."""
        ...

    def publish_grants(self, grants: Grants) -> None: ...


@runtime_checkable
class TransitionSink(Protocol):
    """The write side of replay, as the actor sees it. Never blocks the control loop."""

    def add(self, transition: Transition) -> None: ...

    def end_episode(self, report: EpisodeReport) -> None: ...

    def send_held(self) -> None:
        """Send now a transition `add` holds back (to send its next frame once, with the step after): the actor
        calls it before it waits for the learner, which may be waiting for that very transition."""
        ...
