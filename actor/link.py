"""The actor's side of the wire: a TransitionSink and ParameterSource over gRPC that never blocks the loop.

    link = ActorLink("127.0.0.1:50051", actor_id="sim-0", run_config_hash=compatibility_hash(cfg, bc_digest),
                     token="", spool_dir=run_dir / "spool" / "sim-0",
                     run_config_document=compatibility_document(cfg, bc_digest))   # names differences if refused
    link.wait_connected(timeout=30)           # optional; raises LinkRefused(reason) on a refused handshake
    seq, episode_id = link.next_seq, link.next_episode_id   # continue numbering where the spool left off
    while running:
        got = link.latest()                   # (version, {"policy": tree, "critic": tree, "value": tree}) | None;
                                              # a new tuple per received set (compare by identity)
        grants = link.grants()                # sim pacing: Grants | None
        ...
        link.add(Transition(..., seq=seq, ...)); seq += 1            # spooled to disk; returns in microseconds
        if done: link.end_episode(EpisodeReport(...)); episode_id += 1
        status_line(link.health())            # connected, last ack age, unacked, reconnects, param version
    link.close(flush_timeout=10)              # waits (bounded) until the learner has acknowledged everything

`add` encodes the transition and appends it to an on-disk spool (segment files of CRC'd records, flushed to
the OS on every add, fsync'd about once a second); a background thread streams the spool to the learner and
deletes segments once acknowledged. After a reconnect (exponential backoff with jitter) everything not yet
acknowledged is sent again; the learner drops duplicates. A refused handshake (protocol version, run config
hash, token) is raised as LinkRefused from `add`, `end_episode` and `wait_connected` -- it is never retried; for a
config hash mismatch it names the fields that differ when the learner sent its config document.
With cameras, a transition is held back one step so its next_obs images can travel once per frame.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import struct
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from q2rl import recordio, wire
from q2rl.config import config_differences
from q2rl.interfaces import EpisodeReport, Grants, Transition
from q2rl.wire import ClientTls, Keepalive, pb

log = logging.getLogger(__name__)

_TRANSITION, _REPORT = 0, 1
_PREFIX = struct.Struct("<Bqq")  # kind, seq (a report: the seq before it), episode id


class LinkRefused(RuntimeError):
    """The learner refused the handshake; the message says why and what to fix."""


class SpoolFull(RuntimeError):
    """The spool reached its size limit because the learner has not acknowledged data for too long."""


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Reconnect delays: initial_s * 2^attempt capped at max_s, scaled by a random factor in [1 - jitter, 1]."""

    initial_s: float = 0.1
    max_s: float = 5.0
    jitter: float = 0.5

    def delay(self, attempt: int, rng: random.Random) -> float:
        return min(self.max_s, self.initial_s * 2.0**attempt) * (1.0 - self.jitter * rng.random())


class LinkHealth(NamedTuple):
    """The link as the status line shows it."""

    connected: bool
    last_ack_age_s: float  # seconds since the last acknowledgement (inf: never)
    unacked: int  # transitions assigned but not yet acknowledged by the learner
    reconnects: int
    param_version: int  # -1 before the first parameter set
    spool_bytes: int
    refused: str  # the learner's refusal reason, "" when none


class _SpoolEntry(NamedTuple):
    kind: int
    seq: int
    episode_id: int
    item: bytes


