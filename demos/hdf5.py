"""Demonstrations in robomimic-compatible HDF5: write episode by episode, read into typed containers.

Layout (robomimic's, which its tools and ours both read):

    data                      attrs: env_args (JSON), total, num_samples, q2rl_format_version
    data/demo_N               attrs: num_samples, success, seed
    data/demo_N/obs/<key>     [T, ...]     observation before each action
    data/demo_N/next_obs/<key>[T, ...]     observation after each action (optional)
    data/demo_N/actions       f32[T, A]
    data/demo_N/rewards       f32[T]
    data/demo_N/dones         u8[T]        1 where the episode terminated (success)

Our observation keys map to the nested observation of q2rl.interfaces like this:
    obs/state           <-> obs["state"]                  f32[D]
    obs/<camera>_image  <-> obs["images"][<camera>]       u8[H, W, 3]   (wrist_image, front_image)

Real robomimic files have no `state` key; `read_demos(..., state_keys=[...])` concatenates the named low-dim
keys (e.g. robot0_eef_pos, robot0_eef_quat, robot0_gripper_qpos, object) in that order into `state`, and
`image_keys={"front": "agentview_image"}` picks cameras.
A truncated or malformed file raises `DemoFileError` naming the file and the first bad demo.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import h5py
import numpy as np

FORMAT_VERSION = 1
STATE_KEY = "state"
IMAGE_SUFFIX = "_image"
ROBOMIMIC_LOW_DIM_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object")


class DemoFileError(ValueError):
    """A demonstration file is missing, truncated or malformed; the message names the file and the demo."""


def image_key(camera: str) -> str:
    """HDF5 obs key of a camera: 'wrist' -> 'wrist_image'."""
    return f"{camera}{IMAGE_SUFFIX}"


@dataclasses.dataclass(frozen=True)
class Demo:
    """One demonstration, time-major. `images` maps camera name -> u8[T, H, W, 3]."""

    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    images: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    next_states: np.ndarray | None = None
    next_images: Mapping[str, np.ndarray] | None = None
    success: bool = False
    seed: int = -1

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def observations(self) -> dict[str, Any]:
        """The whole episode as one batched nested observation {"state": [T, D], "images": {...}}."""
        obs: dict[str, Any] = {"state": self.states}
        if self.images:
            obs["images"] = dict(self.images)
        return obs

    def check(self) -> None:
        """Raise ValueError when shapes disagree or values are not finite."""
        t = len(self.actions)
        if self.actions.ndim != 2:
            raise ValueError(f"actions must be [T, A], got shape {self.actions.shape}")
        if self.states.ndim != 2 or len(self.states) != t:
            raise ValueError(f"obs/state must be [T={t}, D], got shape {self.states.shape}")
        for name, arr in (("rewards", self.rewards), ("dones", self.dones)):
            if arr.shape != (t,):
                raise ValueError(f"{name} must be [T={t}], got shape {arr.shape}")
        for cam, img in self.images.items():
            if img.ndim != 4 or len(img) != t or img.shape[-1] != 3:
                raise ValueError(f"obs/{image_key(cam)} must be [T={t}, H, W, 3], got shape {img.shape}")
        if self.next_states is not None and self.next_states.shape != self.states.shape:
            raise ValueError(f"next_obs/state shape {self.next_states.shape} != obs/state {self.states.shape}")
        if not np.all(np.isfinite(self.actions)):
            raise ValueError("actions contain NaN or inf")
        if not np.all(np.isfinite(self.states)):
            raise ValueError("obs/state contains NaN or inf")


@dataclasses.dataclass(frozen=True)
class DemoDataset:
    """All demonstrations of a file, in demo order, and the environment metadata they were recorded with."""

    episodes: tuple[Demo, ...]
    env_args: dict
    path: str
    demo_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def num_samples(self) -> int:
        return sum(len(e) for e in self.episodes)

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(self.episodes[0].images) if self.episodes else ()

    @property
    def state_dim(self) -> int:
        return int(self.episodes[0].states.shape[-1])

    @property
    def action_dim(self) -> int:
        return int(self.episodes[0].actions.shape[-1])

    @property
    def success_rate(self) -> float:
        return float(np.mean([e.success for e in self.episodes])) if self.episodes else 0.0


# ----------------------------------------------------------------------------------------------------------
# Writing


class DemoWriter:
    """Streams episodes into a new HDF5 file, flushing after each, so an interrupted run keeps what it wrote.

        with DemoWriter("demos.hdf5", env_args={"env_name": "pick_cube", ...}) as writer:
            writer.add(episode)
    """

    def __init__(self, path: str | Path, env_args: Mapping[str, Any], overwrite: bool = False,
                 write_next_obs: bool = True, image_compression: str | None = None):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists; choose another --out or pass --force to overwrite it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write_next_obs = write_next_obs
        self._image_compression = image_compression
        self._file = h5py.File(self.path, "w")
        self._data = self._file.create_group("data")
        self._data.attrs["env_args"] = json.dumps(dict(env_args))
        self._data.attrs["q2rl_format_version"] = FORMAT_VERSION
        self._count = 0
        self._total = 0
        self._update_totals()

    def _update_totals(self) -> None:
        self._data.attrs["total"] = self._total
        self._data.attrs["num_samples"] = self._total
        self._data.attrs["num_demos"] = self._count

    def _write_obs(self, group: h5py.Group, states: np.ndarray, images: Mapping[str, np.ndarray]) -> None:
        group.create_dataset(STATE_KEY, data=np.asarray(states, np.float32))
        for cam, img in images.items():
            group.create_dataset(image_key(cam), data=np.asarray(img, np.uint8),
                                 compression=self._image_compression,
                                 chunks=(1, *img.shape[1:]) if self._image_compression else None)

    def add(self, episode: Demo, attrs: Mapping[str, Any] | None = None) -> str:
        """Append one episode as data/demo_N; returns its name. `attrs`: more of the demo's attributes (where it
        came from, e.g. the run, actor and episode of an exported robot episode); readers ignore them."""
        episode.check()
        name = f"demo_{self._count}"
        group = self._data.create_group(name)
        self._write_obs(group.create_group("obs"), episode.states, episode.images)
        if self._write_next_obs and episode.next_states is not None:
            self._write_obs(group.create_group("next_obs"), episode.next_states, episode.next_images or {})
        group.create_dataset("actions", data=np.asarray(episode.actions, np.float32))
        group.create_dataset("rewards", data=np.asarray(episode.rewards, np.float32))
        group.create_dataset("dones", data=np.asarray(episode.dones, np.uint8))
        group.attrs["num_samples"] = len(episode)
        group.attrs["success"] = bool(episode.success)
        group.attrs["seed"] = int(episode.seed)
        for key, value in (attrs or {}).items():
            group.attrs[key] = value
        self._count += 1
        self._total += len(episode)
        self._update_totals()
        self._file.flush()
        return name

    @property
    def num_demos(self) -> int:
        return self._count

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    def __enter__(self) -> "DemoWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def write_demos(path: str | Path, episodes: Sequence[Demo], env_args: Mapping[str, Any],
                overwrite: bool = False) -> Path:
    """Write a whole list of episodes (see DemoWriter for streaming)."""
    with DemoWriter(path, env_args, overwrite=overwrite) as writer:
        for episode in episodes:
            writer.add(episode)
    return Path(path)


# ----------------------------------------------------------------------------------------------------------
# Reading


def _demo_sort_key(name: str) -> tuple[int, str]:
    match = re.fullmatch(r"demo_(\d+)", name)
    return (int(match.group(1)) if match else 1 << 62, name)


def _resolve_image_keys(cameras: Sequence[str], image_keys: Mapping[str, str] | None) -> dict[str, str]:
    mapping = {cam: image_key(cam) for cam in cameras}
    mapping.update(image_keys or {})
    return mapping


def _read_episode(group: h5py.Group, state_keys: Sequence[str] | None, image_map: Mapping[str, str],
                  load_next_obs: bool) -> Demo:
    if "obs" not in group:
        raise ValueError("has no 'obs' group")
    obs = group["obs"]
    for required in ("actions",):
        if required not in group:
            raise ValueError(f"has no '{required}' dataset")

    def state_of(obs_group: h5py.Group) -> np.ndarray:
        keys = state_keys if state_keys is not None else (STATE_KEY,)
        missing = [k for k in keys if k not in obs_group]
        if missing:
            hint = "" if state_keys is not None else (
                "; for a robomimic file pass state_keys=[...], e.g. " + ", ".join(ROBOMIMIC_LOW_DIM_KEYS))
            raise ValueError(f"obs has no key(s) {missing} (it has {sorted(obs_group)}){hint}")
        parts = [np.asarray(obs_group[k][()], np.float32) for k in keys]
        parts = [p.reshape(len(p), -1) for p in parts]
        return np.concatenate(parts, axis=-1)

    def images_of(obs_group: h5py.Group) -> dict[str, np.ndarray]:
        missing = [key for key in image_map.values() if key not in obs_group]
        if missing:
            raise ValueError(f"obs has no image key(s) {missing} (it has {sorted(obs_group)})")
        return {cam: np.asarray(obs_group[key][()], np.uint8) for cam, key in image_map.items()}

    actions = np.asarray(group["actions"][()], np.float32)
    t = len(actions)
    rewards = np.asarray(group["rewards"][()], np.float32) if "rewards" in group else np.zeros(t, np.float32)
    dones = np.asarray(group["dones"][()], bool) if "dones" in group else np.zeros(t, bool)
    next_states = next_images = None
    if load_next_obs and "next_obs" in group:
        next_states = state_of(group["next_obs"])
        next_images = images_of(group["next_obs"]) if image_map else {}
    success = bool(group.attrs.get("success", bool(dones[-1]) if t else False))
    episode = Demo(
        states=state_of(obs), actions=actions, rewards=rewards, dones=dones, images=images_of(obs),
        next_states=next_states, next_images=next_images, success=success,
        seed=int(group.attrs.get("seed", -1)),
    )
    episode.check()
    declared = group.attrs.get("num_samples")
    if declared is not None and int(declared) != t:
        raise ValueError(f"attrs num_samples={int(declared)} but actions has {t} rows")
    return episode


class _ZeroPaddedFile(io.RawIOBase):
    """A read-only view of a truncated file that pretends to be `size` bytes long (zeros past the real end).

    HDF5 refuses to open a file shorter than its superblock says; this lets us open it anyway to find out
    which demos are intact and which one the truncation cut.
    """

    def __init__(self, path: Path, size: int):
        self._f = path.open("rb")
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self._size - self._pos))
        self._f.seek(self._pos)
        got = self._f.readinto(view[:n]) or 0
        view[got:n] = b"\0" * (n - got)
        self._pos += n
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


def _datasets(group: h5py.Group) -> Iterator[h5py.Dataset]:
    for item in group.values():
        if isinstance(item, h5py.Dataset):
            yield item
        elif isinstance(item, h5py.Group):
            yield from _datasets(item)


def _dataset_end(ds: h5py.Dataset) -> int:
    """One past the last byte of a dataset's raw data in the file (0 when it has none stored)."""
    if ds.chunks is None:
        offset = ds.id.get_offset()
        return 0 if offset is None else offset + ds.id.get_storage_size()
    end = 0
    for i in range(ds.id.get_num_chunks()):
        info = ds.id.get_chunk_info(i)
        end = max(end, info.byte_offset + info.size)
    return end


