"""The learner's gRPC endpoint: handshake, transition ingest with durable acks, parameter streaming, status.

    store = EpisodeStore(run_dir)
    board = ParameterBoard()
    service = LearnerService(store, on_transitions=replay_queue.put_many, on_episode=reports.put,
                             param_board=board, auth=ServiceAuth(config_hash=config_hash(cfg), token=""),
                             status_fn=lambda: ServiceStatus(phase="sac", replay_size=len(replay)))
    server = serve("127.0.0.1:50051", service, keepalive=Keepalive())   # .bound_port, .stop(grace)
    ...
    board.publish(version, {"policy": pi_params, "critic": q_params, "value": v_params})   # encoded once

Parameter sets are named by (board.incarnation, version): the incarnation is random per board (per learner process),
so an actor holding a set of an earlier learner gets this learner's latest at once, whatever the version numbers.

`on_transitions(list[Transition])` / `on_episode(EpisodeReport)` run on gRPC worker threads *after* the data is
fsync'd and before it is acknowledged, in stream order per actor; they should hand off to the learner's own
bounded queue (blocking there is backpressure on that actor's stream, which is fine). Transitions reach `on_transitions` linked: next_obs images
that travelled once per frame are filled in from the successor (the same array objects as its obs images).

An actor that moves on to a new episode without reporting the previous one (it crashed and restarted) gets a
report made for it (`cut=True` unless its last transition ended the episode), stored and passed to `on_episode`.
`on_actor_lost(actor_id)` (optional) is called when an actor's transition stream ends and no newer stream of that
actor replaced it (crash, network loss, clean close); the actor may come back later and continue its episode.

Guarantees: every item is checked before a byte of its batch is stored (q2rl.contract: decodes, fits the run's
`TransitionContract`, continues the actor's stream); a batch with a bad item is refused whole with INVALID_ARGUMENT
and a reason naming the seq and the field, so no ack covers it and the learner never sees it;
duplicates (actor_id, seq) are dropped; an ack means "everything up to this seq is on disk";
a stream that goes silent is cut by HTTP/2 keepalive within `Keepalive.time_ms + timeout_ms`; a reconnecting
actor's old stream is cancelled; RPC concurrency is capped (excess calls are refused, never queued unboundedly).

Lock-out: the cap must stay free for the actors. Every call presents the token as metadata (q2rl-token), checked
by `_TokenGate` before a worker reads its request, so a client without it holds no worker; a call with one request
message must send it within `first_message_s`, or it is cut; and a session holds at most one transition stream
and one parameter stream: a newer one replaces the older (as a new handshake replaces the old session), which is
cancelled at once, so a reconnecting actor whose old stream is half-open is never locked out.
"""

from __future__ import annotations

import copy
import dataclasses
import hmac
import logging
import secrets
import threading
import time
from concurrent import futures
from typing import Any, Callable, Iterator, Mapping

import grpc

from q2rl.learner.episode_store import EpisodeStore, EpisodeSummary, check_actor_id
from q2rl import wire
from q2rl.contract import TransitionContract, check_continuity, check_report, check_transition
from q2rl.interfaces import EpisodeReport, Grants, Transition
from q2rl.wire import Keepalive, TlsFiles, pb  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ServiceAuth:
    """What an actor must present in its handshake."""

    config_hash: str
    token: str = ""
    protocol_version: int = wire.PROTOCOL_VERSION
    # the canonical JSON document config_hash is computed on (run_config.compatibility_document); a refusal for a
    # config hash mismatch carries it, so the actor can name the fields that differ ("": not sent)
    config_document: str = ""


@dataclasses.dataclass(frozen=True)
class ServiceStatus:
    """What the learner reports through the Status RPC (filled by the learner's `status_fn`)."""

    phase: str = "starting"
    replay_size: int = 0
    updates_per_s: float = 0.0
    env_steps_per_s: float = 0.0


MAX_BATCH_BYTES = 8 << 20  # the actor keeps its batches below this; the server accepts up to 2x