class Spool:
    """Append-only segment files of not-yet-acknowledged items; survives crashes of the actor process."""

    def __init__(self, directory: str | Path, segment_bytes: int = 8 << 20, max_bytes: int = 16 << 30) -> None:
        self.directory, self.max_bytes = Path(directory), max_bytes
        self._log = recordio.SegmentLog(directory, segment_bytes)
        self._lock = threading.Lock()
        self._maxima: dict[int, tuple[int, int]] = {}  # segment index -> (max seq, max report episode) in it
        self.next_seq, self.next_episode_id, self.min_seq = 0, 0, -1
        for seg, records in self._log.scan():
            for rec in records:
                self._note(seg.index, *_PREFIX.unpack_from(rec))
        self._log.open()  # cuts a torn tail off the newest segment

    def _note(self, index: int, kind: int, seq: int, episode: int) -> None:
        max_seq, max_report = self._maxima.get(index, (-1, -1))
        if kind == _TRANSITION:
            max_seq = max(max_seq, seq)
            self.min_seq = seq if self.min_seq < 0 else min(self.min_seq, seq)
        else:
            max_report = max(max_report, episode)
        self._maxima[index] = (max_seq, max_report)
        self.next_seq = max(self.next_seq, seq + 1)
        self.next_episode_id = max(self.next_episode_id, episode + 1)

    @property
    def acked_floor(self) -> int:
        """Every seq at or below this is gone from the spool (acknowledged earlier)."""
        return (self.min_seq - 1) if self.min_seq >= 0 else self.next_seq - 1

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return self._log.size

    def append(self, kind: int, seq: int, episode_id: int, item: bytes) -> None:
        """Append one item and hand it to the OS (readable by the sender, safe from a process crash)."""
        record = recordio.encode_record(_PREFIX.pack(kind, seq, episode_id) + item)
        with self._lock:
            if self._log.would_roll(len(record)) and self._log.size + len(record) > self.max_bytes:
                raise SpoolFull(
                    f"spool {self.directory} holds {self.max_bytes} bytes the learner has not acknowledged; "
                    "is the learner running and reachable?"
                )
            self._log.write(record)  # fsync'd by the background thread (never in add())
            self._note(self._log.segments[-1].index, kind, seq, episode_id)

    def read(self, cursor: tuple[int, int], acked_seq: int, acked_episode: int, max_bytes: int, max_items: int):
        """Entries after `cursor` not yet acknowledged, up to the limits; returns (entries, new cursor)."""
        with self._lock:
            segments = list(self._log.segments)
        entries: list[_SpoolEntry] = []
        index, offset = cursor
        total = 0
        for seg_index, path, end in segments:
            if seg_index < index:
                continue
            if seg_index > index:
                index, offset = seg_index, len(recordio.MAGIC)
            if offset >= end:
                continue
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(min(end - offset, max(max_bytes, 1 << 16)))
            pos = 0
            while pos + 8 <= len(data) and total < max_bytes and len(entries) < max_items:
                length = int.from_bytes(data[pos : pos + 4], "little")
                if pos + 8 + length > len(data):
                    if pos == 0:  # a single record larger than the read window
                        with open(path, "rb") as f:
                            f.seek(offset)
                            data = f.read(8 + length)
                        continue
                    break
                rec = data[pos + 8 : pos + 8 + length]
                pos += 8 + length
                kind, seq, episode = _PREFIX.unpack_from(rec)
                if (kind == _TRANSITION and seq <= acked_seq) or (kind == _REPORT and episode <= acked_episode):
                    continue
                entries.append(_SpoolEntry(kind, seq, episode, rec[_PREFIX.size :]))
                total += length
            offset += pos
            if total >= max_bytes or len(entries) >= max_items or offset < end:
                break
        return entries, (index, offset)

    def start_cursor(self) -> tuple[int, int]:
        with self._lock:
            return (self._log.segments[0].index, len(recordio.MAGIC))

    def trim(self, acked_seq: int, acked_episode: int) -> None:
        """Delete segments (never the one being written) whose every item is acknowledged."""
        with self._lock:
            done = 0
            for seg in self._log.segments[:-1]:
                max_seq, max_report = self._maxima.get(seg.index, (-1, -1))
                if max_seq > acked_seq or max_report > acked_episode:
                    break
                self._maxima.pop(seg.index, None)
                done += 1
            if done:
                self._log.delete_oldest(done)
                self.min_seq = acked_seq + 1

    def fsync(self) -> None:
        """Make everything appended so far durable (called from the background thread, not from add())."""
        self._log.sync(self._lock)

    def close(self) -> None:
        with self._lock:
            self._log.close()


