"""The learner's durable copy of every transition it acknowledged: append-only episode files on disk.

    store = EpisodeStore(run_dir)                 # loads what is there; a torn tail record is cut with a warning
    store.stored_seq("sim-0")                     # highest contiguous seq on disk (-1: nothing) -> the ack
    store.append("sim-0", [(raw_item_bytes, parsed_item), ...])   # write, flush, fsync: then acknowledge
    for ep in store.episodes(contract): ...                      # rebuild replay on --resume (checked records)
    reader = EpisodeStore(run_dir, read_only=True)  # report, export: reads a live or crashed run, changes nothing

Layout: run_dir/episodes/<actor_id>/seg-<n:09d>.rec, an append-only log per actor (q2rl.recordio.SegmentLog, a
new segment about every `segment_bytes`) whose records are the wire `Item` bytes exactly as received: transitions
(images once per frame) and EpisodeReports, in the actor's order. One log per actor means one fsync per received batch.
An episode is complete when its report is stored or its last transition terminated/truncated.
A read-only store (`read_only=True`) is for readers beside a running learner (`q2rl report`, `q2rl episodes
export`): it creates, cuts and writes nothing, and reads a record only once it is whole (a last record still being
written reads as a torn tail: skipped with a warning).
The service checks every item before it is stored (q2rl.contract); reading back checks them again, so a record
an older learner stored unchecked, or one a damaged file lost, is left out with a warning instead of a crash.
"""

from __future__ import annotations

import copy
import logging
import re
import threading
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np

from q2rl import recordio, wire
from q2rl.contract import LastStep, TransitionContract, check_report, check_transition
from q2rl.interfaces import EpisodeReport, Transition

log = logging.getLogger(__name__)
ACTOR_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RECORD_HEADER_BYTES = len(recordio.encode_record(b""))  # a record's bytes on disk besides its payload


def check_actor_id(actor_id: str) -> None:
    """Raise ValueError unless the actor id is safe as a directory name."""
    if not ACTOR_ID_PATTERN.match(actor_id):
        raise ValueError(f"actor id {actor_id!r}: use 1-64 characters of letters, digits, '_', '.', '-'")


class EpisodeSummary:
    """Running totals of one episode's stored transitions (to report an episode its actor never reported), and its
    newest step (which the actor's next transition must continue)."""

    def __init__(self, episode_id: int) -> None:
        self.episode_id, self.length, self.ret, self.bc_steps = episode_id, 0, 0.0, 0
        self.terminated = self.truncated = self.reported = False
        self.last_seq = -1
        self.last: LastStep | None = None

    def add(self, t: "wire.pb.Transition") -> None:
        self.length += 1
        self.ret += t.reward
        self.bc_steps += t.source == wire.pb.ACTION_SOURCE_BC
        self.terminated, self.truncated, self.last_seq = t.terminated, t.truncated, t.seq
        self.last = LastStep.of(t)

    def cut_report(self, actor_id: str) -> EpisodeReport:
        ended = self.terminated or self.truncated
        return EpisodeReport(
            actor_id=actor_id, episode_id=self.episode_id, length=self.length, success=self.terminated,
            undiscounted_return=self.ret, bc_share=self.bc_steps / max(1, self.length), eval=False,
            cut=not ended, fault="" if ended else "the actor sent no report for this episode (it crashed or restarted)",
        )


def _build_episode(actor_id: str, episode_id: int, decoded: list, report: EpisodeReport | None) -> "StoredEpisode":
    linker = wire.FrameLinker()
    transitions: list[Transition] = []
    for t, pending in decoded:
        transitions += linker.push(t, pending)
    unlinked = 1 if linker.held is not None else 0
    last_terminal = bool(transitions) and (transitions[-1].terminated or transitions[-1].truncated)
    return StoredEpisode(actor_id, episode_id, report is not None or last_terminal, report, transitions, unlinked)


class StoredEpisode(NamedTuple):
    """An episode read back from disk. `transitions` are linked (next_obs images filled in); a transition
    whose next frame never arrived (episode cut mid-step) is left out of it and counted in `unlinked`."""

    actor_id: str
    episode_id: int
    complete: bool
    report: EpisodeReport | None
    transitions: list[Transition]
    unlinked: int