def _diagnose_truncation(path: Path, message: str) -> DemoFileError:
    """Open a truncated file through zero padding and name the first demo the truncation cut."""
    actual = path.stat().st_size
    match = re.search(r"stored_eof = (\d+)", message)
    if not match:
        return DemoFileError(f"{path}: truncated or damaged HDF5 file ({message}); record it again")
    stored = int(match.group(1))
    head = f"{path}: truncated file ({actual} of {stored} bytes, the write was interrupted)"
    try:
        with _ZeroPaddedFile(path, stored) as raw, h5py.File(raw, "r") as f:
            names = sorted(f["data"].keys(), key=_demo_sort_key)
            for i, name in enumerate(names):
                try:
                    group = f["data"][name]
                    cut = [ds.name for ds in _datasets(group) if _dataset_end(ds) > actual]
                    if cut:
                        return DemoFileError(f"{head}: {name} is incomplete ({cut[0]} lies past the end); "
                                             f"{i} demo(s) before it are intact")
                except Exception as e:  # metadata in the lost tail: h5py raises assorted errors
                    return DemoFileError(f"{head}: {name} is unreadable ({e}); {i} demo(s) before it are intact")
    except Exception as e:
        return DemoFileError(f"{head}; its index is lost too ({e}); record it again")
    return DemoFileError(f"{head}; all {len(names)} demos look intact but the file index is damaged")


