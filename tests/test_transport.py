"""The actor-learner link over real loopback gRPC: handshake, exact round trips, dedup, acks, parameters."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess
import threading
import time

import grpc
import numpy as np
import pytest

from q2rl import wire
from q2rl.actor.link import ActorLink, LinkRefused, Spool, fetch_status
from q2rl.learner.episode_store import EpisodeStore
from q2rl.wire import pb
from transport_util import (CONFIG_HASH, FAST_KEEPALIVE, TOKEN, assert_transition_equal, make_episode, report_for,
                            free_port, start_learner)


@pytest.fixture
def learner(tmp_path, request):
    """A learner for make_episode's transitions; parametrize it indirectly with True for their images."""
    server, store, collector, board = start_learner(tmp_path / "run", images=getattr(request, "param", False))
    yield server, store, collector, board
    server.stop(0)


def new_link(server, tmp_path, actor_id="a0", config_hash=CONFIG_HASH, token=TOKEN, **kw):
    return ActorLink(server.address, actor_id, config_hash, token, tmp_path / f"spool-{actor_id}",
                     keepalive=FAST_KEEPALIVE, **kw)


class RawClient:
    """The RPCs by hand, to send exactly the batches a test needs; every call carries the token as metadata."""

    def __init__(self, address: str, token: str = TOKEN) -> None:
        self.channel = grpc.insecure_channel(address)
        self.token = [(wire.TOKEN_METADATA_KEY, token)]
        handshake = self.channel.unary_unary(f"/{wire.SERVICE_NAME}/Handshake",
                                             pb.HandshakeRequest.SerializeToString, pb.HandshakeReply.FromString)
        self.handshake = lambda request, **kw: handshake(request, metadata=self.token, **kw)
        send = self.channel.stream_stream(f"/{wire.SERVICE_NAME}/SendTransitions", None, pb.Ack.FromString)
        self.send = lambda batches, metadata=(): send(batches, metadata=[*metadata, *self.token])
        params = self.channel.unary_stream(f"/{wire.SERVICE_NAME}/Parameters", pb.ParameterRequest.SerializeToString,
                                           pb.ParameterUpdate.FromString)
        self.parameters = lambda session: params(pb.ParameterRequest(session_id=session, have_version=-1),
                                                 metadata=self.token)

    def hello(self, actor_id="a0", **kw) -> pb.HandshakeReply:
        fields = dict(protocol_version=wire.PROTOCOL_VERSION, config_hash=CONFIG_HASH, actor_id=actor_id,
                      token=TOKEN, next_seq=1000, acked_floor=-1)
        return self.handshake(pb.HandshakeRequest(**{**fields, **kw}), timeout=5)

    def stall(self, method: str, metadata=()) -> tuple[grpc.Future, threading.Event]:
        """A call that sends its headers and then never its request message (a stuck or hostile client); it
        ends when the server cuts it or when the returned event is set."""
        gate = threading.Event()

        def never():
            gate.wait()
            yield from ()

        call = self.channel.stream_unary(f"/{wire.SERVICE_NAME}/{method}", None, None)
        return call.future(never(), metadata=list(metadata)), gate


@pytest.mark.parametrize("what, expected", [
    ("version", f"protocol version mismatch: actor speaks 99, learner speaks {wire.PROTOCOL_VERSION}"),
    ("hash", "run config hash mismatch: actor 'ffffffffffffffff' != learner '0123456789abcdef'"),
    ("token", "token rejected"),
])
def test_handshake_refusal_is_a_clear_exception_not_a_retry_loop(learner, tmp_path, monkeypatch, what, expected):
    server = learner[0]
    if what == "version":
        monkeypatch.setattr(wire, "PROTOCOL_VERSION", 99)
    link = new_link(server, tmp_path, config_hash="f" * 16 if what == "hash" else CONFIG_HASH,
                    token="wrong" if what == "token" else TOKEN)
    with pytest.raises(LinkRefused, match=expected):
        link.wait_connected(timeout=10)
    assert link.health().refused and not link.health().connected
    t = make_episode("a0", 0, 0, 1, np.random.default_rng(0))[0]
    with pytest.raises(LinkRefused, match=expected):
        link.add(t)
    reconnects = link.health().reconnects
    time.sleep(0.5)
    assert link.health().reconnects == reconnects == 0  # it gave up at once
    link.close(0)


