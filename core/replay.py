"""Episode-aware replay on the host (numpy): frames stored once, transitions point at them.

    replay = ReplayBuffer(capacity=100_000)
    replay.add(transition)                    # per step, from one or several actors (keyed by actor/episode)
    replay.add_episode(episode)               # a whole episode at once (demos, restored spool)
    batch = replay.sample(rng, 256, shaping)  # Batch of numpy arrays, n-step optional

Every transition stores an index to its observation frame and to its next-observation frame; inside an
episode the next transition's observation IS the previous next-observation frame (by reference), so an
image is stored once per frame. Frames live in their own ring; a transition whose frames were overwritten is
never sampled. n-step returns follow explicit per-episode links, so sampling never crosses an episode
boundary, whatever the interleaving of actors or the position of the ring's wrap.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from q2rl.interfaces import Transition

SOURCE_CODES = {"bc": 0, "rl": 1, "human": 2}
SOURCE_NAMES = {v: k for k, v in SOURCE_CODES.items()}


class RewardShaping(NamedTuple):
    """r' = scale * r + bias (docs/design.md#reward-shaping-and-monte-carlo-returns), and the discount used for n-step sums."""

    scale: float = 5.0
    bias: float = -1.0
    discount: float = 0.99


class Batch(NamedTuple):
    """A training minibatch. `rewards` is the shaped (n-step) return, `discounts` = gamma^n * (1 - terminal)."""

    obs: dict
    actions: np.ndarray
    rewards: np.ndarray
    discounts: np.ndarray
    next_obs: dict
    a_bc: np.ndarray
    is_demo: np.ndarray


@dataclasses.dataclass
class Episode:
    """One episode as plain numpy arrays (L steps, L+1 observation frames): the unit of export/import/disk."""

    obs: dict  # {"state": [L+1, D], "images": {name: [L+1, H, W, 3]}} (images optional)
    actions: np.ndarray  # [L, A]
    rewards: np.ndarray  # [L] raw (unshaped)
    terminated: np.ndarray  # [L] bool
    truncated: np.ndarray  # [L] bool
    a_bc: np.ndarray  # [L, A]
    a_rl: np.ndarray  # [L, A]
    q_bc: np.ndarray  # [L]
    q_rl: np.ndarray  # [L]
    source: np.ndarray  # [L] int8, SOURCE_CODES
    param_version: np.ndarray  # [L] int64
    actor_id: str = ""
    episode_id: int = 0

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    @property
    def success(self) -> bool:
        """Success terminates the episode (docs/design.md#reward-shaping-and-monte-carlo-returns): the last step's terminated flag."""
        return bool(len(self) and self.terminated[-1])

    def validate(self) -> None:
        """Raise ValueError naming the field when shapes disagree or values are non-finite."""
        n = len(self)
        if n == 0:
            raise ValueError(f"episode {self.actor_id}/{self.episode_id}: empty episode")
        for name in ("rewards", "terminated", "truncated", "q_bc", "q_rl", "source", "param_version"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"episode {self.actor_id}/{self.episode_id}: {name} has shape "
                                 f"{getattr(self, name).shape}, expected ({n},)")
        for name in ("a_bc", "a_rl"):
            if getattr(self, name).shape != self.actions.shape:
                raise ValueError(f"episode {self.actor_id}/{self.episode_id}: {name} shape "
                                 f"{getattr(self, name).shape} != actions shape {self.actions.shape}")
        for name, frames in _flat_obs(self.obs).items():
            if frames.shape[0] != n + 1:
                raise ValueError(f"episode {self.actor_id}/{self.episode_id}: obs {name} has "
                                 f"{frames.shape[0]} frames, expected {n + 1} (one more than steps)")
        if not np.all(np.isfinite(self.actions)):
            raise ValueError(f"episode {self.actor_id}/{self.episode_id}: non-finite action")