class ParameterBoard:
    """The learner's ParameterBoard for gRPC: the latest parameter set, encoded once, and the latest pacing grants,
    for every actor's parameter stream (latest-only; grants never wait behind a parameter set). `incarnation` names
    this board's sets apart from those of any other learner process, which may reuse the version numbers."""

    def __init__(self, chunk_bytes: int = wire.DEFAULT_CHUNK_BYTES) -> None:
        self._chunk_bytes = chunk_bytes
        self.incarnation = secrets.randbits(63) | 1  # random and nonzero (0 means "none" in a ParameterRequest)
        self._cond = threading.Condition()
        self._version = -1
        self._chunks: list = []
        self._grants: "pb.ParameterUpdate | None" = None
        self._grants_serial = 0  # counts publish_grants calls
        self._closed = False

    def publish(self, version: int, subsets: Mapping[str, Any]) -> None:
        """Encode {subset: pytree} (ParameterSubset messages, chunked) and make it the set every stream sends next."""
        if version <= self._version:
            raise ValueError(f"parameter version {version} is not newer than the published {self._version}")
        chunks = [pb.ParameterUpdate(chunk=c) for c in wire.encode_parameter_set(
            version, subsets, incarnation=self.incarnation, chunk_bytes=self._chunk_bytes)]
        with self._cond:
            self._version, self._chunks = version, chunks
            self._cond.notify_all()

    def publish_grants(self, grants: Grants) -> None:
        message = wire.encode_grants(grants)
        with self._cond:
            self._grants, self._grants_serial = message, self._grants_serial + 1
            self._cond.notify_all()

    @property
    def version(self) -> int:
        return self._version

    def wait_newer(self, have_version: int, have_grants: int, timeout: float) -> tuple[int, int, list] | None:
        """(version, grants serial, messages) with whatever is newer than what a stream has sent (grants first),
        waiting up to `timeout` s; None when nothing is."""
        with self._cond:
            fresh = lambda: self._version > have_version or self._grants_serial > have_grants
            if not fresh() and not self._closed:
                self._cond.wait(timeout)
            if not fresh():
                return None
            messages = [self._grants] if self._grants_serial > have_grants else []
            if self._version > have_version:
                messages += self._chunks
            return self._version, self._grants_serial, messages

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wake(self) -> None:
        """Let every waiting stream look again now (one of them was replaced and must end)."""
        with self._cond:
            self._cond.notify_all()


class _ActorState:
    """Per-actor ingest state; `lock` serialises batches of the same actor (old and new stream)."""

    def __init__(self, stored_seq: int, reported_episode: int, tail: Transition | None,
                 episode: EpisodeSummary | None) -> None:
        self.lock = threading.Lock()
        self.episode = episode  # the newest episode seen, to report it if the actor never does
        self.stored_seq = stored_seq
        self.reported_episode = reported_episode
        self.linker = wire.FrameLinker()
        if tail is not None:
            self.linker.push(tail, True)
        self.session_id = ""
        self.stream_context: grpc.ServicerContext | None = None
        self.connected = False
        self.last_batch_time = 0.0
        self.reconnects = -1


def _refuse(reason: str, **fields: Any) -> "pb.HandshakeReply":
    log.warning("handshake refused: %s", reason)
    return pb.HandshakeReply(accepted=False, reason=reason, protocol_version=wire.PROTOCOL_VERSION, **fields)


