"""`q2rl export` and `q2rl deploy` (issue #32): a policy file exported from a tiny real run (the session's Actor and
Learner in one process), run by the real `q2rl deploy` process through a pseudo-terminal, the operator's keys
marking the outcomes; the recorded HDF5 and the reported success agree; a mismatched environment is refused."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import struct
import subprocess
import termios
from pathlib import Path

import numpy as np
import pytest
import yaml
from process_util import REPO, child_env, q2rl, tiny_bc_policy, tiny_run_config
from test_console import read_until


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A run directory trained for a few online steps, with learner.ckpt and best.ckpt."""
    from q2rl.core.checkpoint import load_bc_policy
    from q2rl.learner.cli import prepare_run
    from q2rl.local import LocalRun, LocalSchedule

    base = tmp_path_factory.mktemp("deploy")
    bc = tiny_bc_policy(tmp_path_factory.getbasetemp() / "q2rl-tiny-bc")
    config = tiny_run_config(base, bc, learner={"eval_window": 2}, actor={"pace": "learner", "eval_every_episodes": 0})
    cfg, run_dir, _ = prepare_run(argparse.Namespace(config=str(config), resume=None, overrides=["learner.run_name=r"]))
    run = LocalRun(cfg, load_bc_policy(bc), run_dir, log=lambda s: None)
    run.run(LocalSchedule(online_steps=30, eval_every=30))
    run.learner.save_best()
    run.learner.save()
    return run_dir


