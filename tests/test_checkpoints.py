"""Checkpoints that go wrong (issue #35, part 6): `q2rl learner --resume` says in one line what happened and what
to do, keeps the last learner.keep_checkpoints states and falls back to the newest intact one, and never resumes
silently from the episode files when the learned state is gone."""

from __future__ import annotations

import argparse
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
from process_util import tiny_bc_policy, tiny_run_config

from q2rl import wire
from q2rl.core.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from transport_util import make_episode, report_for


@pytest.fixture(scope="module")
def bc_checkpoint(tmp_path_factory):
    return tiny_bc_policy(tmp_path_factory.getbasetemp() / "q2rl-tiny-bc")


@pytest.fixture
def run(tmp_path, bc_checkpoint):
    """A fresh run directory (config.yaml only), its config and pi_BC's state size."""
    from q2rl.core.checkpoint import load_bc_policy
    from q2rl.learner.cli import prepare_run

    args = argparse.Namespace(config=str(tiny_run_config(tmp_path, bc_checkpoint)), resume=None,
                              overrides=["learner.run_name=r"])
    cfg, run_dir, _ = prepare_run(args)
    dim = int(load_bc_policy(bc_checkpoint).normalizer.state_mean.shape[-1])
    return cfg, run_dir, dim


def learner_cli(monkeypatch, capsys, *argv: str) -> tuple[int, str]:
    """`q2rl learner ARGV` in this process, told to stop at once (a resume that gets going serves no loop turn and
    writes its final checkpoint); returns the exit code and stderr."""
    from q2rl.learner import cli

    def stopped() -> threading.Event:
        event = threading.Event()
        event.set()
        return event

    monkeypatch.setattr(cli, "stop_on_signals", stopped)
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def save_learner_state(cfg, run_dir: Path, dim: int, *updates: int) -> None:
    from q2rl.core.checkpoint import load_bc_policy
    from q2rl.learner.learner import Learner

    learner = Learner(cfg, run_dir, load_bc_policy(cfg.bc.checkpoint), dim)
    for n in updates:
        learner.book.updates = n
        learner.save()


def store_episodes(run_dir: Path, dim: int, episodes: int = 2, length: int = 5) -> None:
    from q2rl.learner.episode_store import EpisodeStore

    store, rng = EpisodeStore(run_dir), np.random.default_rng(0)
    for e in range(episodes):
        episode = make_episode("a0", e, e * length, length, rng, state_dim=dim)
        raws = [wire.encode_item_transition(t) for t in episode] + [wire.encode_item_report(report_for(episode),
                                                                                            episode[-1].seq)]
        store.append("a0", [(raw, wire.parse_item(raw)) for raw in raws])
    store.close()


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("q2rl learner: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_save_keeps_the_last_k_states_and_learner_ckpt_is_the_newest(tmp_path):
    from q2rl.core.checkpoint import kept_checkpoints

    path = tmp_path / "checkpoint" / "learner.ckpt"
    for n in (0, 10, 20, 30):
        save_checkpoint(path, {"w": np.full(3, float(n))}, {"n": n}, keep=3, number=n)
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "learner-000000010.ckpt", "learner-000000020.ckpt", "learner-000000030.ckpt", "learner.ckpt"]
    assert [p.name for p in kept_checkpoints(path)] == [
        "learner-000000030.ckpt", "learner-000000020.ckpt", "learner-000000010.ckpt"]  # newest first
    assert load_checkpoint(path).metadata == {"n": 30} and load_checkpoint(path).state["w"].tolist() == [30.0] * 3
    save_checkpoint(path, {"w": np.zeros(1)}, {"n": 31}, keep=3, number=31)
    assert [p.name for p in kept_checkpoints(path)][-1] == "learner-000000020.ckpt"  # the oldest went


def test_a_truncated_checkpoint_with_no_earlier_one_is_a_one_line_error_that_says_what_to_do(run, monkeypatch,
                                                                                            capsys):
    cfg, run_dir, dim = run
    save_learner_state(cfg, run_dir, dim, 0)
    last = run_dir / "checkpoint" / "learner.ckpt"
    last.write_bytes(last.read_bytes()[:-100])  # in place: whatever else names this file is cut short too
    code, err = learner_cli(monkeypatch, capsys, "--resume", str(run_dir))
    line = one_line_error(err)
    assert code == 2 and "learner.ckpt: truncated" in line
    assert "use an earlier checkpoint" not in line  # there is none
    assert f"q2rl learner --resume {run_dir} --fresh-state" in line


def test_resume_falls_back_to_the_newest_intact_checkpoint_and_says_which(run, monkeypatch, capsys, caplog):
    cfg, run_dir, dim = run
    save_learner_state(cfg, run_dir, dim, 10, 20)
    last = run_dir / "checkpoint" / "learner.ckpt"
    last.write_bytes(last.read_bytes()[:-100])  # learner.ckpt and learner-000000020.ckpt: one file, two names
    (run_dir / "checkpoint" / "best.ckpt").write_bytes(b"Q2RLCKPT garbage")
    with caplog.at_level(logging.WARNING):
        code, err = learner_cli(monkeypatch, capsys, "--resume", str(run_dir))
    assert code == 0, err
    assert "learner-000000010.ckpt" in caplog.text and "newest intact" in caplog.text, caplog.text
    assert "best.ckpt" in caplog.text
    assert read_metadata(last)["book"]["updates"] == 10  # resumed from it, and a fresh learner.ckpt written


def test_a_lost_learner_checkpoint_with_stored_episodes_needs_fresh_state(run, monkeypatch, capsys):
    cfg, run_dir, dim = run
    store_episodes(run_dir, dim)
    code, err = learner_cli(monkeypatch, capsys, "--resume", str(run_dir))
    line = one_line_error(err)
    assert code == 2 and "learner.ckpt is missing" in line and "10 transitions" in line and "lost" in line
    assert f"q2rl learner --resume {run_dir} --fresh-state" in line
    code, err = learner_cli(monkeypatch, capsys, "--resume", str(run_dir), "--fresh-state")
    assert code == 0, err
    book = read_metadata(run_dir / "checkpoint" / "learner.ckpt")["book"]
    assert (book["env_steps"], book["updates"]) == (10, 0)  # the episodes are back in; the learned state starts over


def test_an_episode_file_with_a_damaged_header_is_a_one_line_error_naming_it(run, monkeypatch, capsys):
    cfg, run_dir, dim = run
    store_episodes(run_dir, dim)
    segment = run_dir / "episodes" / "a0" / "seg-000000000.rec"
    segment.write_bytes(b"garbage!" + segment.read_bytes()[8:])
    code, err = learner_cli(monkeypatch, capsys, "--resume", str(run_dir))
    line = one_line_error(err)
    assert code == 2 and str(segment) in line and "move it aside" in line