class LearnerService:
    """The servicer behind `serve`: owns dedup, contiguity, durability-before-ack and per-actor streams."""

    def __init__(
        self,
        store: EpisodeStore,
        on_transitions: Callable[[list[Transition]], None],
        on_episode: Callable[[EpisodeReport], None],
        param_board: ParameterBoard,
        auth: ServiceAuth,
        status_fn: Callable[[], ServiceStatus] = ServiceStatus,
        param_poll_s: float = 0.5,
        on_actor_lost: Callable[[str], None] | None = None,
        contract: TransitionContract | None = None,
    ) -> None:
        """`contract`: the shapes every transition of the run must have (None, as in benchmarks: only what every
        run shares is checked); a batch with an item that fails the checks is refused whole, before it is stored."""
        self.store = store
        self.contract = contract
        self.on_transitions = on_transitions
        self.on_episode = on_episode
        self.board = param_board
        self.auth = auth
        self.status_fn = status_fn
        self.on_actor_lost = on_actor_lost
        self._param_poll_s = param_poll_s
        self._lock = threading.Lock()
        self._actors: dict[str, _ActorState] = {}
        self._sessions: dict[str, str] = {}  # session id -> actor id
        self._param_streams: dict[str, grpc.ServicerContext] = {}  # session id -> its one parameter stream
        self._stopping = threading.Event()

    # ------------------------------------------------------------------ handshake

    def _actor(self, actor_id: str) -> _ActorState:
        with self._lock:
            a = self._actors.get(actor_id)
            if a is None:
                a = self._actors[actor_id] = _ActorState(
                    self.store.stored_seq(actor_id),
                    self.store.reported_episode(actor_id),
                    self.store.unlinked_tail(actor_id, self.contract),
                    self.store.last_episode_summary(actor_id),
                )
            return a

    def Handshake(self, request: "pb.HandshakeRequest", context) -> "pb.HandshakeReply":
        if request.protocol_version != self.auth.protocol_version:
            return _refuse(
                f"protocol version mismatch: actor speaks {request.protocol_version}, learner speaks "
                f"{self.auth.protocol_version}; run the same q2rl release on both machines"
            )
        if not hmac.compare_digest(request.token.encode(), self.auth.token.encode()):
            return _refuse("token rejected: the actor's token does not match the learner's (learner.token / --token)")
        if request.config_hash != self.auth.config_hash:
            return _refuse(
                f"run config hash mismatch: actor {request.config_hash!r} != learner {self.auth.config_hash!r}; "
                "start the actor with the learner's run config (runs/<name>/config.yaml)",
                learner_config_hash=self.auth.config_hash, learner_config=self.auth.config_document,
            )
        try:
            check_actor_id(request.actor_id)
        except ValueError as e:
            return _refuse(str(e))
        a = self._actor(request.actor_id)
        with a.lock:
            if a.stored_seq >= request.next_seq:
                return _refuse(
                    f"actor {request.actor_id!r}: the learner already stores seq up to {a.stored_seq} but this actor "
                    f"would start at {request.next_seq}: its spool was lost or the actor id is reused; "
                    "give the actor a new --actor-id or restore its spool directory"
                )
            if a.stored_seq < request.acked_floor:
                if a.stored_seq >= 0:
                    return _refuse(
                        f"actor {request.actor_id!r}: the learner stores seq up to {a.stored_seq} but the actor's spool "
                        f"already discarded everything up to {request.acked_floor} (acknowledged by another learner "
                        "run); resume the matching run or give the actor a new --actor-id / empty spool"
                    )
                a.stored_seq = request.acked_floor  # a new run fed by an actor with history: start after it
            old_session, old_context = a.session_id, a.stream_context
            a.session_id = secrets.token_hex(16)
            a.reconnects += 1
            reply = pb.HandshakeReply(
                accepted=True,
                protocol_version=wire.PROTOCOL_VERSION,
                session_id=a.session_id,
                stored_seq=a.stored_seq,
                reported_episode=a.reported_episode,
                learner_config_hash=self.auth.config_hash,
            )
        with self._lock:
            self._sessions.pop(old_session, None)
            self._sessions[a.session_id] = request.actor_id
        if old_context is not None:
            old_context.cancel()  # the actor reconnected: its previous stream is dead or about to be
        log.info("actor %s connected (stored seq %d)", request.actor_id, reply.stored_seq)
        return reply

    def _session(self, context) -> tuple[str, _ActorState, str]:
        session = dict(context.invocation_metadata()).get(wire.SESSION_METADATA_KEY, "")
        with self._lock:
            actor_id = self._sessions.get(session)
        if actor_id is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown or replaced session: handshake first")
        return actor_id, self._actors[actor_id], session

    # ------------------------------------------------------------------ ingest

    def SendTransitions(self, request_iterator: Iterator[bytes], context) -> Iterator["pb.Ack"]:
        actor_id, a, session = self._session(context)
        with a.lock:
            replaced = a.stream_context
            a.stream_context, a.connected = context, True
        if replaced is not None:
            replaced.cancel()  # one transition stream per actor: the newer replaces the older, freeing its worker

        def on_done() -> None:
            with a.lock:
                lost = a.stream_context is context  # ended without a newer stream of this actor taking over
                if lost:
                    a.stream_context, a.connected = None, False
            if lost and self.on_actor_lost is not None and not self._stopping.is_set():
                self.on_actor_lost(actor_id)

        context.add_callback(on_done)
        for batch in request_iterator:
            if a.session_id != session:
                context.abort(grpc.StatusCode.CANCELLED, "stream replaced by a newer connection of this actor")
            try:
                yield self._ingest(actor_id, a, batch)
            except wire.WireError as e:
                log.warning("actor %s: refused a batch, nothing of it stored: %s", actor_id, e)
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"actor {actor_id}: {e}")

    def _ingest(self, actor_id: str, a: _ActorState, batch: bytes) -> "pb.Ack":
        """Check a batch, store it durably (dropping duplicates), hand it to the learner, and return the ack.

        Every new item is checked first (q2rl.contract: it decodes, fits the run's contract and continues the
        actor's stream): one bad item raises a WireError before anything is stored, so nothing of the batch is
        stored, acknowledged or handed on, and the actor's state stays as it was."""
        with a.lock:
            fresh: list[tuple[bytes, "pb.Item"]] = []  # what is stored
            records: list = []  # the same, decoded: (Transition, next images pending) or EpisodeReport
            stored_seq, reported, episode = a.stored_seq, a.reported_episode, copy.copy(a.episode)
            for raw in wire.split_batch(batch):
                item = wire.parse_item(raw)
                if item.HasField("transition"):
                    t = item.transition
                    if t.seq <= stored_seq:
                        continue  # duplicate of something already stored (resend after reconnect)
                    if t.seq != stored_seq + 1:
                        raise wire.WireError(f"seq gap: got {t.seq} after {stored_seq}; resend from {stored_seq + 1}")
                    record = check_transition(t, self.contract, actor_id)
                    check_continuity(t, None if episode is None else episode.last, reported)
                    stored_seq = t.seq
                    if episode is None or episode.episode_id != t.episode_id:
                        if episode is not None and not episode.reported and episode.episode_id > reported:
                            cut = self._cut_report_item(actor_id, episode)  # its actor moved on
                            fresh.append(cut)
                            records.append(wire.decode_report(cut[1].report))
                            reported = episode.episode_id
                        episode = EpisodeSummary(t.episode_id)
                    episode.add(t)
                else:
                    if item.report.episode_id <= reported:
                        continue
                    record = check_report(item.report, actor_id)
                    reported = item.report.episode_id
                    if episode is not None and episode.episode_id == reported:
                        episode.reported = True
                fresh.append((raw, item))
                records.append(record)
            self.store.append(actor_id, fresh)  # fsync'd before anything is acknowledged
            a.stored_seq, a.reported_episode, a.episode = stored_seq, reported, episode
            a.last_batch_time = time.monotonic()
            # Hand over in stream order, still under the actor's lock (an old and a new stream of the same
            # actor may overlap for a moment); a full learner queue here is backpressure on this actor.
            ready: list[Transition] = []
            for record in records:
                if not isinstance(record, EpisodeReport):
                    ready += a.linker.push(*record)
                    continue
                a.linker.drop_pending()
                if ready:
                    self.on_transitions(ready)
                    ready = []
                self.on_episode(record)
            if ready:
                self.on_transitions(ready)
        return pb.Ack(stored_seq=stored_seq, reported_episode=reported)

    @staticmethod
    def _cut_report_item(actor_id: str, episode: EpisodeSummary) -> tuple[bytes, "pb.Item"]:
        report = episode.cut_report(actor_id)
        if report.cut:
            log.warning("actor %s: episode %d stopped without a report; recording it as cut", actor_id, report.episode_id)
        else:
            log.info("actor %s: episode %d ended without a report; recording one", actor_id, report.episode_id)
        raw = wire.encode_item_report(report, episode.last_seq)
        return raw, wire.parse_item(raw)

    # ------------------------------------------------------------------ parameters, status

    def Parameters(self, request: "pb.ParameterRequest", context) -> Iterator["pb.ParameterUpdate"]:
        session = request.session_id
        with self._lock:
            known = session in self._sessions
            replaced = self._param_streams.get(session)
            if known:
                self._param_streams[session] = context
        if not known:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown or replaced session: handshake first")
        if replaced is not None:  # one parameter stream per session: the newer replaces the older at once
            replaced.cancel()
            self.board.wake()
        # A set of another learner process (this one restarted) is no set here, whatever its number: send ours.
        own = request.have_incarnation == self.board.incarnation
        have, have_grants = (request.have_version if own else -1), 0
        try:
            while context.is_active() and not self._stopping.is_set():
                with self._lock:
                    superseded = session not in self._sessions or self._param_streams.get(session) is not context
                if superseded:  # the actor reconnected (a new session), or this session opened a newer stream
                    # Ended as the newer stream's cancel() would end it: seeing the change first is a race, not OK.
                    context.abort(grpc.StatusCode.CANCELLED, "parameter stream replaced by a newer connection")
                newer = self.board.wait_newer(have, have_grants, self._param_poll_s)
                if newer is None:
                    continue
                have, have_grants, messages = newer
                yield from messages
        finally:
            with self._lock:
                if self._param_streams.get(session) is context:
                    del self._param_streams[session]

    def Status(self, request: "pb.StatusRequest", context) -> "pb.StatusReply":
        token = dict(context.invocation_metadata()).get(wire.TOKEN_METADATA_KEY, "")
        if not hmac.compare_digest(token.encode(), self.auth.token.encode()):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "token rejected (metadata q2rl-token)")
        s = self.status_fn()
        now = time.monotonic()
        reply = pb.StatusReply(
            phase=s.phase,
            param_version=self.board.version,
            replay_size=s.replay_size,
            updates_per_s=s.updates_per_s,
            env_steps_per_s=s.env_steps_per_s,
            protocol_version=wire.PROTOCOL_VERSION,
        )
        with self._lock:
            actors = dict(self._actors)
        for actor_id, a in sorted(actors.items()):
            reply.actors.add(
                actor_id=actor_id,
                connected=a.connected,
                stored_seq=a.stored_seq,
                last_batch_age_s=(now - a.last_batch_time) if a.last_batch_time else -1.0,
                reconnects=max(0, a.reconnects),
            )
        return reply

    def connected_actors(self) -> set[str]:
        """The actors whose transition stream is open now."""
        with self._lock:
            actors = list(self._actors.items())
        return {actor_id for actor_id, a in actors if a.connected}

    def stop(self) -> None:
        self._stopping.set()
        self.board.close()

    # ------------------------------------------------------------------ registration

    def handler(self) -> grpc.GenericRpcHandler:
        """The method handlers; SendTransitions takes raw batch bytes (items stored verbatim, no re-encoding)."""
        raw_bytes = None  # no deserializer: the handler gets the batch bytes as they came
        return grpc.method_handlers_generic_handler(
            wire.SERVICE_NAME,
            {
                "Handshake": grpc.unary_unary_rpc_method_handler(
                    self.Handshake, pb.HandshakeRequest.FromString, pb.HandshakeReply.SerializeToString
                ),
                "SendTransitions": grpc.stream_stream_rpc_method_handler(
                    self.SendTransitions, raw_bytes, pb.Ack.SerializeToString
                ),
                "Parameters": grpc.unary_stream_rpc_method_handler(
                    self.Parameters, pb.ParameterRequest.FromString, pb.ParameterUpdate.SerializeToString
                ),
                "Status": grpc.unary_unary_rpc_method_handler(
                    self.Status, pb.StatusRequest.FromString, pb.StatusReply.SerializeToString
                ),
            },
        )