@pytest.mark.parametrize("learner, images", [(False, False), (True, True)], indirect=["learner"])
def test_transitions_and_reports_round_trip_exactly(learner, tmp_path, images):
    server, store, collector, _ = learner
    link = new_link(server, tmp_path)
    assert link.wait_connected(10)
    rng = np.random.default_rng(1)
    sent, reports = [], []
    for e in range(3):
        ep = make_episode("a0", link.next_episode_id, link.next_seq, 7, rng, images=images, terminal=e != 1)
        for t in ep:
            link.add(t)
        reports.append(report_for(ep))
        link.end_episode(reports[-1])
        sent += ep
    assert link.flush(10)
    assert collector.wait_for(len(sent), 5)
    assert [t.seq for t in collector.transitions] == list(range(21))
    for a, b in zip(sent, collector.transitions):
        assert_transition_equal(a, b)
    assert collector.reports == reports
    h = link.health()
    assert h.connected and h.unacked == 0 and h.last_ack_age_s < 5
    link.close(1)
    # what the learner acknowledged is on disk: a fresh store reads back the same episodes
    server.stop(0)
    store.close()
    again = EpisodeStore(tmp_path / "run")
    episodes = list(again.episodes())
    assert [(e.episode_id, e.complete, e.report) for e in episodes] == [(i, True, reports[i]) for i in range(3)]
    for a, b in zip(sent, [t for e in episodes for t in e.transitions]):
        assert_transition_equal(a, b)
    if images:  # a frame that travelled once is linked back as the next_obs of the step before
        np.testing.assert_array_equal(episodes[0].transitions[3].next_obs["images"]["front"],
                                      sent[3].next_obs["images"]["front"])


def test_duplicates_are_dropped_and_acks_mean_stored(learner, tmp_path):
    server, store, collector, _ = learner
    client = RawClient(server.address)
    reply = client.hello(next_seq=10)
    assert reply.accepted and reply.stored_seq == -1
    ep = make_episode("a0", 0, 0, 10, np.random.default_rng(2))
    items = [wire.encode_item_transition(t) for t in ep]
    batches = [items[0:5], items[2:7], items[2:7], items[7:10]]
    acks = []
    responses = client.send(iter([wire.frame_batch(b) for b in batches]),
                            metadata=[(wire.SESSION_METADATA_KEY, reply.session_id)])
    for ack in responses:
        acks.append(ack.stored_seq)
        on_disk = [t.seq for e in EpisodeStore(tmp_path / "run").episodes() for t in e.transitions]
        assert on_disk[: ack.stored_seq + 1] == list(range(ack.stored_seq + 1))  # acknowledged => on disk
    assert acks == [4, 6, 6, 9]
    assert [t.seq for t in collector.transitions] == list(range(10))
    # a gap is a protocol error that names the seq to resend from
    gap = client.send(iter([wire.frame_batch([wire.encode_item_transition(
        make_episode("a0", 0, 12, 1, np.random.default_rng(3))[0])])]),
        metadata=[(wire.SESSION_METADATA_KEY, reply.session_id)])
    with pytest.raises(grpc.RpcError) as err:
        list(gap)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "resend from 10" in err.value.details()
    # without a handshake there is no stream
    with pytest.raises(grpc.RpcError) as err:
        list(client.send(iter([]), metadata=[(wire.SESSION_METADATA_KEY, "forged")]))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_reconnecting_actor_replaces_its_old_stream(learner, tmp_path):
    server = learner[0]
    client = RawClient(server.address)
    first = client.hello(next_seq=0)
    queue = __import__("queue").Queue()
    old = client.send(iter(queue.get, None), metadata=[(wire.SESSION_METADATA_KEY, first.session_id)])
    queue.put(wire.frame_batch([wire.encode_item_transition(make_episode("a0", 0, 0, 1, np.random.default_rng(0))[0])]))
    assert next(old).stored_seq == 0
    second = client.hello(next_seq=1)  # the same actor again, e.g. after its network blinked
    assert second.accepted and second.stored_seq == 0 and second.session_id != first.session_id
    with pytest.raises(grpc.RpcError) as err:
        next(old)  # the old stream is cancelled by the server, not left holding a worker
    assert err.value.code() == grpc.StatusCode.CANCELLED
    queue.put(None)
    with pytest.raises(grpc.RpcError) as err:  # and the old session is no longer valid
        list(client.send(iter([]), metadata=[(wire.SESSION_METADATA_KEY, first.session_id)]))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