def _channel(address: str, tls: ClientTls | None, options: list) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(address, options=options)
    if tls.target_name_override:
        options = options + [("grpc.ssl_target_name_override", tls.target_name_override)]
    creds = grpc.ssl_channel_credentials(
        root_certificates=Path(tls.root_ca).read_bytes(),
        private_key=Path(tls.private_key).read_bytes() if tls.private_key else None,
        certificate_chain=Path(tls.cert_chain).read_bytes() if tls.cert_chain else None,
    )
    return grpc.secure_channel(address, creds, options=options)


def fetch_status(address: str, token: str = "", timeout: float = 2.0, tls: ClientTls | None = None) -> "pb.StatusReply":
    """The learner's Status RPC (phase, parameter version, replay size, updates/s, per-actor links).

    Raises grpc.RpcError when the learner does not answer within `timeout` seconds (or rejects the token)."""
    channel = _channel(address, tls, [])
    try:
        call = channel.unary_unary(
            f"/{wire.SERVICE_NAME}/Status",
            request_serializer=pb.StatusRequest.SerializeToString,
            response_deserializer=pb.StatusReply.FromString,
        )
        return call(pb.StatusRequest(), timeout=timeout, metadata=[(wire.TOKEN_METADATA_KEY, token)])
    finally:
        channel.close()


