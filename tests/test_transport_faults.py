"""Faults over real loopback gRPC: learner crashes, silent peers, torn writes. Nothing may be lost or doubled."""

from __future__ import annotations

import collections
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from q2rl.actor.link import ActorLink
from q2rl.learner.episode_store import EpisodeStore
from transport_util import CONFIG_HASH, FAST_KEEPALIVE, TOKEN, free_port, make_episode, report_for, start_learner

UTIL = str(Path(__file__).with_name("transport_util.py"))
CONTROL_PERIOD_S = 0.1  # 10 Hz on the robot


class Producer(threading.Thread):
    """A control loop feeding the link; records how long every add()/end_episode() took."""

    def __init__(self, link: ActorLink, n_episodes: int, length: int, period_s: float) -> None:
        super().__init__(daemon=True)
        self.link, self.n_episodes, self.length, self.period_s = link, n_episodes, length, period_s
        self.durations: list[float] = []
        self.sent = 0

    def run(self) -> None:
        rng = np.random.default_rng(0)
        for _ in range(self.n_episodes):
            ep = make_episode(self.link.actor_id, self.link.next_episode_id, self.link.next_seq, self.length, rng)
            for t in ep:
                start = time.perf_counter()
                self.link.add(t)
                self.durations.append(time.perf_counter() - start)
                self.sent += 1
                time.sleep(self.period_s)
            start = time.perf_counter()
            self.link.end_episode(report_for(ep))
            self.durations.append(time.perf_counter() - start)


def stored_seq_counts(run_dir) -> collections.Counter:
    store = EpisodeStore(run_dir)
    counts = collections.Counter(t.seq for t in store.transitions())
    store.close()
    return counts