BAD_TRANSITIONS = {  # how to spoil a transition, and what the refusal must say about it
    "action bytes": (lambda m: setattr(m.action, "data", m.action.data[:-4]), "action: 24 bytes do not fit"),
    "6-D action": (lambda m: m.action.CopyFrom(wire.tensor_proto(np.zeros(6, np.float32))),
                   "action has shape (6,), the run's actions are (7,)"),
    "NaN action": (lambda m: m.action.CopyFrom(wire.tensor_proto(np.full(7, np.nan, np.float32))),
                   "action holds non-finite values"),
    "unspecified source": (lambda m: setattr(m, "source", pb.ACTION_SOURCE_UNSPECIFIED),
                           "source is ACTION_SOURCE_UNSPECIFIED"),
    "a_bc unset": (lambda m: m.ClearField("a_bc"), "a_bc is missing"),
    "state size": (lambda m: m.obs.state.CopyFrom(wire.tensor_proto(np.zeros(5, np.float32))),
                   "obs.state has shape (5,), the run's states are (12,)"),
    "step jump": (lambda m: setattr(m, "step", 5), "step 5 does not follow step 3 of episode 0"),
}


@pytest.mark.parametrize("kind", sorted(BAD_TRANSITIONS))
def test_a_batch_with_one_bad_transition_is_refused_whole_before_anything_is_stored(learner, tmp_path, kind):
    spoil, reason = BAD_TRANSITIONS[kind]
    server, store, collector, _ = learner
    client = RawClient(server.address)
    ep = make_episode("a0", 0, 0, 6, np.random.default_rng(11), terminal=False)
    items = [wire.encode_item_transition(t) for t in ep]
    bad = wire.encode_transition(ep[4])
    spoil(bad)
    session = [(wire.SESSION_METADATA_KEY, client.hello(next_seq=6).session_id)]
    assert [a.stored_seq for a in client.send(iter([wire.frame_batch(items[:3])]), metadata=session)] == [2]
    refused = [items[3], pb.Item(transition=bad).SerializeToString(), items[5]]  # good, bad, good
    with pytest.raises(grpc.RpcError) as err:
        list(client.send(iter([wire.frame_batch(refused)]), metadata=session))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "seq 4" in err.value.details() and reason in err.value.details(), err.value.details()
    # nothing of the batch is stored, acknowledged or handed to the learner: not even the good seq 3 before it
    assert store.stored_seq("a0") == 2 and [t.seq for t in collector.transitions] == [0, 1, 2]
    assert [t.seq for e in EpisodeStore(tmp_path / "run").episodes() for t in e.transitions] == [0, 1, 2]
    reply = client.hello(next_seq=6)  # the actor reconnects, learns what is stored and sends good data
    assert reply.accepted and reply.stored_seq == 2
    acks = list(client.send(iter([wire.frame_batch(items[3:])]),
                            metadata=[(wire.SESSION_METADATA_KEY, reply.session_id)]))
    assert [a.stored_seq for a in acks] == [5] and [t.seq for t in collector.transitions] == list(range(6))