class _ActorLog:
    """One actor's log and its bookkeeping: watermarks, its newest episode."""

    def __init__(self, log: recordio.SegmentLog) -> None:
        self.log = log
        self.stored_seq = -1
        self.reported_episode = -1
        self.num_transitions = 0
        self.episode: EpisodeSummary | None = None  # the newest episode
        self.tail: bytes | None = None  # the newest transition's item if it waits for its successor's frame

    def note(self, item: "wire.pb.Item", raw: bytes) -> None:
        if item.HasField("transition"):
            t = item.transition
            self.stored_seq = max(self.stored_seq, t.seq)
            self.num_transitions += 1
            if self.episode is None or self.episode.episode_id != t.episode_id:
                self.episode = EpisodeSummary(t.episode_id)
            self.episode.add(t)
            self.tail = raw if t.next_images_in_next_transition else None
        else:
            self.reported_episode = max(self.reported_episode, item.report.episode_id)
            if self.episode is not None and self.episode.episode_id == item.report.episode_id:
                self.episode.reported = True
            self.tail = None


class EpisodeStore:
    """Append-only, crash-safe episode logs under run_dir/episodes (one per actor); thread-safe.

    `read_only`: only `actors()` and `episodes()` (and `transitions()`); the segment files are listed but not scanned,
    so opening costs nothing and the records are read once, when iterated. The watermarks (stored_seq, ...) are the
    learner's: asking a read-only store for them is an error."""

    def __init__(self, run_dir: str | Path, fsync: bool = True, segment_bytes: int = 256 << 20,
                 read_only: bool = False) -> None:
        self.root = Path(run_dir) / "episodes"
        self.read_only = read_only
        if not read_only:
            self.root.mkdir(parents=True, exist_ok=True)
        self._fsync, self._segment_bytes = fsync, segment_bytes
        self._lock = threading.Lock()
        self._actors: dict[str, _ActorLog] = {}
        directories = sorted(p for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []
        for directory in directories:
            if read_only:  # never _scan: it cuts torn tails, which on a live run are records being written
                self._actors[directory.name] = _ActorLog(recordio.SegmentLog(directory, self._segment_bytes))
                continue
            try:
                self._actors[directory.name] = self._scan(directory)
            except recordio.RecordFileError as e:  # a damaged header: nothing in that file can be trusted
                raise recordio.RecordFileError(
                    f"{e}; move it aside (rename it to end in .damaged: only seg-*.rec files are read) and resume "
                    "again: the episodes in it are then missing from replay, everything else is kept") from None

    # ------------------------------------------------------------------ loading

    def _scan(self, directory: Path) -> _ActorLog:
        state = _ActorLog(recordio.SegmentLog(directory, self._segment_bytes))
        seqs = []
        for _, records in state.log.scan(cut_torn=True):  # so that appends continue after the last intact record
            for raw in records:
                try:
                    item = wire.parse_item(raw)
                except wire.WireError as e:
                    log.warning("%s: left out a stored record: %s", directory, e)
                    continue
                state.note(item, raw)
                if item.HasField("transition"):
                    seqs.append(item.transition.seq)
        gaps = int(np.count_nonzero(np.diff(seqs) != 1)) if len(seqs) > 1 else 0
        if gaps:
            log.warning("%s: stored seqs are not contiguous (%d gaps)", directory, gaps)
        return state

    # ------------------------------------------------------------------ queries

    def actors(self) -> list[str]:
        with self._lock:
            return sorted(self._actors)

    def _writer_only(self, what: str) -> None:
        if self.read_only:
            raise RuntimeError(f"EpisodeStore.{what}: a read-only store reads episodes(); it keeps no watermarks and "
                               "writes nothing")

    def segment_paths(self, actor_id: str | None = None) -> list[Path]:
        """The segment files of one actor (or all), in reading order: what `episodes()` reads (progress bars)."""
        with self._lock:
            logs = [self._actors[a] for a in ([actor_id] if actor_id is not None else sorted(self._actors))
                    if a in self._actors]
            return [segment.path for a in logs for segment in a.log.segments]

    def stored_seq(self, actor_id: str) -> int:
        """Highest transition seq stored for this actor (-1 if none)."""
        self._writer_only("stored_seq")
        with self._lock:
            a = self._actors.get(actor_id)
            return -1 if a is None else a.stored_seq

    def reported_episode(self, actor_id: str) -> int:
        """Highest episode id whose EpisodeReport is stored (-1 if none)."""
        self._writer_only("reported_episode")
        with self._lock:
            a = self._actors.get(actor_id)
            return -1 if a is None else a.reported_episode

    @property
    def num_transitions(self) -> int:
        self._writer_only("num_transitions")
        with self._lock:
            return sum(a.num_transitions for a in self._actors.values())

    def last_episode_summary(self, actor_id: str) -> "EpisodeSummary | None":
        """Length, return and ending of an actor's newest stored episode."""
        self._writer_only("last_episode_summary")
        with self._lock:
            a = self._actors.get(actor_id)
            return None if a is None or a.episode is None else copy.copy(a.episode)

    def unlinked_tail(self, actor_id: str, contract: TransitionContract | None = None) -> Transition | None:
        """The newest stored transition of an actor if it still waits for its successor's frame (and passes the
        checks of q2rl.contract: one stored unchecked never reaches replay)."""
        self._writer_only("unlinked_tail")
        with self._lock:
            a = self._actors.get(actor_id)
            raw = None if a is None else a.tail
        if raw is None:
            return None
        try:
            return check_transition(wire.parse_item(raw).transition, contract, actor_id)[0]
        except wire.WireError as e:
            log.warning("actor %s: the newest stored transition is left out: %s", actor_id, e)
            return None

    # ------------------------------------------------------------------ writing

    def append(self, actor_id: str, items: Sequence[tuple[bytes, "wire.pb.Item"]]) -> None:
        """Durably append (raw bytes, parsed Item) records of one actor, in order; returns after one fsync.

        The caller (the service) has already dropped duplicates and checked contiguity."""
        self._writer_only("append")
        if not items:
            return
        with self._lock:
            a = self._actors.get(actor_id)
            if a is None:
                check_actor_id(actor_id)
                a = self._actors[actor_id] = _ActorLog(recordio.SegmentLog(self.root / actor_id, self._segment_bytes))
                if self._fsync:
                    recordio.fsync_dir(self.root)
            a.log.write(b"".join(recordio.encode_record(raw) for raw, _ in items))
            for raw, item in items:
                a.note(item, raw)
            if self._fsync:
                a.log.sync()

    def close(self) -> None:
        with self._lock:
            for a in self._actors.values():
                a.log.close(durable=self._fsync)

    # ------------------------------------------------------------------ reading back

    def _records(self, actor_id: str, on_bytes: Callable[[int], None] | None = None) -> Iterator[bytes]:
        with self._lock:
            a = self._actors.get(actor_id)
            if a is None:
                return
            segments = list(a.log.segments)
        for segment in segments:
            result = recordio.read_records(segment.path)
            if result.torn_bytes and self.read_only:  # the learner's own store cut it at open
                log.warning("%s: skipped a truncated last record (%d bytes after %d whole ones): a write in progress, "
                            "or a crash mid-write", segment.path, result.torn_bytes, len(result.records))
            for raw in result.records:
                if on_bytes is not None:
                    on_bytes(len(raw) + RECORD_HEADER_BYTES)
                yield raw

    def episodes(self, actor_id: str | None = None, contract: TransitionContract | None = None,
                 on_skip: Callable[[str, int | None, str], None] | None = None,
                 on_bytes: Callable[[int], None] | None = None) -> Iterator[StoredEpisode]:
        """Every stored episode (complete and in progress), per actor in the order they were recorded.

        Each record is checked as the service checks what it receives (q2rl.contract; against the run's `contract`
        if given). One that fails, stored by a learner that did not check, is left out and passed to
        `on_skip(actor_id, its seq (None: not a transition), reason)`, by default a warning. `on_bytes(n)` is told
        the file bytes of each record read (a progress bar over `segment_paths()`' sizes)."""
        def skip(aid: str, seq: int | None, reason: str) -> None:
            log.warning("actor %s: left out a stored record: %s", aid, reason)

        for aid in [actor_id] if actor_id is not None else self.actors():
            current: list = []  # (episode id, [(transition, pending) ...], report)
            for raw in self._records(aid, on_bytes):
                seq = None
                try:
                    item = wire.parse_item(raw)
                    if item.HasField("transition"):
                        seq, episode_id = item.transition.seq, item.transition.episode_id
                        record = check_transition(item.transition, contract, aid)
                    else:
                        episode_id, record = item.report.episode_id, check_report(item.report, aid)
                except wire.WireError as e:
                    (on_skip or skip)(aid, seq, str(e))
                    continue
                if current and current[0] != episode_id:
                    yield _build_episode(aid, *current)
                    current = []
                if not current:
                    current = [episode_id, [], None]
                if isinstance(record, EpisodeReport):
                    current[2] = record
                else:
                    current[1].append(record)
            if current:
                yield _build_episode(aid, *current)

    def transitions(self) -> Iterator[Transition]:
        """Every stored, linked transition, per actor in seq order (to refill a replay on --resume)."""
        for ep in self.episodes():
            yield from ep.transitions