@pytest.fixture(scope="module")
def policy_file(tiny_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("policy") / "pick.q2rl"
    # from another working directory: the run directory is all it needs
    proc = subprocess.run(q2rl("export", str(tiny_run), "--checkpoint", "last", "--out", str(out)),
                          capture_output=True, text=True, env=child_env(), cwd=out.parent, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wrote" in proc.stdout and "trained online" in proc.stdout
    return out


def test_the_exported_file_is_self_contained_and_pickle_free(policy_file, tiny_run):
    from q2rl.actor.acting import ActingPolicy
    from q2rl.core.checkpoint import load_checkpoint, read_metadata

    meta = read_metadata(policy_file)
    assert meta["kind"] == "q2rl_policy" and meta["online"]
    assert meta["contract"]["action_dim"] == 7 and meta["contract"]["cameras"] == {}
    assert meta["bc"]["policy"]["kind"] and meta["agent"]["algo"] == "q2rl" and meta["env"]["backend"] == "sim"
    p = meta["provenance"]
    assert p["run_dir"] == str(tiny_run.resolve()) and p["checkpoint"] == "last" and p["updates"] > 0
    params = load_checkpoint(policy_file).state["params"]
    assert {"actor", "encoder", "critic", "value", "value_stats", "normalizer", "bc"} <= set(params)
    assert "actor_opt" not in load_checkpoint(policy_file).state  # no optimiser state
    assert b"pickle" not in policy_file.read_bytes()[:8] and policy_file.read_bytes()[:8] == b"Q2RLCKPT"
    loaded = ActingPolicy.load(policy_file)
    assert loaded.contract_differences(meta["contract"]["state_dim"], {}) == []


def _pty(columns: int = 80) -> tuple[int, int]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    return master, slave


@pytest.mark.timeout(120)
def test_deploy_in_sim_through_a_terminal_keys_mark_outcomes_and_every_episode_is_recorded(policy_file, tmp_path):
    from q2rl.demos.hdf5 import read_demos

    out = tmp_path / "deploy.hdf5"
    master, slave = _pty(80)
    proc = subprocess.Popen(q2rl("deploy", str(policy_file), "--episodes", "5", "--record", str(out)),
                            stdin=slave, stdout=slave, stderr=slave, env=child_env(), cwd=tmp_path, close_fds=True)
    try:
        seen = read_until(master, b"[eval] ep 0 step", 60)  # compiled, the first episode under way at the control rate
        assert b"keys: s success" in seen and b"e evaluation" not in seen  # deploy's keys only
        os.write(master, b"s")
        seen += read_until(master, b"episode 0: success")
        os.write(master, b"f")
        seen += read_until(master, b"episode 1: failure")
        seen += read_until(master, b"[eval] ep 2 step")
        os.write(master, b"q")  # the third episode is cut: recorded, not counted
        seen += read_until(master, b"q2rl deploy: success")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        os.close(slave)
    text = seen.decode(errors="replace")
    assert "1/2 = 50% (95% CI 9-91%)" in text
    # every status line the console drew fits the 80-column terminal
    status = [line.replace("\x1b[2K", "") for line in text.replace("\r", "\n").split("\n") if "[eval] ep" in line]
    assert status and all(len(line) < 80 for line in status), status
    result = json.loads(out.with_suffix(".json").read_text())
    assert (result["episodes"], result["successes"], result["cut_episodes"]) == (2, 1, 1)
    assert result["ci95"] == pytest.approx([0.0945, 0.9055], abs=1e-3)
    demos = read_demos(out, load_next_obs=True)
    assert len(demos) == 3  # the cut one too, marked
    assert [e.success for e in demos.episodes] == [True, False, False]
    import h5py

    with h5py.File(out, "r") as f:
        assert [bool(f["data"][f"demo_{i}"].attrs["cut"]) for i in range(3)] == [False, False, True]
    first = demos.episodes[0]
    assert first.rewards[-1] == 1.0 and first.dones[-1] and not first.dones[:-1].any()
    assert first.actions.shape[1] == 7 and np.isfinite(first.actions).all()
    assert len(demos.episodes[1]) == result["per_episode"][1]["length"]


def test_deploy_refuses_an_environment_that_breaks_the_contract_naming_each_difference(policy_file, tmp_path):
    config = tmp_path / "other.yaml"
    config.write_text(yaml.safe_dump({"env": {"backend": "sim", "sim": {
        "task": "pick_cube", "privileged_state": False, "cameras": ["wrist"], "image_size": 32}}}))
    proc = subprocess.run(q2rl("deploy", str(policy_file), "--config", str(config), "--episodes", "1",
                               "--record", str(tmp_path / "x.hdf5")),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, env=child_env(), cwd=REPO,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr
    assert "does not fit this environment" in err
    assert "state size: the policy reads" in err and "the environment gives" in err
    assert "cameras: the environment gives wrist, which the policy was not trained on" in err
    assert not (tmp_path / "x.hdf5").exists()


def test_the_final_evaluation_confirms_the_best_candidate_on_fresh_episodes_and_export_uses_it(tiny_run, tmp_path):
    """What a sim session runs at its end: every kept candidate and the last checkpoint on the same fresh episodes;
    best.ckpt then names the winner, best_eval.json says how, and `q2rl export --checkpoint best` exports it."""
    from q2rl.core.checkpoint import read_metadata

    ckpt = tiny_run / "checkpoint"
    kept = sorted(p.name for p in ckpt.glob("best-*.ckpt"))
    assert 1 <= len(kept) <= 3
    proc = subprocess.run(q2rl("actor", "--config", str(tiny_run / "config.yaml"), "--evaluate", str(tiny_run),
                               "--checkpoint", "candidates", "--episodes", "2"),
                          capture_output=True, text=True, env=child_env(), cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = json.loads((tiny_run / "best_eval.json").read_text())
    assert best["checkpoint"] == "best" and best["episodes"] == 2 and "Wilson" in best["how"]
    files = [c["file"] for c in best["candidates"]]
    assert sorted(Path(f).name for f in files) == sorted(kept + ["learner.ckpt"])
    chosen = [c for c in best["candidates"] if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["file"] == best["chosen_file"]
    assert chosen[0]["fresh"]["successes"] == max(c["fresh"]["successes"] for c in best["candidates"])
    for c in best["candidates"]:
        assert c["fresh"]["episodes"] == 2 and len(c["fresh"]["ci95"]) == 2
        assert (c["window"] is None) == c["file"].endswith("learner.ckpt")
        if c["window"]:
            assert 0 <= c["window"]["lcb"] <= c["window"]["success_rate"]
    assert (ckpt / "best.ckpt").samefile(tiny_run / best["chosen_file"])
    last = json.loads((tiny_run / "final_eval.json").read_text())
    assert last["checkpoint"] == "last" and last["episodes"] == 2

    out = tmp_path / "best.q2rl"
    proc = subprocess.run(q2rl("export", str(tiny_run), "--out", str(out)), capture_output=True, text=True,
                          env=child_env(), cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    provenance = read_metadata(out)["provenance"]
    assert provenance["checkpoint"] == "best" and provenance["fresh_evaluation"] == best
    assert provenance["updates"] == read_metadata(tiny_run / best["chosen_file"])["book"]["updates"]
    # one candidate by its file (to compare candidates on the robot): its own window and fresh result
    first = next(c for c in best["candidates"] if c["window"])
    proc = subprocess.run(q2rl("export", str(tiny_run), "--checkpoint", first["file"], "--out", str(tmp_path / "c.q2rl")),
                          capture_output=True, text=True, env=child_env(), cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    provenance = read_metadata(tmp_path / "c.q2rl")["provenance"]
    assert provenance["chosen_on"]["env_steps"] == first["window"]["env_steps"]
    assert provenance["fresh_evaluation"]["fresh"] == first["fresh"]


def test_deploy_refuses_a_robot_config_that_breaks_the_contract_before_connecting(policy_file, tmp_path):
    """No robot here: the refusal comes from the config alone, before FrankaEnv would connect or the console
    would ask for a terminal."""
    proc = subprocess.run(q2rl("deploy", str(policy_file), "--config", "configs/real/peg_insertion.yaml",
                               "--record", str(tmp_path / "x.hdf5")),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, env=child_env(), cwd=REPO,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "state size: the policy reads" in proc.stderr and "cameras: the environment gives front, wrist" in proc.stderr
    assert "not a terminal" not in proc.stderr and not (tmp_path / "x.hdf5").exists()