def test_an_actor_whose_data_is_refused_stops_with_the_reason_instead_of_resending_it(learner, tmp_path):
    """A batch the learner refuses (INVALID_ARGUMENT) would be refused again on every resend: the link stops and says
    why, and the spool keeps the refused data."""
    server, store, collector, _ = learner
    link = new_link(server, tmp_path)
    assert link.wait_connected(10)
    ep = make_episode("a0", 0, 0, 200, np.random.default_rng(13), terminal=False)
    ep[2] = dataclasses.replace(ep[2], action=np.full(7, np.nan, np.float32))
    with pytest.raises(LinkRefused, match="refused this actor's data: .*seq 2.*stays in the spool"):
        for t in ep:  # the episode goes on while the link works: an add after the refusal raises it
            link.add(t)
            time.sleep(0.1)
    reconnects = link.health().reconnects
    time.sleep(1.0)
    assert link.health().reconnects == reconnects <= 1, "it gave up instead of resending"
    assert store.stored_seq("a0") < 2 and all(t.seq < 2 for t in collector.transitions)
    link.close(0)
    assert Spool(tmp_path / "spool-a0").next_seq >= 3, "the refused transitions stay in the spool"


@pytest.mark.parametrize("learner", [True], indirect=True)
def test_a_transition_held_for_its_successors_frame_is_sent_when_the_actor_waits(learner, tmp_path):
    """With cameras, a transition waits for the next one to carry its next frame. An actor about to wait for the
    learner's grant sends it at once (send_held): the grant may wait for that very transition (a sim session with
    cameras stalled two steps short of its budget)."""
    server, store, collector, _ = learner
    link = new_link(server, tmp_path)
    assert link.wait_connected(10)
    ep = make_episode("a0", 0, 0, 3, np.random.default_rng(15), images=True, terminal=False)
    link.add(ep[0])
    link.add(ep[1])
    deadline = time.monotonic() + 10
    while store.stored_seq("a0") < 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert store.stored_seq("a0") == 0, "seq 1 is held back for seq 2's frame"
    link.send_held()
    deadline = time.monotonic() + 10
    while store.stored_seq("a0") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.stored_seq("a0") == 1
    assert_transition_equal(collector.transitions[1], ep[1])  # with its own next frame
    link.add(ep[2])  # the episode goes on as usual after it
    assert link.flush(10) and [t.seq for t in collector.transitions] == [0, 1, 2]
    link.close(0)


def test_an_episode_must_go_on_where_it_stopped_also_across_a_learner_restart(tmp_path):
    ep = make_episode("a0", 0, 0, 4, np.random.default_rng(12), terminal=False)
    items = [wire.encode_item_transition(t) for t in ep]
    server, store, *_ = start_learner(tmp_path / "run")
    client = RawClient(server.address)
    session = [(wire.SESSION_METADATA_KEY, client.hello(next_seq=4).session_id)]
    assert [a.stored_seq for a in client.send(iter([wire.frame_batch(items[:2])]), metadata=session)] == [1]
    server.stop(0)
    store.close()
    server, store, collector, _ = start_learner(tmp_path / "run")  # a new learner on the same episode store
    try:
        client = RawClient(server.address)
        session = [(wire.SESSION_METADATA_KEY, client.hello(next_seq=4).session_id)]
        skipped = wire.encode_transition(ep[3])
        skipped.seq = 2  # the right seq, but the step after the one that never came
        with pytest.raises(grpc.RpcError) as err:
            list(client.send(iter([wire.frame_batch([pb.Item(transition=skipped).SerializeToString()])]),
                             metadata=session))
        assert "transition seq 2: step 3 does not follow step 1 of episode 0" in err.value.details()
        session = [(wire.SESSION_METADATA_KEY, client.hello(next_seq=4).session_id)]
        assert [a.stored_seq for a in client.send(iter([wire.frame_batch(items[2:])]), metadata=session)] == [3]
        assert [t.seq for t in collector.transitions] == [2, 3]
    finally:
        server.stop(0)


