"""The learner's durable copy of every transition it acknowledged: append-only episode files on disk.

    store = EpisodeStore(run_dir)                 # loads what is there; a torn tail record is cut with a warning
    store.stored_seq("sim-0")                     # highest contiguous seq on disk (-1: nothing) -> the ack
    store.append("sim-0", [(raw_item_bytes, parsed_item), ...])   # write, flush, fsync: then acknowledge
    for ep in store.episodes(): replay.add_episode(ep.arrays())    # rebuild replay on --resume

Layout: run_dir/episodes/<actor_id>/ep-<episode_id:09d>.rec, each a q2rl.recordio file whose records are
the wire `Item` bytes exactly as received (transitions with images once per frame, then the EpisodeReport).
An episode is complete when its report is stored or its last transition terminated/truncated.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from q2rl import recordio, wire
from q2rl.interfaces import EpisodeReport, Transition

log = logging.getLogger(__name__)
ACTOR_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_EPISODE_FILE = re.compile(r"^ep-(\d{9,})\.rec$")


def check_actor_id(actor_id: str) -> None:
    """Raise ValueError unless the actor id is safe as a directory name."""
    if not ACTOR_ID_PATTERN.match(actor_id):
        raise ValueError(f"actor id {actor_id!r}: use 1-64 characters of letters, digits, '_', '.', '-'")


class EpisodeArrays(NamedTuple):
    """One episode's transitions as stacked numpy arrays (leading axis = step)."""

    actor_id: str
    episode_id: int
    seq: np.ndarray  # int64[T]
    step: np.ndarray  # int64[T]
    obs_state: np.ndarray  # float32[T, D]
    obs_images: dict  # name -> uint8[T, H, W, 3]
    action: np.ndarray  # float32[T, A]
    reward: np.ndarray  # float64[T]
    terminated: np.ndarray  # bool[T]
    truncated: np.ndarray  # bool[T]
    next_obs_state: np.ndarray
    next_obs_images: dict
    a_bc: np.ndarray
    a_rl: np.ndarray
    q_bc: np.ndarray
    q_rl: np.ndarray
    source: np.ndarray  # str[T]: bc | rl | human
    param_version: np.ndarray


def stack_transitions(transitions: Sequence[Transition]) -> EpisodeArrays:
    """Stack a non-empty list of linked transitions of one episode."""
    t0 = transitions[0]

    def images(key: str) -> dict:
        names = t0.obs.get("images", {}).keys() if key == "obs" else t0.next_obs.get("images", {}).keys()
        return {n: np.stack([getattr(t, key)["images"][n] for t in transitions]) for n in names}

    return EpisodeArrays(
        actor_id=t0.actor_id,
        episode_id=t0.episode_id,
        seq=np.array([t.seq for t in transitions], np.int64),
        step=np.array([t.step for t in transitions], np.int64),
        obs_state=np.stack([t.obs["state"] for t in transitions]),
        obs_images=images("obs"),
        action=np.stack([t.action for t in transitions]),
        reward=np.array([t.reward for t in transitions], np.float64),
        terminated=np.array([t.terminated for t in transitions], bool),
        truncated=np.array([t.truncated for t in transitions], bool),
        next_obs_state=np.stack([t.next_obs["state"] for t in transitions]),
        next_obs_images=images("next_obs"),
        a_bc=np.stack([t.a_bc for t in transitions]),
        a_rl=np.stack([t.a_rl for t in transitions]),
        q_bc=np.array([t.q_bc for t in transitions], np.float64),
        q_rl=np.array([t.q_rl for t in transitions], np.float64),
        source=np.array([t.source for t in transitions]),
        param_version=np.array([t.param_version for t in transitions], np.int64),
    )


class EpisodeSummary:
    """Running totals of one episode's stored transitions (to report an episode its actor never reported)."""

    def __init__(self, episode_id: int) -> None:
        self.episode_id, self.length, self.ret, self.bc_steps = episode_id, 0, 0.0, 0
        self.terminated = self.truncated = self.reported = False
        self.last_seq = -1

    def add(self, t: "wire.pb.Transition") -> None:
        self.length += 1
        self.ret += t.reward
        self.bc_steps += t.source == wire.pb.ACTION_SOURCE_BC
        self.terminated, self.truncated, self.last_seq = t.terminated, t.truncated, t.seq

    def cut_report(self, actor_id: str) -> EpisodeReport:
        ended = self.terminated or self.truncated
        return EpisodeReport(
            actor_id=actor_id, episode_id=self.episode_id, length=self.length, success=self.terminated,
            undiscounted_return=self.ret, bc_share=self.bc_steps / max(1, self.length), eval=False,
            cut=not ended, fault="" if ended else "the actor sent no report for this episode (it crashed or restarted)",
        )