def _open_demo_file(path: Path) -> h5py.File:
    if not path.exists():
        raise DemoFileError(f"{path}: demonstration file does not exist")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        message = str(e)
        if "truncated file" in message:
            raise _diagnose_truncation(path, message) from None
        raise DemoFileError(f"{path}: not a readable HDF5 file ({message})") from None


def read_demos(path: str | Path, cameras: Sequence[str] = (), state_keys: Sequence[str] | None = None,
               image_keys: Mapping[str, str] | None = None, load_next_obs: bool = False,
               max_demos: int | None = None) -> DemoDataset:
    """Read demos in order (demo_0, demo_1, ...) into a DemoDataset.

    `cameras` selects image observations (key `<camera>_image`, or `image_keys[camera]`); `state_keys`
    builds `state` from other low-dim keys (real robomimic files). Raises DemoFileError on bad input.
    """
    path = Path(path)
    image_map = _resolve_image_keys(cameras, image_keys)
    with _open_demo_file(path) as f:
        if "data" not in f or not isinstance(f["data"], h5py.Group):
            raise DemoFileError(f"{path}: has no 'data' group; not a robomimic-layout demonstration file")
        data = f["data"]
        try:
            env_args = json.loads(data.attrs.get("env_args", "{}"))
        except (TypeError, json.JSONDecodeError) as e:
            raise DemoFileError(f"{path}: data.attrs['env_args'] is not valid JSON ({e})") from None
        names = sorted((n for n in data.keys() if n.startswith("demo")), key=_demo_sort_key)
        if max_demos is not None:
            names = names[:max_demos]
        if not names:
            raise DemoFileError(f"{path}: contains no demos (no data/demo_N groups)")
        episodes = []
        for name in names:
            try:
                episode = _read_episode(data[name], state_keys, image_map, load_next_obs)
            except (ValueError, KeyError, OSError, TypeError) as e:
                raise DemoFileError(f"{path}: {name}: {e}") from None
            if episodes and (episode.states.shape[1:] != episodes[0].states.shape[1:]
                             or episode.actions.shape[1:] != episodes[0].actions.shape[1:]):
                raise DemoFileError(
                    f"{path}: {name}: state/action shapes {episode.states.shape[1:]}/{episode.actions.shape[1:]}"
                    f" differ from {names[0]}'s {episodes[0].states.shape[1:]}/{episodes[0].actions.shape[1:]}")
            episodes.append(episode)
    return DemoDataset(episodes=tuple(episodes), env_args=env_args, path=os.fspath(path), demo_names=tuple(names))