class LearnerServer:
    """A running gRPC server: `.address`, `.bound_port`, `.stop(grace_s)`."""

    def __init__(self, server: grpc.Server, service: LearnerService, host: str, port: int,
                 executor: futures.ThreadPoolExecutor) -> None:
        self.server, self.service, self.host, self.bound_port = server, service, host, port
        self._executor = executor

    @property
    def address(self) -> str:
        return f"{self.host}:{self.bound_port}"

    def stop(self, grace_s: float | None = 1.0) -> None:
        """Stop serving; returns once every handler has returned (no store write is still in flight)."""
        self.service.stop()
        self.server.stop(grace_s).wait()
        self._executor.shutdown(wait=True)


class _TokenGate(grpc.ServerInterceptor):
    """Checks every call's token (metadata q2rl-token) before a worker reads its request, and gives a call with one
    request message `first_message_s` to send it: a client without the token, or one that never sends its request,
    cannot hold the workers the actors need."""

    def __init__(self, token: str, first_message_s: float) -> None:
        self._token, self._first_message_s = token.encode(), first_message_s

    def intercept_service(self, continuation, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None:
            return None
        presented = dict(details.invocation_metadata or ()).get(wire.TOKEN_METADATA_KEY, "")
        if not hmac.compare_digest(presented.encode(), self._token):
            why = ("the call carries none (metadata q2rl-token): update q2rl on the actor's machine" if not presented
                   else "the actor's token does not match the learner's")
            return _answer_at_once(details.method, f"token rejected: {why} (learner.token_file, $Q2RL_TOKEN or "
                                                   "learner.token)")
        return handler if handler.request_streaming else _first_message_within(handler, self._first_message_s)


def _answer_at_once(method: str, reason: str) -> grpc.RpcMethodHandler:
    """A handler that answers without reading the request, so it holds a worker for microseconds: a refused
    HandshakeReply (the actor raises it as final, never retried), UNAUTHENTICATED for the other methods."""
    if method.endswith("/Handshake"):
        return grpc.stream_unary_rpc_method_handler(lambda requests, context: _refuse(reason), None,
                                                    pb.HandshakeReply.SerializeToString)

    def refuse(requests: Iterator[bytes], context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

    return grpc.stream_unary_rpc_method_handler(refuse)


def _first_message_within(handler: grpc.RpcMethodHandler, timeout_s: float) -> grpc.RpcMethodHandler:
    """`handler` (one request message) as a handler that reads the message itself and cuts the call when it has not
    arrived within `timeout_s`; gRPC alone would wait for it forever, holding a worker."""
    behavior = handler.unary_stream if handler.response_streaming else handler.unary_unary

    def first_then(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        def cut() -> None:
            log.warning("cut a call from %s: no request message within %.1f s", context.peer(), timeout_s)
            context.cancel()

        timer = threading.Timer(timeout_s, cut)
        timer.daemon = True
        timer.start()
        try:
            request = next(requests, None)  # raises grpc.RpcError once cut (gRPC does not log that one)
        finally:
            timer.cancel()
        if request is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call ended without its request message")
        return behavior(request, context)

    wrap = grpc.stream_stream_rpc_method_handler if handler.response_streaming else grpc.stream_unary_rpc_method_handler
    return wrap(first_then, handler.request_deserializer, handler.response_serializer)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def serve(
    address: str,
    service: LearnerService,
    *,
    max_actors: int = 8,
    keepalive: Keepalive = Keepalive(),
    tls: TlsFiles | None = None,
    first_message_s: float = 5.0,
) -> LearnerServer:
    """Start serving `service` at host:port (port 0 picks a free one); localhost unless a host is given. A call
    without the token is refused before it holds a worker; one whose request is `first_message_s` late is cut."""
    host, _, port = address.rpartition(":")
    host = host or "127.0.0.1"
    if host not in ("127.0.0.1", "localhost", "::1", "[::1]") and tls is None and not service.auth.token:
        log.warning("learner listens on %s without TLS or token: anyone on that network can feed it data", host)
    # Two long-lived streams per actor plus room for handshakes/status; beyond that calls are refused.
    workers = 2 * max_actors + 4
    executor = futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="q2rl-grpc")
    server = grpc.server(
        executor,
        handlers=[service.handler()],
        interceptors=[_TokenGate(service.auth.token, first_message_s)],
        options=keepalive.server_options()
        + [
            ("grpc.max_receive_message_length", 2 * MAX_BATCH_BYTES),
            ("grpc.max_send_message_length", 2 * MAX_BATCH_BYTES),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=workers,
    )
    target = f"{host}:{port or 0}"
    if tls is None:
        bound = server.add_insecure_port(target)
    else:
        creds = grpc.ssl_server_credentials(
            [(_read(tls.private_key), _read(tls.cert_chain))],
            root_certificates=_read(tls.client_ca) if tls.client_ca else None,
            require_client_auth=bool(tls.client_ca),
        )
        bound = server.add_secure_port(target, creds)
    if bound == 0:
        raise OSError(f"cannot bind the learner to {target} (port in use or bad address)")
    server.start()
    return LearnerServer(server, service, host, bound, executor)