class StoredEpisode(NamedTuple):
    """An episode read back from disk. `transitions` are linked (next_obs images filled in); a transition
    whose next frame never arrived (episode cut mid-step) is left out of it and counted in `unlinked`."""

    actor_id: str
    episode_id: int
    complete: bool
    report: EpisodeReport | None
    transitions: list[Transition]
    unlinked: int

    def arrays(self) -> EpisodeArrays | None:
        return stack_transitions(self.transitions) if self.transitions else None


class _ActorFiles:
    """Bookkeeping of one actor's directory: watermarks and the episode file open for appending."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.stored_seq = -1
        self.reported_episode = -1
        self.num_transitions = 0
        self.open_episode: int | None = None
        self.open_file = None


class EpisodeStore:
    """Append-only, crash-safe episode files under run_dir/episodes; thread-safe."""

    def __init__(self, run_dir: str | Path, fsync: bool = True) -> None:
        self.root = Path(run_dir) / "episodes"
        self.root.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._lock = threading.Lock()
        self._actors: dict[str, _ActorFiles] = {}
        for directory in sorted(p for p in self.root.iterdir() if p.is_dir()):
            self._actors[directory.name] = self._scan(directory)

    # ------------------------------------------------------------------ loading

    def _episode_files(self, directory: Path) -> list[tuple[int, Path]]:
        found = []
        for p in directory.iterdir():
            m = _EPISODE_FILE.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    def _read_episode_file(self, path: Path) -> list[bytes]:
        """Intact records of one file; a torn tail is cut off (with a warning) so appends continue cleanly."""
        result = recordio.read_records(path)
        if result.torn_bytes:
            log.warning(
                "%s: ignoring a torn tail of %d bytes after %d intact records (crash mid-write); cutting it off",
                path, result.torn_bytes, len(result.records),
            )
            with open(path, "r+b") as f:
                f.truncate(result.good_end)
                if result.good_end == 0:
                    f.write(recordio.MAGIC)
                os.fsync(f.fileno())
        return result.records

    def _scan(self, directory: Path) -> _ActorFiles:
        state = _ActorFiles(directory)
        seqs = []
        for _, path in self._episode_files(directory):
            for raw in self._read_episode_file(path):
                item = wire.parse_item(raw)
                if item.HasField("transition"):
                    seqs.append(item.transition.seq)
                else:
                    state.reported_episode = max(state.reported_episode, item.report.episode_id)
        if seqs:
            seqs.sort()
            gaps = int(np.count_nonzero(np.diff(seqs) != 1))
            if gaps:
                log.warning("%s: stored seqs are not contiguous (%d gaps)", directory, gaps)
            state.stored_seq = seqs[-1]
            state.num_transitions = len(seqs)
        return state

    # ------------------------------------------------------------------ queries

    def actors(self) -> list[str]:
        with self._lock:
            return sorted(self._actors)

    def stored_seq(self, actor_id: str) -> int:
        """Highest transition seq stored for this actor (-1 if none)."""
        with self._lock:
            a = self._actors.get(actor_id)
            return -1 if a is None else a.stored_seq

    def reported_episode(self, actor_id: str) -> int:
        """Highest episode id whose EpisodeReport is stored (-1 if none)."""
        with self._lock:
            a = self._actors.get(actor_id)
            return -1 if a is None else a.reported_episode

    @property
    def num_transitions(self) -> int:
        with self._lock:
            return sum(a.num_transitions for a in self._actors.values())

    # ------------------------------------------------------------------ writing

    def append(self, actor_id: str, items: Sequence[tuple[bytes, "wire.pb.Item"]]) -> None:
        """Durably append (raw bytes, parsed Item) records of one actor, in order; returns after fsync.

        The caller (the service) has already dropped duplicates and checked contiguity."""
        if not items:
            return
        with self._lock:
            a = self._actors.get(actor_id)
            if a is None:
                check_actor_id(actor_id)
                directory = self.root / actor_id
                directory.mkdir(exist_ok=True)
                recordio.fsync_dir(self.root)
                a = self._actors[actor_id] = _ActorFiles(directory)
            for raw, item in items:
                if item.HasField("transition"):
                    episode = item.transition.episode_id
                else:
                    episode = item.report.episode_id
                f = self._file_for(a, episode)
                recordio.write_record(f, raw)  # switching episode files fsyncs the one left behind
                if item.HasField("transition"):
                    a.stored_seq = max(a.stored_seq, item.transition.seq)
                    a.num_transitions += 1
                else:
                    a.reported_episode = max(a.reported_episode, item.report.episode_id)
            a.open_file.flush()
            if self._fsync:
                os.fsync(a.open_file.fileno())

    def _file_for(self, a: _ActorFiles, episode_id: int):
        if a.open_episode == episode_id:
            return a.open_file
        if a.open_file is not None:
            a.open_file.flush()
            if self._fsync:
                os.fsync(a.open_file.fileno())
            a.open_file.close()
        path = a.directory / f"ep-{episode_id:09d}.rec"
        is_new = not path.exists()
        a.open_file = recordio.open_for_append(path)
        a.open_episode = episode_id
        if is_new and self._fsync:
            os.fsync(a.open_file.fileno())
            recordio.fsync_dir(a.directory)
        return a.open_file

    def close(self) -> None:
        with self._lock:
            for a in self._actors.values():
                if a.open_file is not None:
                    a.open_file.flush()
                    if self._fsync:
                        os.fsync(a.open_file.fileno())
                    a.open_file.close()
                    a.open_file, a.open_episode = None, None

    # ------------------------------------------------------------------ reading back

    def episodes(self, actor_id: str | None = None) -> Iterator[StoredEpisode]:
        """Every stored episode (complete and in progress), per actor in episode order."""
        actors = [actor_id] if actor_id is not None else self.actors()
        for aid in actors:
            with self._lock:
                a = self._actors.get(aid)
                if a is None:
                    continue
                if a.open_file is not None:
                    a.open_file.flush()
                files = self._episode_files(a.directory)
            for episode_id, path in files:
                yield self._load_episode(aid, episode_id, path)

    def _load_episode(self, actor_id: str, episode_id: int, path: Path) -> StoredEpisode:
        linker = wire.FrameLinker()
        transitions: list[Transition] = []
        report = None
        for raw in recordio.read_records(path).records:
            item = wire.parse_item(raw)
            if item.HasField("report"):
                report = wire.decode_report(item.report)
                continue
            t, pending = wire.decode_transition(item.transition)
            transitions += linker.push(t, pending)
        unlinked = 1 if linker.held is not None else 0
        last_terminal = bool(transitions) and (transitions[-1].terminated or transitions[-1].truncated)
        return StoredEpisode(actor_id, episode_id, report is not None or last_terminal, report, transitions, unlinked)

    def unlinked_tail(self, actor_id: str) -> Transition | None:
        """The newest stored transition of an actor if it still waits for its successor's frame."""
        with self._lock:
            a = self._actors.get(actor_id)
            if a is None:
                return None
            files = self._episode_files(a.directory)
        if not files:
            return None
        linker = wire.FrameLinker()
        for raw in recordio.read_records(files[-1][1]).records:
            item = wire.parse_item(raw)
            if item.HasField("transition"):
                linker.push(*wire.decode_transition(item.transition))
            else:
                linker.drop_pending()
        return linker.held

    def last_episode_summary(self, actor_id: str) -> "EpisodeSummary | None":
        """Length, return and ending of an actor's newest stored episode (no images decoded)."""
        with self._lock:
            a = self._actors.get(actor_id)
            files = self._episode_files(a.directory) if a is not None else []
        if not files:
            return None
        summary = EpisodeSummary(files[-1][0])
        for raw in recordio.read_records(files[-1][1]).records:
            item = wire.parse_item(raw)
            if item.HasField("transition"):
                summary.add(item.transition)
            else:
                summary.reported = True
        return summary

    def transitions(self) -> Iterator[Transition]:
        """Every stored, linked transition, per actor in seq order (to refill a replay on --resume)."""
        for ep in self.episodes():
            yield from ep.transitions
