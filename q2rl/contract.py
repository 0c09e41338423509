"""What a run's data must look like, checked before a byte of it is stored (docs/design.md#the-wire).

    contract = TransitionContract(state_dim=17, cameras={"wrist": (128, 128, 3)})     # from the run config
    t, pending = check_transition(item.transition, contract, actor_id)   # decoded, or ContractError
    check_continuity(item.transition, last, reported_episode)            # the next step of the actor's stream?
    report = check_report(item.report, actor_id)

The learner's service runs these on every item of a batch before it stores any of them, so a bad batch is refused
whole; resume runs the same checks on what is stored, so data an older learner stored unchecked is left out of
replay instead of crashing it. A ContractError says which seq and which field, and what the run expects.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, NamedTuple

import numpy as np

from q2rl import wire
from q2rl.interfaces import ACTION_DIM, EpisodeReport, Transition
from q2rl.wire import pb


class ContractError(wire.WireError):
    """An item that decodes but breaks the run's contract (shape, dtype, a non-finite value, continuity)."""


@dataclasses.dataclass(frozen=True)
class TransitionContract:
    """A run's transitions: a float32 state of `state_dim` values, exactly these cameras as uint8 HxWx3 images,
    and float32 action, a_bc and a_rl of `action_dim` values. learner/cli.py builds it from the run config's
    cameras and pi_BC's state size."""

    state_dim: int
    cameras: Mapping[str, tuple[int, int, int]] = dataclasses.field(default_factory=dict)
    action_dim: int = ACTION_DIM


class LastStep(NamedTuple):
    """What the next transition of an actor must continue: its newest stored one."""

    episode_id: int
    step: int
    ended: bool  # terminated or truncated: the episode has no next step
    next_state: bytes  # next_obs.state's bytes, which the next step's obs.state must repeat

    @classmethod
    def of(cls, m: "pb.Transition") -> "LastStep":
        return cls(m.episode_id, m.step, m.terminated or m.truncated, m.next_obs.state.data)


def _check_array(what: str, a: np.ndarray, dtype: type, shape: tuple | None, run_has: str, finite: bool) -> None:
    if a.dtype != dtype:
        raise ContractError(f"{what} has dtype {a.dtype.name}, the run's {run_has} are {np.dtype(dtype).name}")
    if shape is not None and a.shape != shape:
        raise ContractError(f"{what} has shape {a.shape}, the run's {run_has} are {shape}")
    if finite and not np.isfinite(a).all():
        raise ContractError(f"{what} holds non-finite values ({a[~np.isfinite(a)][:3].tolist()})")


def _check_obs(what: str, obs: dict, contract: TransitionContract | None, with_images: bool) -> None:
    """A state of the run's size (1-D without a contract), finite; the run's camera images, or none when
    `with_images` is False (they travel with the next transition)."""
    state = obs["state"]
    _check_array(f"{what}.state", state, np.float32, (contract.state_dim,) if contract else None, "states", True)
    if state.ndim != 1:
        raise ContractError(f"{what}.state has shape {state.shape}, a state is a vector")
    images = obs.get("images", {})
    if not with_images:
        if images:
            raise ContractError(f"{what}.images are sent although next_images_in_next_transition says the next "
                                "transition carries them")
        return
    if contract is not None and set(images) != set(contract.cameras):
        raise ContractError(f"{what}.images has cameras {sorted(images)}, the run's are {sorted(contract.cameras)}")
    for name, image in images.items():
        shape = tuple(contract.cameras[name]) if contract else None
        _check_array(f"{what}.images[{name}]", image, np.uint8, shape, "images", False)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ContractError(f"{what}.images[{name}] has shape {image.shape}, not an HxWx3 image")