def _flat_obs(obs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """{"state": x, "images": {"wrist": y}} -> {"state": x, "images/wrist": y} (any per-camera group: images, or
    the frozen-encoder view's bc_features)."""
    flat = {"state": np.asarray(obs["state"])}
    for group, per_camera in obs.items():
        if group != "state":
            for name, value in (per_camera or {}).items():
                flat[f"{group}/{name}"] = np.asarray(value)
    return flat


def _unflat_obs(flat: Mapping[str, np.ndarray]) -> dict:
    obs: dict = {"state": flat["state"]}
    for key, value in flat.items():
        if "/" in key:
            group, name = key.split("/", 1)
            obs.setdefault(group, {})[name] = value
    return obs


class FrameCarry(NamedTuple):
    """A recurrent pi_BC's memory, stored with every frame under BC_CARRY_KEY (docs/design.md#recurrent-bc): the
    memory at an episode's first frame (`initial`, one frame's, no batch dim), and `step`, the memory after reading
    a batch of frames that hold theirs. Replay recomputes it frame by frame as episodes come in, so the learner
    scores pi_BC with the memory the actor had (same parameters, same observations) and nothing rides on the wire."""

    initial: dict
    step: Callable[[dict], dict]


BC_CARRY_KEY = "bc_carry"  # = core.encoders.BC_CARRY (the replay stays free of the network code)


def _carry_after(carry: FrameCarry, frame: Mapping[str, Any]) -> dict:
    """The memory after one frame (that holds its own memory), as numpy without the batch dim."""
    batched = {k: np.asarray(v)[None] for k, v in _flat_obs(frame).items()}
    return {k: np.asarray(v)[0] for k, v in carry.step(_unflat_obs(batched)).items()}


def _with_carry(obs: Mapping[str, Any], memory: Mapping[str, Any]) -> dict:
    return {**obs, BC_CARRY_KEY: dict(memory)}


FRAME_VIEW_CHUNK = 64  # frames per call of a replay's frame_view on a whole episode (one compiled shape)


def _view_frames(frame_view, flat: Mapping[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
    """`frame_view` over `count` stacked frames, in padded chunks of FRAME_VIEW_CHUNK (so a jitted view compiles
    once, whatever the episode's length)."""
    parts = []
    for start in range(0, count, FRAME_VIEW_CHUNK):
        chunk = {k: v[start:start + FRAME_VIEW_CHUNK] for k, v in flat.items()}
        n = len(chunk["state"])
        if n < FRAME_VIEW_CHUNK:
            chunk = {k: np.concatenate([v, np.repeat(v[-1:], FRAME_VIEW_CHUNK - n, axis=0)]) for k, v in chunk.items()}
        viewed = _flat_obs(frame_view(_unflat_obs(chunk)))
        parts.append({k: np.asarray(v)[:n] for k, v in viewed.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def save_episode(path: str | Path, episode: Episode) -> None:
    """Write an episode as a compressed .npz (no pickle)."""
    arrays = {f"obs/{k}": v for k, v in _flat_obs(episode.obs).items()}
    for f in dataclasses.fields(Episode):
        if f.name not in ("obs", "actor_id", "episode_id"):
            arrays[f.name] = getattr(episode, f.name)
    arrays["meta/actor_id"] = np.array(episode.actor_id)
    arrays["meta/episode_id"] = np.array(episode.episode_id, dtype=np.int64)
    np.savez_compressed(Path(path), **arrays)


def load_episode(path: str | Path) -> Episode:
    """Read an episode written by `save_episode`; a truncated or foreign file is a clear ValueError."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as e:  # zipfile.BadZipFile, EOFError, OSError...
        raise ValueError(f"episode file {path} is unreadable (truncated or not an .npz): {e}") from None
    try:
        fields = {f.name: arrays[f.name] for f in dataclasses.fields(Episode)
                  if f.name not in ("obs", "actor_id", "episode_id")}
        episode = Episode(obs=_unflat_obs({k[4:]: v for k, v in arrays.items() if k.startswith("obs/")}),
                          actor_id=str(arrays["meta/actor_id"]), episode_id=int(arrays["meta/episode_id"]),
                          **fields)
    except KeyError as e:
        raise ValueError(f"episode file {path} lacks the array {e}; was it written by save_episode?") from None
    episode.validate()
    return episode


class _OpenEpisode(NamedTuple):
    last_transition: int  # global id of the latest transition of this episode
    next_frame: int  # global id of that transition's next-observation frame


class ReplayBuffer:
    """Ring buffer of transitions over a ring of observation frames; see the module docstring.

    `frame_capacity` defaults to capacity + capacity // 8 (room for one extra frame per episode of >= 8 steps).
    `frame_view` (obs -> obs, any leading batch dims), when given, maps every frame once as it is stored: the agent's
    frozen-encoder view (core.agents.Agent.frame_view), so replay holds pi_BC's image features, not the images.
    `frame_carry`, for a recurrent pi_BC, stores its memory with every frame (FrameCarry).
    """

    def __init__(self, capacity: int, frame_capacity: int | None = None, action_dim: int = 7,
                 frame_view: Callable[[dict], dict] | None = None, frame_carry: FrameCarry | None = None):
        if capacity <= 0:
            raise ValueError(f"replay capacity must be positive, got {capacity}")
        self.capacity = int(capacity)
        self.frame_capacity = int(frame_capacity or capacity + max(capacity // 8, 2))
        self.action_dim = action_dim
        self.frame_view = frame_view
        self.frame_carry = frame_carry
        self._frames: dict[str, np.ndarray] | None = None  # allocated at the first add
        n, a = self.capacity, action_dim
        self._obs_frame = np.full(n, -1, np.int64)  # global frame ids
        self._next_frame = np.full(n, -1, np.int64)
        self._next_link = np.full(n, -1, np.int64)  # global transition id of the next step in the episode
        self._actions = np.zeros((n, a), np.float32)
        self._a_bc = np.zeros((n, a), np.float32)
        self._a_rl = np.zeros((n, a), np.float32)
        self._rewards = np.zeros(n, np.float32)
        self._terminated = np.zeros(n, bool)
        self._truncated = np.zeros(n, bool)
        self._q_bc = np.zeros(n, np.float32)
        self._q_rl = np.zeros(n, np.float32)
        self._source = np.zeros(n, np.int8)
        self._version = np.zeros(n, np.int64)
        self._episode_uid = np.zeros(n, np.int64)  # buffer-local episode number
        self._step = np.zeros(n, np.int64)
        self.transitions_written = 0
        self.frames_written = 0
        self._open: dict[tuple[str, int], _OpenEpisode] = {}
        self._episode_uids: dict[tuple[str, int], int] = {}
        self._episode_start: dict[int, int] = {}  # uid -> global id of the first transition
        self._completed: list[tuple[str, int]] = []

    # ---------------------------------------------------------------- writing
    def _allocate(self, obs: Mapping[str, Any]) -> None:
        flat = _flat_obs(obs)
        self._frames = {k: np.zeros((self.frame_capacity, *v.shape), v.dtype) for k, v in flat.items()}

    def _write_frame(self, obs: Mapping[str, Any], viewed: bool = False) -> int:
        """Store one frame (mapped by frame_view unless `viewed`); its global id."""
        if self.frame_view is not None and not viewed:
            one = self.frame_view(_unflat_obs({k: v[None] for k, v in _flat_obs(obs).items()}))
            obs = _unflat_obs({k: np.asarray(v)[0] for k, v in _flat_obs(one).items()})
        flat = _flat_obs(obs)
        if self._frames is None:
            self._allocate(obs)
        assert self._frames is not None
        if flat.keys() != self._frames.keys():
            raise ValueError(f"observation keys {sorted(flat)} differ from the buffer's {sorted(self._frames)}")
        fid = self.frames_written
        slot = fid % self.frame_capacity
        for k, v in flat.items():
            if v.shape != self._frames[k].shape[1:]:
                raise ValueError(f"observation {k} has shape {v.shape}, the buffer stores {self._frames[k].shape[1:]}")
            self._frames[k][slot] = v
        self.frames_written += 1
        return fid

    def add(self, t: Transition) -> None:
        """Add one step. Within an episode (actor_id, episode_id), `t.obs` must be the previous `next_obs`."""
        key = (t.actor_id, int(t.episode_id))
        action = np.asarray(t.action, np.float32)
        if action.shape != (self.action_dim,) or not np.all(np.isfinite(action)):
            raise ValueError(f"transition {key} step {t.step}: action must be finite float[{self.action_dim}], "
                             f"got {action!r}")
        opened = self._open.get(key)
        if opened is not None and opened.last_transition >= self.transitions_written - self.capacity and \
                opened.next_frame > self.frames_written - self.frame_capacity:
            obs_frame = opened.next_frame  # by reference: same frame as the previous next_obs
            prev_state = self._frames["state"][obs_frame % self.frame_capacity]
            if not np.array_equal(prev_state, np.asarray(t.obs["state"], prev_state.dtype)):
                raise ValueError(f"transition {key} step {t.step}: obs differs from the previous next_obs "
                                 "(steps out of order, or a missing step?)")
        else:
            first = t.obs if self.frame_carry is None else _with_carry(t.obs, self.frame_carry.initial)
            obs_frame = self._write_frame(first)
        next_obs = t.next_obs
        if self.frame_carry is not None:
            slot = obs_frame % self.frame_capacity
            frame = _unflat_obs({k: v[slot] for k, v in self._frames.items()})
            next_obs = _with_carry(next_obs, _carry_after(self.frame_carry, frame))
        next_frame = self._write_frame(next_obs)
        self._put(key, obs_frame, next_frame, step=t.step, action=action, reward=t.reward,
                  terminated=t.terminated, truncated=t.truncated, a_bc=t.a_bc, a_rl=t.a_rl, q_bc=t.q_bc,
                  q_rl=t.q_rl, source=SOURCE_CODES[t.source], version=t.param_version)

    def _put(self, key, obs_frame, next_frame, *, step, action, reward, terminated, truncated, a_bc, a_rl,
             q_bc, q_rl, source, version) -> None:
        gid = self.transitions_written
        i = gid % self.capacity
        uid = self._episode_uids.get(key)
        if uid is None:
            uid = self._episode_uids[key] = len(self._episode_uids)
            self._episode_start[uid] = gid
        opened = self._open.get(key)
        if opened is not None and opened.last_transition >= gid - self.capacity:
            self._next_link[opened.last_transition % self.capacity] = gid
        self._obs_frame[i], self._next_frame[i], self._next_link[i] = obs_frame, next_frame, -1
        self._actions[i] = action
        self._a_bc[i] = np.clip(np.asarray(a_bc, np.float32), -1.0, 1.0)
        self._a_rl[i] = a_rl
        self._rewards[i], self._terminated[i], self._truncated[i] = reward, terminated, truncated
        self._q_bc[i], self._q_rl[i], self._source[i], self._version[i] = q_bc, q_rl, source, version
        self._episode_uid[i], self._step[i] = uid, step
        self.transitions_written += 1
        if terminated or truncated:
            self._open.pop(key, None)
            self._completed.append(key)
        else:
            self._open[key] = _OpenEpisode(gid, next_frame)

    def end_episode(self, actor_id: str, episode_id: int) -> None:
        """Close an episode that ended without a terminal flag (crash, quit): later steps start fresh."""
        if self._open.pop((actor_id, int(episode_id)), None) is not None:
            self._completed.append((actor_id, int(episode_id)))

    def add_episode(self, ep: Episode) -> None:
        """Add a whole episode (L steps, L+1 frames); each frame is written once."""
        ep.validate()
        key = (ep.actor_id, int(ep.episode_id))
        if key in self._episode_uids:
            raise ValueError(f"episode {key} is already in the buffer")
        flat = _flat_obs(ep.obs)
        if self.frame_view is not None:
            flat = _view_frames(self.frame_view, flat, len(ep) + 1)
        if self.frame_carry is not None:
            flat = self._carry_frames(flat, len(ep) + 1)
        frame_ids = [self._write_frame(_unflat_obs({k: v[j] for k, v in flat.items()}), viewed=True)
                     for j in range(len(ep) + 1)]
        for t in range(len(ep)):
            self._put(key, frame_ids[t], frame_ids[t + 1], step=t, action=ep.actions[t], reward=ep.rewards[t],
                      terminated=bool(ep.terminated[t]), truncated=bool(ep.truncated[t]), a_bc=ep.a_bc[t],
                      a_rl=ep.a_rl[t], q_bc=ep.q_bc[t], q_rl=ep.q_rl[t], source=int(ep.source[t]),
                      version=int(ep.param_version[t]))
        if not (ep.terminated[-1] or ep.truncated[-1]):
            self.end_episode(*key)

    def _carry_frames(self, flat: Mapping[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
        """`flat` (count frames of one episode) with the recurrent pi_BC's memory at each frame, from the first."""
        assert self.frame_carry is not None
        flat = {k: v for k, v in flat.items() if not k.startswith(BC_CARRY_KEY + "/")}  # recomputed, never trusted
        memory = [dict(self.frame_carry.initial)]
        for j in range(count - 1):
            frame = _with_carry(_unflat_obs({k: v[j] for k, v in flat.items()}), memory[-1])
            memory.append(_carry_after(self.frame_carry, frame))
        stacked = {f"{BC_CARRY_KEY}/{k}": np.stack([m[k] for m in memory]) for k in memory[0]}
        return {**flat, **stacked}

    # ---------------------------------------------------------------- reading
    def __len__(self) -> int:
        return self.transitions_written - self.oldest_valid()

    def oldest_valid(self) -> int:
        """Global id of the oldest transition still in the ring with both frames intact."""
        lo = max(0, self.transitions_written - self.capacity)
        min_frame = self.frames_written - self.frame_capacity
        # obs-frame ids grow with transition ids, so the first valid one is found by bisection
        hi = self.transitions_written
        while lo < hi:
            mid = (lo + hi) // 2
            if self._obs_frame[mid % self.capacity] >= min_frame:
                hi = mid
            else:
                lo = mid + 1
        return lo

    @property
    def completed_episodes(self) -> list[tuple[str, int]]:
        """Keys (actor_id, episode_id) of the episodes that have ended, oldest first."""
        return list(self._completed)

    def _frames_at(self, frame_ids: np.ndarray) -> dict:
        assert self._frames is not None
        slots = frame_ids % self.frame_capacity
        return _unflat_obs({k: v[slots] for k, v in self._frames.items()})

    def sample(self, rng: np.random.Generator, batch_size: int, shaping: RewardShaping = RewardShaping(),
               n_step: int = 1) -> Batch:
        """Uniform minibatch over valid transitions; n-step returns stop at the episode's end."""
        lo, hi = self.oldest_valid(), self.transitions_written
        if hi <= lo:
            raise ValueError("cannot sample from an empty replay buffer")
        gids = rng.integers(lo, hi, size=batch_size)
        return self.gather(gids, shaping, n_step)

    def gather(self, gids: np.ndarray, shaping: RewardShaping = RewardShaping(), n_step: int = 1) -> Batch:
        """The Batch for the given global transition ids (see `sample`)."""
        idx = gids % self.capacity
        returns = np.zeros(len(gids), np.float64)
        discount = np.ones(len(gids), np.float64)
        alive = np.ones(len(gids), bool)  # still accumulating (no terminal/truncation reached)
        cur = gids.copy()
        last = idx.copy()
        min_frame = self.frames_written - self.frame_capacity
        for k in range(n_step):
            ci = cur % self.capacity
            r = shaping.scale * self._rewards[ci] + shaping.bias
            returns = np.where(alive, returns + discount * r, returns)
            discount = np.where(alive, discount * shaping.discount, discount)
            last = np.where(alive, ci, last)
            ended = self._terminated[ci] | self._truncated[ci]
            if k == n_step - 1:
                break
            link = self._next_link[ci]
            link_ok = (link >= 0) & (link >= self.transitions_written - self.capacity)
            link_ok &= self._next_frame[np.where(link_ok, link, 0) % self.capacity] >= min_frame
            alive = alive & ~ended & link_ok
            cur = np.where(alive, link, cur)
        terminal = self._terminated[last]
        discounts = discount * (~terminal)
        return Batch(
            obs=self._frames_at(self._obs_frame[idx]),
            actions=self._actions[idx],
            rewards=returns.astype(np.float32),
            discounts=discounts.astype(np.float32),
            next_obs=self._frames_at(self._next_frame[last]),
            a_bc=self._a_bc[idx],
            is_demo=np.zeros(len(gids), bool),
        )

    def export_episode(self, actor_id: str, episode_id: int) -> Episode:
        """The stored episode as numpy arrays (raises KeyError if unknown, ValueError if partly overwritten)."""
        key = (actor_id, int(episode_id))
        uid = self._episode_uids[key]
        gid = self._episode_start[uid]
        if gid < self.oldest_valid():
            raise ValueError(f"episode {key} has been partly overwritten in the replay ring")
        gids = [gid]
        while True:
            link = self._next_link[gids[-1] % self.capacity]
            if link < 0:
                break
            gids.append(int(link))
        idx = np.asarray(gids) % self.capacity
        frames = np.concatenate([self._obs_frame[idx], self._next_frame[idx[-1:]]])
        return Episode(
            obs=self._frames_at(frames), actions=self._actions[idx].copy(), rewards=self._rewards[idx].copy(),
            terminated=self._terminated[idx].copy(), truncated=self._truncated[idx].copy(),
            a_bc=self._a_bc[idx].copy(), a_rl=self._a_rl[idx].copy(), q_bc=self._q_bc[idx].copy(),
            q_rl=self._q_rl[idx].copy(), source=self._source[idx].copy(), param_version=self._version[idx].copy(),
            actor_id=actor_id, episode_id=int(episode_id),
        )

    def source_fraction(self, source: str = "bc", last: int = 1000) -> float:
        """Share of the latest `last` transitions whose executed action came from `source`."""
        hi = self.transitions_written
        lo = max(self.oldest_valid(), hi - last)
        if hi <= lo:
            return float("nan")
        idx = np.arange(lo, hi) % self.capacity
        return float(np.mean(self._source[idx] == SOURCE_CODES[source]))


def demo_to_episode(demo: Any, episode_id: int, cameras: Sequence[str] = ()) -> Episode:
    """A demonstration (`q2rl.demos.hdf5.Demo`) as a replay Episode (a_bc = the demonstrated action, source human)."""
    n = len(demo.actions)
    last_state = demo.next_states[-1:] if demo.next_states is not None else demo.states[-1:]
    obs: dict = {"state": np.concatenate([demo.states, last_state]).astype(np.float32)}
    if cameras:
        nxt = demo.next_images or {}
        obs["images"] = {c: np.concatenate([demo.images[c], (nxt.get(c) if c in nxt else demo.images[c])[-1:]])
                         for c in cameras}
    success = bool(demo.success)
    actions = np.clip(demo.actions, -1, 1).astype(np.float32)
    return Episode(
        obs=obs, actions=actions, rewards=np.asarray(demo.rewards, np.float32),
        terminated=np.r_[np.zeros(n - 1, bool), success], truncated=np.r_[np.zeros(n - 1, bool), not success],
        a_bc=actions, a_rl=actions, q_bc=np.zeros(n, np.float32), q_rl=np.zeros(n, np.float32),
        source=np.full(n, SOURCE_CODES["human"], np.int8), param_version=np.zeros(n, np.int64),
        actor_id="demos", episode_id=episode_id)


def demo_buffer(demos: Sequence[Any], action_dim: int, cameras: Sequence[str] = (),
                frame_view: Callable[[dict], dict] | None = None,
                frame_carry: FrameCarry | None = None) -> ReplayBuffer | None:
    """The demo buffer of symmetric sampling: the successful demonstrations (a failed recording is usually an
    aborted attempt, not behaviour to copy), each as one episode; None when none succeeded. `frame_view` and
    `frame_carry`: as the online replay's (ReplayBuffer)."""
    episodes = [demo_to_episode(d, i, cameras) for i, d in enumerate(demos) if d.success]
    if not episodes:
        return None
    buffer = ReplayBuffer(sum(len(e) for e in episodes) + 1, action_dim=action_dim, frame_view=frame_view,
                          frame_carry=frame_carry)
    for episode in episodes:
        buffer.add_episode(episode)
    return buffer


def sample_demos(rng: np.random.Generator, demos: ReplayBuffer, batch_size: int,
                 shaping: RewardShaping = RewardShaping(), n_step: int = 1) -> Batch:
    """A batch from the demo buffer alone, marked as demos (offline pre-training, and sample_mixed's demo part)."""
    return demos.sample(rng, batch_size, shaping, n_step)._replace(is_demo=np.ones(batch_size, bool))


def sample_mixed(rng: np.random.Generator, online: ReplayBuffer, demos: ReplayBuffer | None, batch_size: int,
                 shaping: RewardShaping = RewardShaping(), n_step: int = 1, demo_fraction: float = 0.5) -> Batch:
    """Symmetric sampling (RLPD): `demo_fraction` of the batch from the demo buffer, the rest online."""
    if demos is None or len(demos) == 0 or demo_fraction <= 0:
        return online.sample(rng, batch_size, shaping, n_step)
    n_demo = int(round(batch_size * demo_fraction))
    a = online.sample(rng, batch_size - n_demo, shaping, n_step)
    b = sample_demos(rng, demos, n_demo, shaping, n_step)
    import jax  # local: the replay itself is numpy-only

    return jax.tree_util.tree_map(lambda x, y: np.concatenate([x, y]), a, b)


def stack_batches(batches: list[Batch]) -> Batch:
    """[Batch] -> Batch with a leading axis (the UTD axis of one update call)."""
    import jax

    return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *batches)