def test_lost_spool_or_reused_actor_id_is_refused(learner, tmp_path):
    server = learner[0]
    client = RawClient(server.address)
    reply = client.hello(next_seq=3)
    ep = make_episode("a0", 0, 0, 3, np.random.default_rng(4))
    list(client.send(iter([wire.frame_batch([wire.encode_item_transition(t) for t in ep])]),
                     metadata=[(wire.SESSION_METADATA_KEY, reply.session_id)]))
    refused = client.hello(next_seq=0)  # a fresh actor (empty spool) claiming the same id
    assert not refused.accepted and "already stores seq up to 2 but this actor would start at 0" in refused.reason


def test_actor_restart_continues_numbering_from_its_spool(learner, tmp_path):
    server, _, collector, _ = learner
    link = new_link(server, tmp_path)
    ep = make_episode("a0", 0, 0, 5, np.random.default_rng(5), terminal=False)
    for t in ep:
        link.add(t)
    assert link.close(5)
    link = new_link(server, tmp_path)  # same spool directory
    assert (link.next_seq, link.next_episode_id) == (5, 1)
    ep1 = make_episode("a0", 1, 5, 2, np.random.default_rng(6))
    for t in ep1:
        link.add(t)
    assert link.flush(10)
    link.close(1)
    # episode 0 was never reported by the actor: the learner records it as cut, with its length and return
    cut = [r for r in collector.reports if r.episode_id == 0]
    assert len(cut) == 1 and cut[0].cut and cut[0].length == 5 and not cut[0].success
    assert cut[0].undiscounted_return == pytest.approx(sum(t.reward for t in ep))


def adopting_actor(source, monkeypatch):
    """`Actor.refresh` on a stand-in whose params are the received subsets themselves (no networks to build)."""
    from types import SimpleNamespace

    from q2rl.actor import actor

    monkeypatch.setattr(actor, "apply_parameter_set", lambda template, subsets: subsets)
    stand_in = SimpleNamespace(source=source, pacing=None, params=None, version=0, _adopted=None, template=None)

    def refresh() -> SimpleNamespace:
        actor.Actor.refresh(stand_in)
        return stand_in

    return refresh


@pytest.mark.parametrize("restarted_version", [3, 57])
def test_a_restarted_learner_s_parameters_and_grants_are_adopted_at_once(tmp_path, monkeypatch, restarted_version):
    """A resumed learner numbers its parameter sets from its checkpoint (or from 1), in a new incarnation: an actor
    holding a set of the learner before, of a higher or the same version, takes the new learner's set at once, not
    when the count passes its own, and the actor adopts it although the version number may be the one it has."""
    from q2rl.interfaces import Grants

    port = free_port()
    server, _, _, board = start_learner(tmp_path / "run", f"127.0.0.1:{port}")
    link = new_link(server, tmp_path)
    refresh = adopting_actor(link, monkeypatch)
    board.publish(57, {"policy": {"w": np.zeros(3)}})
    deadline = time.monotonic() + 20
    while link.latest() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert link.latest()[0] == 57 and refresh().version == 57
    server.stop(0)
    server, _, _, board = start_learner(tmp_path / "run", f"127.0.0.1:{port}")  # the restarted learner
    try:
        board.publish_grants(Grants({"a0": 99}, -1))
        board.publish(restarted_version, {"policy": {"w": np.ones(3)}})
        deadline = time.monotonic() + 15  # reconnect backoff (at most 5 s) plus the handshake
        while link.latest()[1]["policy"]["w"][0] != 1.0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert link.latest()[0] == restarted_version and link.latest()[1]["policy"]["w"].tolist() == [1.0] * 3
        assert link.grants() == Grants({"a0": 99}, -1)
        actor = refresh()
        assert actor.version == restarted_version and np.asarray(actor.params["policy"]["w"]).tolist() == [1.0] * 3
    finally:
        link.close(0)
        server.stop(0)