def check_transition(m: "pb.Transition", contract: TransitionContract | None,
                     actor_id: str) -> tuple[Transition, bool]:
    """The decoded transition and its next_images_in_next_transition flag, if `m` is whole and fits the run's
    `contract` (None: only what every run shares is checked); else a ContractError naming the seq and the field."""
    where = f"transition seq {m.seq}"
    if m.actor_id != actor_id:
        raise ContractError(f"{where}: names actor {m.actor_id!r}, but it came from actor {actor_id!r}")
    if m.source == pb.ACTION_SOURCE_UNSPECIFIED:
        raise ContractError(f"{where}: source is ACTION_SOURCE_UNSPECIFIED; say which policy chose the action")
    for name in ("obs", "next_obs", "action", "a_bc", "a_rl"):
        if not m.HasField(name):
            raise ContractError(f"{where}: {name} is missing")
    if m.episode_id < 0 or m.step < 0:
        raise ContractError(f"{where}: episode {m.episode_id} step {m.step}; both count from 0")
    try:
        t, pending = wire.decode_transition(m)
    except wire.WireError as e:
        raise ContractError(str(e)) from None
    _check_obs(f"{where}: obs", t.obs, contract, True)
    _check_obs(f"{where}: next_obs", t.next_obs, contract, not pending)
    for name in ("action", "a_bc", "a_rl"):
        shape = (contract.action_dim if contract else ACTION_DIM,)
        _check_array(f"{where}: {name}", getattr(t, name), np.float32, shape, "actions", True)
    for name in ("reward", "q_bc", "q_rl"):
        if not math.isfinite(getattr(m, name)):
            raise ContractError(f"{where}: {name} is {getattr(m, name)}, not a finite number")
    if pending and (m.terminated or m.truncated):
        raise ContractError(f"{where}: next_images_in_next_transition is set on the last step of an episode, "
                            "whose next frame never comes")
    if pending and contract is not None and not contract.cameras:
        raise ContractError(f"{where}: next_images_in_next_transition is set, but the run has no cameras")
    return t, pending


def check_continuity(m: "pb.Transition", last: LastStep | None, reported_episode: int) -> None:
    """A ContractError unless `m` continues its actor's stream after `last` (None: nothing known, any step may
    come): the next step of the same episode, starting from the state that step ended in, or step 0 of a later
    episode that is not reported yet."""
    where = f"transition seq {m.seq}"
    if last is not None and m.episode_id == last.episode_id:
        if last.ended:
            raise ContractError(f"{where}: episode {m.episode_id} already ended at step {last.step}")
        if m.step != last.step + 1:
            raise ContractError(f"{where}: step {m.step} does not follow step {last.step} of episode {m.episode_id}")
        if m.obs.state.data != last.next_state:
            raise ContractError(f"{where}: obs.state differs from the next_obs.state of step {last.step}")
        return
    if last is not None and m.episode_id < last.episode_id:
        raise ContractError(f"{where}: episode {m.episode_id} comes after episode {last.episode_id}")
    if m.episode_id <= reported_episode:
        raise ContractError(f"{where}: episode {m.episode_id} was reported already")
    if last is not None and m.step != 0:
        raise ContractError(f"{where}: episode {m.episode_id} starts at step {m.step}, not 0")


def check_report(m: "pb.EpisodeReport", actor_id: str) -> EpisodeReport:
    """The decoded report if its fields make sense; else a ContractError naming the episode and the field."""
    where = f"report of episode {m.episode_id} (after seq {m.after_seq})"
    if m.actor_id != actor_id:
        raise ContractError(f"{where}: names actor {m.actor_id!r}, but it came from actor {actor_id!r}")
    if m.episode_id < 0 or m.length < 0:
        raise ContractError(f"{where}: episode {m.episode_id} length {m.length}; neither can be negative")
    if not math.isfinite(m.undiscounted_return):
        raise ContractError(f"{where}: undiscounted_return is {m.undiscounted_return}, not a finite number")
    if not 0.0 <= m.bc_share <= 1.0:
        raise ContractError(f"{where}: bc_share is {m.bc_share}, not a share in [0, 1]")
    return wire.decode_report(m)