def wait_until(predicate, timeout: float, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def test_learner_stopped_abruptly_mid_stream_loses_and_doubles_nothing(tmp_path):
    run, port = tmp_path / "run", free_port()
    server, _, first, _ = start_learner(run, f"127.0.0.1:{port}")
    link = ActorLink(f"127.0.0.1:{port}", "a0", CONFIG_HASH, TOKEN, tmp_path / "spool", keepalive=FAST_KEEPALIVE)
    producer = Producer(link, n_episodes=30, length=40, period_s=0.0005)
    producer.start()
    assert wait_until(lambda: len(first.transitions) > 300, 20)
    server.stop(0)  # no grace: in-flight streams are cut
    time.sleep(0.3)
    server, _, second, _ = start_learner(run, f"127.0.0.1:{port}")
    producer.join(60)
    assert link.flush(30)
    link.close(1)
    server.stop(0)
    n = 30 * 40
    assert producer.sent == n
    counts = stored_seq_counts(run)
    assert sorted(counts) == list(range(n)) and set(counts.values()) == {1}
    delivered = collections.Counter(t.seq for t in first.transitions + second.transitions)
    assert sorted(delivered) == list(range(n)) and set(delivered.values()) == {1}
    assert sorted(r.episode_id for r in first.reports + second.reports) == list(range(30))
    assert max(producer.durations) < CONTROL_PERIOD_S


def start_learner_process(run, port) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, UTIL, "learner", str(run), str(port)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("READY"), "learner subprocess did not start"
    return proc


def test_learner_sigkilled_and_restarted_loses_and_doubles_nothing_and_never_stalls_the_actor(tmp_path):
    run, port = tmp_path / "run", free_port()
    learner = start_learner_process(run, port)
    link = ActorLink(f"127.0.0.1:{port}", "a0", CONFIG_HASH, TOKEN, tmp_path / "spool", keepalive=FAST_KEEPALIVE)
    producer = Producer(link, n_episodes=20, length=50, period_s=0.005)
    try:
        producer.start()
        for _ in range(2):
            assert wait_until(lambda: link.health().connected and link.health().last_ack_age_s < 0.5, 20)
            time.sleep(0.2)
            assert producer.is_alive(), "make the producer run longer: the kill must land mid-stream"
            learner.send_signal(signal.SIGKILL)
            learner.wait(10)
            assert wait_until(lambda: not link.health().connected, 5)
            time.sleep(0.3)  # the actor keeps running with the learner down
            learner = start_learner_process(run, port)
        producer.join(60)
        assert link.flush(30)
        assert wait_until(lambda: link.health().connected, 10)
        health = link.health()
        assert health.reconnects >= 2 and health.unacked == 0  # more if a starved machine missed a ping
    finally:
        link.close(1)
        learner.send_signal(signal.SIGKILL)
        learner.wait(10)
    counts = stored_seq_counts(run)
    assert sorted(counts) == list(range(20 * 50)) and set(counts.values()) == {1}
    assert max(producer.durations) < CONTROL_PERIOD_S


def test_a_learner_that_stops_answering_is_detected_by_the_actor_and_nothing_is_lost(tmp_path):
    run, port = tmp_path / "run", free_port()
    learner = start_learner_process(run, port)
    link = ActorLink(f"127.0.0.1:{port}", "a0", CONFIG_HASH, TOKEN, tmp_path / "spool", keepalive=FAST_KEEPALIVE)
    producer = Producer(link, n_episodes=6, length=50, period_s=0.005)
    try:
        producer.start()
        assert wait_until(lambda: link.health().connected and link.health().unacked < 20, 20)
        learner.send_signal(signal.SIGSTOP)  # alive for TCP, silent for HTTP/2
        stopped = time.monotonic()
        assert wait_until(lambda: not link.health().connected, 10)
        window = (FAST_KEEPALIVE.time_ms + FAST_KEEPALIVE.timeout_ms) / 1000
        assert time.monotonic() - stopped < window + 2.0
        learner.send_signal(signal.SIGCONT)
        producer.join(60)
        assert link.flush(30) and link.health().reconnects >= 1
    finally:
        link.close(1)
        learner.send_signal(signal.SIGKILL)
        learner.wait(10)
    counts = stored_seq_counts(run)
    assert sorted(counts) == list(range(6 * 50)) and set(counts.values()) == {1}
    assert max(producer.durations) < CONTROL_PERIOD_S


def test_a_client_that_stops_answering_is_cut_within_the_keepalive_window_and_frees_its_workers(tmp_path):
    lost = []
    server, _, collector, _ = start_learner(tmp_path / "run", max_actors=1, on_actor_lost=lost.append)  # 6 slots
    client = subprocess.Popen([sys.executable, UTIL, "actor", server.address, str(tmp_path / "spool-x"), "frozen"],
                              stdout=subprocess.PIPE, text=True)
    links = []
    try:
        assert client.stdout.readline().startswith("READY")
        actors = server.service._actors
        assert wait_until(lambda: "frozen" in actors and actors["frozen"].connected and len(collector.transitions) > 20, 20)
        client.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        assert wait_until(lambda: not actors["frozen"].connected, 10)
        detected_after = time.monotonic() - stopped
        window = (FAST_KEEPALIVE.time_ms + FAST_KEEPALIVE.timeout_ms) / 1000
        assert detected_after < window + 2.0, detected_after
        assert wait_until(lambda: lost == ["frozen"], 2)  # the learner hears about it (to cut the open episode)
        # its two stream slots are free again: three more actors (six streams) fit
        for i in range(3):
            links.append(ActorLink(server.address, f"b{i}", CONFIG_HASH, TOKEN, tmp_path / f"spool-b{i}",
                                   keepalive=FAST_KEEPALIVE))
        rng = np.random.default_rng(1)
        for link in links:
            assert link.wait_connected(10)
            for t in make_episode(link.actor_id, 0, 0, 10, rng):
                link.add(t)
        assert all(link.flush(10) for link in links)
    finally:
        for link in links:
            link.close(0)
        client.send_signal(signal.SIGKILL)
        client.wait(10)
        server.stop(0)


def test_raw_connections_that_never_speak_are_closed_and_do_not_block_real_actors(tmp_path):
    server, _, collector, _ = start_learner(tmp_path / "run", max_actors=1)
    opened = time.monotonic()
    silent = [socket.create_connection(("127.0.0.1", server.bound_port)) for _ in range(12)]
    try:
        link = ActorLink(server.address, "a0", CONFIG_HASH, TOKEN, tmp_path / "spool", keepalive=FAST_KEEPALIVE)
        for t in make_episode("a0", 0, 0, 20, np.random.default_rng(2)):
            link.add(t)
        assert link.flush(10) and len(collector.transitions) == 20
        link.close(0)
        for s in silent:
            s.settimeout(10)  # a socket.timeout here fails the test: the server kept the connection
            try:
                while s.recv(1024):  # the server's SETTINGS frame may come first; then it hangs up
                    pass
            except ConnectionResetError:
                pass
        closed_after = time.monotonic() - opened
        assert closed_after < FAST_KEEPALIVE.handshake_timeout_ms / 1000 + 2.0, closed_after
    finally:
        for s in silent:
            s.close()
        server.stop(0)