def test_a_config_refusal_names_the_fields_that_differ(tmp_path):
    """The learner sends its config document with a config hash refusal: the actor's error says which fields differ
    and how, instead of two hashes."""
    from q2rl.config import from_dict
    from q2rl.run_config import RunConfig, compatibility_document, compatibility_hash

    ours = from_dict(RunConfig, {"env": {"sim": {"control_hz": 10}}, "agent": {"utd": 4}})
    theirs = from_dict(RunConfig, {"env": {"sim": {"control_hz": 20}}})
    server, *_ = start_learner(tmp_path / "run2", config_hash=compatibility_hash(theirs, "aa"),
                               config_document=compatibility_document(theirs, "aa"))
    link = new_link(server, tmp_path, config_hash=compatibility_hash(ours, "bb"),
                    run_config_document=compatibility_document(ours, "bb"))
    try:
        with pytest.raises(LinkRefused) as refused:
            link.wait_connected(timeout=10)
        assert ('the run config differs from the learner\'s in agent.utd: actor 4, learner 2; bc: actor "bb", '
                'learner "aa"; env.sim.control_hz: actor 10, learner 20 (run config hash mismatch') in str(refused.value)
    finally:
        link.close(0)
        server.stop(0)


def test_parameters_above_the_message_limit_arrive_exactly_and_latest_only(learner, tmp_path):
    server, _, _, board = learner
    link = new_link(server, tmp_path)
    assert link.wait_connected(10) and link.latest() is None
    rng = np.random.default_rng(7)
    big = {"kernel": rng.standard_normal((5_000_000,)).astype(np.float32)}  # 20 MB
    board.publish(1, {"policy": big, "critic": {"q": np.arange(5.0)}, "value": {"v": np.ones(2)}})
    deadline = time.monotonic() + 20
    while link.latest() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    version, params = link.latest()
    assert version == 1 and sorted(params) == ["critic", "policy", "value"]
    np.testing.assert_array_equal(params["policy"]["kernel"], big["kernel"])
    seen = []
    for v in range(2, 12):
        board.publish(v, {"policy": {"w": np.full(3, float(v))}})
    while link.latest()[0] != 11 and time.monotonic() < deadline:
        seen.append(link.latest()[0])
        time.sleep(0.001)
    assert link.latest()[0] == 11 and link.latest()[1]["policy"]["w"].tolist() == [11.0] * 3
    assert seen == sorted(seen)  # never goes back to an older set
    with pytest.raises(ValueError, match="not newer"):
        board.publish(5, {"policy": {}})
    link.close(0)


