"""Shared helpers of the transport tests: transitions with known contents, a learner on a free port."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np

from q2rl.contract import TransitionContract
from q2rl.interfaces import EpisodeReport, Transition
from q2rl.learner.episode_store import EpisodeStore
from q2rl.learner.service import LearnerService, ParameterBoard, ServiceAuth, serve
from q2rl.wire import Keepalive

CONFIG_HASH = "0123456789abcdef"
TOKEN = "secret-token"
FAST_KEEPALIVE = Keepalive(time_ms=500, timeout_ms=1000, handshake_timeout_ms=1500)  # 1.5 s window
CAMERAS = {"wrist": (128, 128, 3), "front": (128, 128, 3)}  # make_episode(images=True)


def run_contract(images: bool = False, state_dim: int = 12) -> TransitionContract:
    """The contract of make_episode's transitions (with or without its cameras)."""
    return TransitionContract(state_dim=state_dim, cameras=CAMERAS if images else {})


def make_episode(actor_id: str, episode_id: int, first_seq: int, length: int, rng: np.random.Generator,
                 images: bool = False, state_dim: int = 12, terminal: bool = True) -> list[Transition]:
    """A chained episode: each next_obs is the following obs (same objects, as an env loop produces)."""
    def obs():
        o = {"state": rng.standard_normal(state_dim).astype(np.float32)}
        if images:
            o["images"] = {n: rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for n in ("wrist", "front")}
        return o

    out, cur = [], obs()
    for step in range(length):
        nxt = obs()
        last = step == length - 1
        out.append(Transition(
            actor_id=actor_id, episode_id=episode_id, step=step, seq=first_seq + step, obs=cur,
            action=rng.uniform(-1, 1, 7).astype(np.float32), reward=float(rng.random()),
            terminated=bool(last and terminal), truncated=False, next_obs=nxt,
            a_bc=rng.uniform(-1, 1, 7).astype(np.float32), a_rl=rng.uniform(-1, 1, 7).astype(np.float32),
            q_bc=float(rng.standard_normal()), q_rl=float(rng.standard_normal()),
            source=("bc", "rl", "human")[step % 3], param_version=step // 4,
        ))
        cur = nxt
    return out


def report_for(episode: list[Transition]) -> EpisodeReport:
    t = episode[-1]
    return EpisodeReport(actor_id=t.actor_id, episode_id=t.episode_id, length=len(episode), success=t.terminated,
                         undiscounted_return=float(sum(x.reward for x in episode)), bc_share=0.5)


def assert_transition_equal(a: Transition, b: Transition) -> None:
    for f in dataclasses.fields(Transition):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name in ("obs", "next_obs"):
            np.testing.assert_array_equal(x["state"], y["state"])
            assert x["state"].dtype == y["state"].dtype
            assert set(x.get("images", {})) == set(y.get("images", {})), f.name
            for k in x.get("images", {}):
                np.testing.assert_array_equal(x["images"][k], y["images"][k])
        elif isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y)
            assert x.dtype == y.dtype
        else:
            assert x == y, (f.name, x, y)


class Collector:
    """on_transitions / on_episode callbacks that record what the learner received."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.transitions: list[Transition] = []
        self.reports: list[EpisodeReport] = []
        self.cond = threading.Condition(self.lock)

    def on_transitions(self, ts):
        with self.cond:
            self.transitions += ts
            self.cond.notify_all()

    def on_episode(self, r):
        with self.cond:
            self.reports.append(r)
            self.cond.notify_all()

    def wait_for(self, n_transitions: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.transitions) >= n_transitions, timeout)


def start_learner(run_dir, address="127.0.0.1:0", keepalive=FAST_KEEPALIVE, token=TOKEN, max_actors=4,
                  first_message_s=5.0, images=False, config_hash=CONFIG_HASH, config_document="", **kw):
    """A learner service on `address` that takes make_episode's transitions (`images`: with its cameras)."""
    kw.setdefault("contract", run_contract(images))
    store = EpisodeStore(run_dir)
    collector = Collector()
    board = ParameterBoard()
    service = LearnerService(store, collector.on_transitions, collector.on_episode, board,
                             ServiceAuth(config_hash=config_hash, token=token, config_document=config_document), **kw)
    server = serve(address, service, keepalive=keepalive, max_actors=max_actors, first_message_s=first_message_s)
    return server, store, collector, board


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _main(argv: list[str]) -> None:
    """Subprocess roles of the fault tests: `learner RUN_DIR PORT` or `actor ADDRESS SPOOL ACTOR_ID`."""
    import sys
    import time

    if argv[0] == "learner":
        server, *_ = start_learner(argv[1], f"127.0.0.1:{argv[2]}")
        print("READY", server.bound_port, flush=True)
        while True:
            time.sleep(1)
    elif argv[0] == "actor":
        from q2rl.actor.link import ActorLink

        link = ActorLink(argv[1], argv[3], CONFIG_HASH, TOKEN, argv[2], keepalive=FAST_KEEPALIVE)
        link.wait_connected(10)
        print("READY", flush=True)
        rng = np.random.default_rng(0)
        while True:
            episode = make_episode(argv[3], link.next_episode_id, link.next_seq, 50, rng)
            for t in episode:
                link.add(t)
                time.sleep(0.002)
            link.end_episode(report_for(episode))
    else:
        sys.exit(f"unknown role {argv[0]!r}")


if __name__ == "__main__":
    import sys

    _main(sys.argv[1:])
