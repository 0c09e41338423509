"""The metrics history's writer and reader (TensorBoard event files), and the episode store's read-only mode that
`q2rl report` and `q2rl episodes export` read a live run with."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
from transport_util import make_episode, report_for

from q2rl import wire
from q2rl.learner.episode_store import EpisodeStore
from q2rl.metrics import LearnerMetrics, ScalarWriter, event_files, learner_dir, read_scalars
from q2rl.progress import EvalPoint, LearnerStatus


def test_scalars_skip_what_cannot_be_drawn_and_a_second_writer_continues_the_curves(tmp_path):
    first = ScalarWriter(tmp_path / "learner")
    assert first.scalars(10, {"loss": 1.5, "q": None, "nan": math.nan, "inf": math.inf, "flag": True}) == 2
    assert not list((tmp_path / "other").glob("*"))  # nothing is created before the first write
    first.scalars(20, {"loss": 1.0})
    first.close()
    second = ScalarWriter(tmp_path / "learner")  # a resumed process: a file of its own in the same directory
    second.scalars(30, {"loss": 0.5})
    second.close()
    assert len(event_files(tmp_path / "learner")) == 2
    scalars = read_scalars(tmp_path / "learner")
    assert [(p.step, p.value) for p in scalars["loss"]] == [(10, 1.5), (20, 1.0), (30, 0.5)]
    assert [p.value for p in scalars["flag"]] == [1.0]
    assert set(scalars) == {"loss", "flag"}


def test_the_reader_stops_at_a_torn_last_record(tmp_path):
    writer = ScalarWriter(tmp_path)
    for step in range(5):
        writer.scalars(step, {"x": float(step)})
    writer.close()
    path = event_files(tmp_path)[0]
    data = path.read_bytes()
    path.write_bytes(data[:-7])  # the last record cut mid-write, as a live writer's file may be read
    assert [p.step for p in read_scalars(tmp_path)["x"]] == [0, 1, 2, 3]


def test_learner_metrics_log_each_eval_window_once_at_its_own_steps(tmp_path):
    curve = [EvalPoint(100, 0.5, 10, updates=0, eval_bc_share=1.0), EvalPoint(300, 0.8, 10, updates=150)]
    metrics = LearnerMetrics(tmp_path, utd_target=4, logged_eval_points=1)  # a resumed run logged the first
    status = LearnerStatus(phase="online", env_steps=350, episodes=3, updates=200, utd_measured=3.9,
                           learning={"critic_loss": 0.2, "q_mean": None}, eval_curve=curve)
    metrics.status(status, now=0.0)
    metrics.status(LearnerStatus(phase="online", env_steps=400, eval_curve=curve), now=2.0)
    metrics.close()
    scalars = read_scalars(learner_dir(tmp_path))
    assert [(p.step, p.value) for p in scalars["success/eval"]] == [(300, pytest.approx(0.8))]
    assert [p.value for p in scalars["rate/env_steps_per_s"]] == [25.0]  # (400 - 350) / 2 s
    assert [p.value for p in scalars["utd/target"]] == [4.0, 4.0]
    assert "learning/q_mean" not in scalars and [p.step for p in scalars["learning/critic_loss"]] == [350]


def test_a_read_only_store_reads_a_live_log_and_never_cuts_or_creates_anything(tmp_path):
    run = tmp_path / "run"
    store = EpisodeStore(run)
    rng = np.random.default_rng(0)
    episode = make_episode("a", 0, 0, 5, rng, images=True)
    items = [wire.encode_item_transition(t, omit_next_images=i < 4) for i, t in enumerate(episode)]
    items.append(wire.encode_item_report(report_for(episode), after_seq=4))
    store.append("a", [(raw, wire.parse_item(raw)) for raw in items])
    open_episode = make_episode("a", 1, 5, 3, rng, terminal=False)  # one the learner is still receiving
    store.append("a", [(raw, wire.parse_item(raw)) for raw in map(wire.encode_item_transition, open_episode)])
    segment = next((run / "episodes" / "a").glob("seg-*.rec"))
    with open(segment, "ab") as f:
        f.write(b"\x40\x00\x00\x00 a record being written")
    digest = hashlib.sha256(segment.read_bytes()).hexdigest()

    reader = EpisodeStore(run, read_only=True)
    episodes = list(reader.episodes())
    assert [(ep.episode_id, ep.complete, len(ep.transitions)) for ep in episodes] == [(0, True, 5), (1, False, 3)]
    np.testing.assert_array_equal(episodes[0].transitions[2].next_obs["images"]["front"],
                                  episode[3].obs["images"]["front"])
    assert reader.segment_paths() == [segment]
    assert hashlib.sha256(segment.read_bytes()).hexdigest() == digest  # the torn tail is still there
    with pytest.raises(RuntimeError, match="read-only"):
        reader.append("a", [])
    with pytest.raises(RuntimeError, match="read-only"):
        reader.stored_seq("a")
    assert list(EpisodeStore(tmp_path / "nothing", read_only=True).episodes()) == []
    assert not (tmp_path / "nothing").exists()
    store.close()