def test_status_reports_phase_and_links(tmp_path):
    from q2rl.learner.service import ServiceStatus

    server, *_ = start_learner(tmp_path / "run", status_fn=lambda: ServiceStatus("q_estimation", 42, 3.5, 7.0))
    try:
        link = new_link(server, tmp_path, actor_id="robot-1")
        assert link.wait_connected(10)
        deadline = time.monotonic() + 10  # the stream opens just after the handshake
        while not (status := fetch_status(server.address, TOKEN, timeout=5)).actors or not status.actors[0].connected:
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
        assert (status.phase, status.replay_size, status.updates_per_s) == ("q_estimation", 42, 3.5)
        assert [(a.actor_id, a.connected) for a in status.actors] == [("robot-1", True)]
        with pytest.raises(grpc.RpcError) as err:
            fetch_status(server.address, "wrong", timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        link.close(0)
    finally:
        server.stop(0)


@pytest.mark.parametrize("learner", [True], indirect=True)
def test_store_ignores_a_torn_tail_with_a_warning_and_keeps_earlier_records(learner, tmp_path, caplog):
    server, store, collector, _ = learner
    link = new_link(server, tmp_path)
    ep = make_episode("a0", 0, 0, 6, np.random.default_rng(8), images=True, terminal=False)
    for t in ep:
        link.add(t)
    assert link.close(10)
    server.stop(0)
    store.close()
    path = tmp_path / "run" / "episodes" / "a0" / "seg-000000000.rec"
    with open(path, "ab") as f:
        f.write(b"\x10\x27\x00\x00partial")  # a header promising 10000 bytes, then the crash
    with caplog.at_level(logging.WARNING):
        again = EpisodeStore(tmp_path / "run")
    assert "torn tail of 11 bytes after 6 intact records" in caplog.text
    assert again.stored_seq("a0") == 5
    (episode,) = list(again.episodes())
    assert not episode.complete and episode.unlinked == 0
    for a, b in zip(ep, episode.transitions):
        assert_transition_equal(a, b)


def make_certificates(d) -> dict:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate (openssl CLI)."""
    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=q2rl-test-ca")
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN=q2rl-{name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "1", "-extfile", "san.cnf")
    return {n: str(d / n) for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make certificates")
def test_mutual_tls_carries_the_stream_and_keeps_out_clients_without_a_certificate(tmp_path):
    from q2rl.learner.service import LearnerService, ParameterBoard, ServiceAuth, serve
    from q2rl.wire import ClientTls, TlsFiles
    from transport_util import Collector, run_contract

    certs = make_certificates(tmp_path)
    store, collector = EpisodeStore(tmp_path / "run"), Collector()
    service = LearnerService(store, collector.on_transitions, collector.on_episode, ParameterBoard(),
                             ServiceAuth(config_hash=CONFIG_HASH, token=TOKEN), contract=run_contract())
    server = serve("127.0.0.1:0", service, keepalive=FAST_KEEPALIVE,
                   tls=TlsFiles(certs["server.pem"], certs["server.key"], client_ca=certs["ca.pem"]))
    try:
        good = new_link(server, tmp_path, tls=ClientTls(certs["ca.pem"], certs["client.pem"], certs["client.key"]))
        for t in make_episode("a0", 0, 0, 5, np.random.default_rng(9)):
            good.add(t)
        assert good.flush(10) and [t.seq for t in collector.transitions] == list(range(5))
        good.close(0)
        for tls in (ClientTls(certs["ca.pem"]), None):  # no client certificate; no TLS at all
            bad = new_link(server, tmp_path, actor_id="intruder", tls=tls)
            assert not bad.wait_connected(2) and not bad.health().connected
            bad.close(0)
        assert store.stored_seq("intruder") == -1
    finally:
        server.stop(0)


def test_store_log_spans_segments_and_reloads_intact(tmp_path):
    rng = np.random.default_rng(10)
    episodes = [make_episode("a0", e, 10 * e, 10, rng) for e in range(4)]
    store = EpisodeStore(tmp_path / "run", segment_bytes=1024)  # a few transitions per segment

    def append(episode, with_report=True):
        raws = [wire.encode_item_transition(t) for t in episode]
        if with_report:
            raws.append(wire.encode_item_report(report_for(episode), episode[-1].seq))
        for i in range(0, len(raws), 2):  # batches of two; a segment fills up after a few batches
            store.append("a0", [(raw, wire.parse_item(raw)) for raw in raws[i : i + 2]])

    for episode in episodes[:2]:
        append(episode)
    store.close()
    store = EpisodeStore(tmp_path / "run", segment_bytes=1024)  # reopened: appends continue after what is there
    for episode in episodes[2:]:
        append(episode, with_report=False)
    assert len(list((tmp_path / "run" / "episodes" / "a0").glob("seg-*.rec"))) > 4
    assert (store.stored_seq("a0"), store.reported_episode("a0"), store.num_transitions) == (39, 1, 40)
    summary = store.last_episode_summary("a0")
    assert (summary.episode_id, summary.length, summary.terminated, summary.reported) == (3, 10, True, False)
    stored = list(EpisodeStore(tmp_path / "run").episodes())
    assert [(e.episode_id, e.complete, e.report is not None) for e in stored] == [
        (0, True, True), (1, True, True), (2, True, False), (3, True, False)]
    for sent, got in zip([t for ep in episodes for t in ep], [t for e in stored for t in e.transitions]):
        assert_transition_equal(sent, got)


# ------------------------------------------------------------------------------------------ issue #35, part 4


def assert_an_actor_still_works(server, collector, board, tmp_path, actor_id="lab-0"):
    """A real ActorLink connects, its transitions are stored and acknowledged, and it receives parameters."""
    link = new_link(server, tmp_path, actor_id=actor_id)
    try:
        assert link.wait_connected(20), f"the lab's actor could not connect: {link.health()}"
        episode = make_episode(actor_id, 0, 0, 5, np.random.default_rng(11))
        for t in episode:
            link.add(t)
        link.end_episode(report_for(episode))
        assert link.flush(15), link.health()
        assert collector.wait_for(5, 5) and [t.seq for t in collector.transitions][-5:] == list(range(5))
        board.publish(board.version + 1, {"policy": {"w": np.full(3, 7.0)}})
        deadline = time.monotonic() + 15
        while link.latest() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert link.latest() is not None and link.latest()[1]["policy"]["w"].tolist() == [7.0] * 3
    finally:
        link.close(0)


@pytest.mark.parametrize("token", ["", "wrong", TOKEN])
def test_stalled_handshakes_cannot_lock_the_actors_out(tmp_path, token):
    """As many Handshake calls as the server's RPC cap (2 * max_actors + 4 = 24) that send their headers and never
    their request: without the right token they are refused at once, before they hold a worker; with it, each is
    cut when its first message is `first_message_s` late. Either way the lab's actor connects and works."""
    server, _, collector, board = start_learner(tmp_path / "run", max_actors=10, first_message_s=1.0)
    client = RawClient(server.address)
    metadata = [(wire.TOKEN_METADATA_KEY, token)] if token else []
    stalls = [client.stall("Handshake", metadata) for _ in range(24)]
    try:
        if token != TOKEN:
            for future, _ in stalls:  # refused at once: a refusal the actor raises as final, not a retry loop
                reply = pb.HandshakeReply.FromString(future.result(timeout=5))
                assert not reply.accepted and reply.reason.startswith("token rejected"), reply.reason
        assert_an_actor_still_works(server, collector, board, tmp_path)
        if token == TOKEN:
            for future, _ in stalls:
                with pytest.raises(grpc.RpcError) as err:
                    future.result(timeout=5)
                assert err.value.code() == grpc.StatusCode.CANCELLED
    finally:
        for _, gate in stalls:
            gate.set()
        client.channel.close()
        server.stop(0)


def test_one_client_opening_25_streams_holds_one_of_each_and_cannot_lock_the_actors_out(tmp_path):
    """Per session at most one transition stream and one parameter stream: a newer one replaces the older (as a
    new handshake replaces the old session), which the server cancels at once, freeing its worker."""
    server, _, collector, board = start_learner(tmp_path / "run", max_actors=10)
    client = RawClient(server.address)
    session = client.hello("greedy", next_seq=0).session_id
    gates = [threading.Event() for _ in range(25)]
    params = [client.parameters(session) for _ in range(25)]
    sends = [client.send(iter(gate.wait, True), metadata=[(wire.SESSION_METADATA_KEY, session)]) for gate in gates]
    try:
        assert_an_actor_still_works(server, collector, board, tmp_path)
        deadline = time.monotonic() + 10
        while sum(not call.done() for call in params + sends) > 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        for calls in (params, sends):  # one of each still serves (the last the server took), the rest were replaced
            assert [call.code() for call in calls if call.done()] == [grpc.StatusCode.CANCELLED] * 24
            assert sum(not call.done() for call in calls) == 1
    finally:
        for gate in gates:
            gate.set()
        client.channel.close()
        server.stop(0)