class ActorLink:
    """TransitionSink + ParameterSource over gRPC with an on-disk spool; see the module docstring."""

    def __init__(
        self,
        address: str,
        actor_id: str,
        run_config_hash: str,
        token: str,
        spool_dir: str | Path,
        *,
        tls: ClientTls | None = None,
        keepalive: Keepalive = Keepalive(),
        backoff: Backoff = Backoff(),
        rng: random.Random | None = None,
        max_batch_items: int = 512,
        max_batch_bytes: int = 4 << 20,
        max_inflight_batches: int = 8,
        spool_segment_bytes: int = 8 << 20,
        max_spool_bytes: int = 16 << 30,
        handshake_timeout_s: float = 5.0,
        run_config_document: str = "",
        start: bool = True,
    ) -> None:
        """`run_config_document`: the canonical JSON `run_config_hash` is computed on; with it, a refusal for a config
        hash mismatch names the fields that differ from the learner's."""
        self.address, self.actor_id = address, actor_id
        self._config_hash, self._token, self._tls = run_config_hash, token, tls
        self._config_document = run_config_document
        self._keepalive, self._backoff = keepalive, backoff
        self._rng = rng if rng is not None else random.Random(0)
        self._max_batch_items, self._max_batch_bytes = max_batch_items, max_batch_bytes
        self._max_inflight = max_inflight_batches
        self._handshake_timeout_s = handshake_timeout_s
        self._spool = Spool(spool_dir, spool_segment_bytes, max_spool_bytes)
        # numbering continues where the spool left off (the control loop reads these once at start)
        self._next_seq = self._spool.next_seq
        self._next_episode_id = self._spool.next_episode_id
        self._last_sent_seq = self._next_seq - 1
        self._held: Transition | None = None
        self._last_report_spooled = -1
        self._state = threading.Condition()
        self._acked_seq = self._spool.acked_floor
        self._acked_episode = -1
        self._inflight = 0
        self._connected = False
        self._session: tuple[grpc.Channel, str] | None = None
        self._last_ack_time = 0.0
        self._reconnects = -1
        self._refused = ""
        self._closing = threading.Event()
        self._new_data = threading.Event()
        self._latest: tuple[int, dict[str, Any]] | None = None
        self._latest_incarnation = 0  # the learner incarnation of _latest (0: none); read by the params thread only
        self._grants: Grants | None = None
        self._threads: list[threading.Thread] = []
        if start:
            self.start()

    def start(self) -> None:
        for target, name in ((self._run_sender, "sender"), (self._run_params, "params")):
            t = threading.Thread(target=target, name=f"q2rl-link-{name}-{self.actor_id}", daemon=True)
            t.start()
            self._threads.append(t)

    # ------------------------------------------------------------------ the control loop's side

    @property
    def next_seq(self) -> int:
        """The seq the next transition must carry."""
        return self._next_seq

    @property
    def next_episode_id(self) -> int:
        """The first episode id not used yet by this actor (per spool)."""
        return self._next_episode_id

    def add(self, transition: Transition) -> None:
        """Spool a transition for sending; never waits for the network."""
        self._raise_if_refused()
        t = transition
        if t.seq != self._next_seq:
            raise ValueError(f"transition seq {t.seq}: expected {self._next_seq} (seqs are contiguous per actor)")
        if t.actor_id != self.actor_id:
            raise ValueError(f"transition names actor {t.actor_id!r} but this link is {self.actor_id!r}")
        self._next_seq += 1
        self._next_episode_id = max(self._next_episode_id, t.episode_id + 1)
        held, self._held = self._held, None
        if held is not None:
            follows = held.episode_id == t.episode_id and t.step == held.step + 1
            self._write_transition(held, follows and wire.same_frames(held.next_obs.get("images"), t.obs.get("images")))
        if t.next_obs.get("images") and not (t.terminated or t.truncated):
            self._held = t  # its next frame may travel as the next transition's obs
        else:
            self._write_transition(t, False)

    def send_held(self) -> None:
        """Spool the transition held back for its successor's frame, with its own next frame: the actor is about to
        wait for the learner, whose grant may wait for that transition (a sim with cameras would stall forever)."""
        self._raise_if_refused()
        self._flush_held()

    def end_episode(self, report: EpisodeReport) -> None:
        """Spool the episode's report (after any transition still held back)."""
        self._raise_if_refused()
        self._flush_held()
        self._next_episode_id = max(self._next_episode_id, report.episode_id + 1)
        self._last_report_spooled = max(self._last_report_spooled, report.episode_id)
        item = wire.encode_item_report(report, self._last_sent_seq)
        self._spool.append(_REPORT, self._last_sent_seq, report.episode_id, item)
        self._new_data.set()

    def latest(self) -> tuple[int, dict[str, Any]] | None:
        """(version, {subset: pytree of numpy arrays}) of the newest complete parameter set, or None; a new tuple per
        set received, so a set of a restarted learner that reuses a version number is still a new object."""
        return self._latest

    def grants(self) -> Grants | None:
        """The newest pacing grants the learner sent, or None."""
        return self._grants

    def health(self) -> LinkHealth:
        with self._state:
            return LinkHealth(
                connected=self._connected,
                last_ack_age_s=(time.monotonic() - self._last_ack_time) if self._last_ack_time else float("inf"),
                unacked=max(0, self._next_seq - 1 - self._acked_seq),
                reconnects=max(0, self._reconnects),
                param_version=self._latest[0] if self._latest else -1,
                spool_bytes=self._spool.size_bytes,
                refused=self._refused,
            )

    def wait_connected(self, timeout: float) -> bool:
        """Wait until the handshake succeeded (True) or `timeout` passed (False); raises LinkRefused."""
        deadline = time.monotonic() + timeout
        with self._state:
            while not self._connected and not self._refused:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._state.wait(left)
        self._raise_if_refused()
        return self._connected

    def flush(self, timeout: float) -> bool:
        """Wait until the learner has acknowledged everything added so far; False on timeout."""
        self._flush_held()
        deadline = time.monotonic() + timeout
        with self._state:
            while not self._all_acked() and not self._refused:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._state.wait(min(left, 0.1))
            return self._all_acked()

    def close(self, flush_timeout: float = 5.0) -> bool:
        """Flush (bounded by `flush_timeout`), stop the threads, sync the spool; True if nothing is left unacked."""
        flushed = self.flush(flush_timeout) if self._threads and not self._refused else False
        self._closing.set()
        self._new_data.set()
        with self._state:
            self._state.notify_all()
            session = self._session
        if session is not None:
            session[0].close()
        for t in self._threads:
            t.join(timeout=5.0)
        self._spool.close()
        return flushed

    def _all_acked(self) -> bool:
        return self._acked_seq >= self._last_sent_seq and self._acked_episode >= self._last_report_spooled

    def _flush_held(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            self._write_transition(held, False)

    def _write_transition(self, t: Transition, omit_next_images: bool) -> None:
        self._spool.append(_TRANSITION, t.seq, t.episode_id, wire.encode_item_transition(t, omit_next_images))
        self._last_sent_seq = t.seq
        self._new_data.set()

    def _raise_if_refused(self) -> None:
        if self._refused:
            raise LinkRefused(f"learner at {self.address} refused actor {self.actor_id!r}: {self._refused}")

    # ------------------------------------------------------------------ background: transitions

    def _channel(self) -> grpc.Channel:
        options = self._keepalive.client_options() + [
            ("grpc.max_receive_message_length", 16 << 20),
            ("grpc.max_send_message_length", 16 << 20),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", int(self._backoff.max_s * 1000)),
        ]
        return _channel(self.address, self._tls, options)

    def _run_sender(self) -> None:
        attempt = 0
        last_fsync = time.monotonic()
        while not self._closing.is_set():
            channel = self._channel()
            try:
                session = self._handshake(channel)
                if session is None:
                    return  # refused: never retried
                attempt = 0
                self._stream(channel, session)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.INVALID_ARGUMENT:  # our data breaks the run's contract: final
                    self._refuse_data(e.details())
                    return
                if not self._closing.is_set():
                    log.info("link %s: %s (%s); reconnecting", self.actor_id, e.code().name, e.details())
            finally:
                with self._state:
                    self._connected, self._session = False, None
                    self._state.notify_all()
                channel.close()
            if time.monotonic() - last_fsync > 1.0:
                self._spool.fsync()
                last_fsync = time.monotonic()
            self._closing.wait(self._backoff.delay(attempt, self._rng))
            attempt += 1

    def _handshake(self, channel: grpc.Channel) -> str | None:
        call = channel.unary_unary(
            f"/{wire.SERVICE_NAME}/Handshake",
            request_serializer=pb.HandshakeRequest.SerializeToString,
            response_deserializer=pb.HandshakeReply.FromString,
        )
        reply = call(
            pb.HandshakeRequest(
                protocol_version=wire.PROTOCOL_VERSION,
                config_hash=self._config_hash,
                actor_id=self.actor_id,
                token=self._token,
                next_seq=self._next_seq_for_handshake(),
                acked_floor=self._spool.acked_floor,
            ),
            timeout=self._handshake_timeout_s,
            metadata=self._token_metadata(),
        )
        with self._state:
            if not reply.accepted:
                self._refused = self._refusal(reply)
                log.error("link %s: learner refused the handshake: %s", self.actor_id, self._refused)
                self._state.notify_all()
                return None
            self._acked_seq = max(self._acked_seq, reply.stored_seq)
            self._acked_episode = max(self._acked_episode, reply.reported_episode)
            self._inflight = 0
            self._connected, self._session = True, (channel, reply.session_id)
            self._reconnects += 1
            self._last_ack_time = time.monotonic()
            self._state.notify_all()
        self._spool.trim(self._acked_seq, self._acked_episode)
        return reply.session_id

    def _refuse_data(self, details: str) -> None:
        """The learner refused a batch of ours (a transition breaks the run's contract). Sending it again cannot
        succeed, so the link stops, as after a refused handshake; the spool keeps the batch for a look."""
        with self._state:
            self._refused = (f"the learner refused this actor's data: {details}. Nothing of that batch was stored; it "
                             f"stays in the spool ({self._spool.directory}). This actor build sends transitions that "
                             "do not fit the run (observation or action shape, a non-finite value, its source): fix "
                             "it before starting it again")
            log.error("link %s: %s", self.actor_id, self._refused)
            self._state.notify_all()

    def _refusal(self, reply: "pb.HandshakeReply") -> str:
        """The learner's reason, led by the fields that differ when it refused our config and sent its own."""
        reason = reply.reason or "no reason given"
        if not (reply.learner_config and self._config_document):
            return reason
        try:
            differences = config_differences(self._config_document, reply.learner_config)
        except ValueError:  # not JSON: say what the learner said
            return reason
        if not differences:
            return reason
        shown = [f"{path}: actor {ours}, learner {theirs}" for path, ours, theirs in differences[:10]]
        more = f"; and {len(differences) - 10} more" if len(differences) > 10 else ""
        return f"the run config differs from the learner's in {'; '.join(shown)}{more} ({reason})"

    def _token_metadata(self) -> list[tuple[str, str]]:
        """The token travels on every call (the learner checks it before reading a request) and, for older
        learners, in the handshake request too."""
        return [(wire.TOKEN_METADATA_KEY, self._token)]

    def _next_seq_for_handshake(self) -> int:
        # A transition held back for its next frame is assigned but not spooled; the spool's view counts.
        return max(self._spool.next_seq, self._last_sent_seq + 1)

    def _stream(self, channel: grpc.Channel, session: str) -> None:
        call = channel.stream_stream(
            f"/{wire.SERVICE_NAME}/SendTransitions", request_serializer=None, response_deserializer=pb.Ack.FromString
        )
        stop = threading.Event()
        responses = call(self._batches(stop), metadata=[(wire.SESSION_METADATA_KEY, session), *self._token_metadata()])
        try:
            for ack in responses:
                with self._state:
                    self._acked_seq = max(self._acked_seq, ack.stored_seq)
                    self._acked_episode = max(self._acked_episode, ack.reported_episode)
                    self._inflight -= 1
                    self._last_ack_time = time.monotonic()
                    self._state.notify_all()
                self._spool.trim(self._acked_seq, self._acked_episode)
        finally:
            stop.set()
            responses.cancel()

    def _batches(self, stop: threading.Event):
        """The request stream: unacknowledged spool entries, in order, at most `max_inflight` batches ahead."""
        cursor = self._spool.start_cursor()
        with self._state:
            acked_seq, acked_episode = self._acked_seq, self._acked_episode
        last_fsync = time.monotonic()
        while not stop.is_set() and not self._closing.is_set():
            if time.monotonic() - last_fsync > 1.0:  # durable within about a second even if acks stall
                self._spool.fsync()
                last_fsync = time.monotonic()
            with self._state:
                while self._inflight >= self._max_inflight and not stop.is_set() and not self._closing.is_set():
                    self._state.wait(0.2)
                if stop.is_set() or self._closing.is_set():
                    return
            self._new_data.clear()
            entries, cursor = self._spool.read(
                cursor, acked_seq, acked_episode, self._max_batch_bytes, self._max_batch_items
            )
            if not entries:
                self._new_data.wait(0.2)
                continue
            with self._state:
                self._inflight += 1
            yield wire.frame_batch([e.item for e in entries])

    # ------------------------------------------------------------------ background: parameters

    def _run_params(self) -> None:
        failed_session = None
        while not self._closing.is_set():
            with self._state:
                while not self._closing.is_set() and self._session is None:
                    self._state.wait(0.5)
                if self._closing.is_set():
                    return
                channel, session = self._session
            if session == failed_session:  # same connection: retry after a pause (e.g. the server was busy)
                self._closing.wait(self._backoff.max_s / 5)
                with self._state:
                    if self._session is None or self._session[1] != session:
                        continue
            call = channel.unary_stream(
                f"/{wire.SERVICE_NAME}/Parameters",
                request_serializer=pb.ParameterRequest.SerializeToString,
                response_deserializer=pb.ParameterUpdate.FromString,
            )
            assembler = wire.ParameterAssembler()
            request = pb.ParameterRequest(session_id=session, have_version=self._latest[0] if self._latest else -1,
                                          have_incarnation=self._latest_incarnation)
            try:
                for update in call(request, metadata=self._token_metadata()):
                    if update.HasField("pacing"):
                        self._grants = wire.decode_grants(update.pacing)  # one reference swap, like _latest
                        continue
                    done = assembler.add(update.chunk)
                    if done is not None:
                        self._latest_incarnation = done.incarnation
                        self._latest = (done.version, done.subsets)  # one reference swap: readers see old or new
                        with self._state:
                            self._state.notify_all()
            except (grpc.RpcError, ValueError) as e:
                if not self._closing.is_set():
                    log.info("link %s: parameter stream ended (%s)", self.actor_id, e)
            failed_session = session
