"""A run directory stands alone (issue #32): it holds its pi_BC (and the demos a demo buffer samples) under RUN/bc/,
config.yaml names them relative to the run directory, and a run moved elsewhere is evaluated and exported from any
working directory."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from process_util import child_env, q2rl, tiny_bc_policy, tiny_run_config


def test_a_relative_input_is_looked_for_in_the_run_directory_first(tmp_path, monkeypatch):
    from q2rl.run_dir import find_run_input

    run, elsewhere = tmp_path / "run", tmp_path / "cwd"
    (run / "bc").mkdir(parents=True)
    (elsewhere / "bc").mkdir(parents=True)
    (run / "bc" / "policy.ckpt").write_bytes(b"run's")
    (elsewhere / "bc" / "policy.ckpt").write_bytes(b"cwd's")
    monkeypatch.chdir(elsewhere)
    assert find_run_input("bc/policy.ckpt", run) == run / "bc" / "policy.ckpt"
    (run / "bc" / "policy.ckpt").unlink()
    assert find_run_input("bc/policy.ckpt", run) == Path("bc/policy.ckpt")  # an older run: as q2rl ran it
    assert find_run_input("nowhere.ckpt", run) is None


@pytest.mark.parametrize("use_demos", [True, False])
def test_a_new_run_keeps_a_copy_of_its_bc_policy_its_eval_and_the_demos_it_samples(tmp_path, use_demos):
    from q2rl.config import load_config
    from q2rl.run_config import RunConfig
    from q2rl.run_dir import keep_run_inputs

    policy = tmp_path / "bc" / "pick"
    policy.mkdir(parents=True)
    (policy / "policy.ckpt").write_bytes(b"weights")
    (policy / "eval.json").write_text(json.dumps({"success_rate": 0.5, "episodes": 4}))
    demos = tmp_path / "demos.hdf5"
    demos.write_bytes(b"demos")
    cfg = load_config(RunConfig, None, [f"bc.checkpoint={policy}", f"bc.demos={demos}",
                                        f"agent.use_demos={str(use_demos).lower()}"])
    run = tmp_path / "run"
    run.mkdir()
    kept = keep_run_inputs(cfg, run)
    assert kept.bc.checkpoint == "bc/policy.ckpt"
    assert (run / "bc" / "policy.ckpt").read_bytes() == b"weights"
    assert json.loads((run / "bc" / "eval.json").read_text())["success_rate"] == 0.5
    if use_demos:
        assert kept.bc.demos == "bc/demos.hdf5" and (run / "bc" / "demos.hdf5").read_bytes() == b"demos"
    else:  # the demos are then only a note of what pi_BC was trained on: not copied
        assert kept.bc.demos == str(demos) and not (run / "bc" / "demos.hdf5").exists()


@pytest.mark.timeout(900)
def test_a_run_moved_elsewhere_is_evaluated_and_exported_from_another_directory(tmp_path, tmp_path_factory):
    from q2rl.core.checkpoint import load_bc_policy
    from q2rl.learner.cli import prepare_run
    from q2rl.local import LocalRun, LocalSchedule

    bc = tiny_bc_policy(tmp_path_factory.getbasetemp() / "q2rl-tiny-bc")
    config = tiny_run_config(tmp_path, bc, learner={"eval_window": 2},
                             actor={"pace": "learner", "eval_every_episodes": 0})
    cfg, run_dir, _ = prepare_run(argparse.Namespace(config=str(config), resume=None, overrides=["learner.run_name=r"]))
    written = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert written["bc"]["checkpoint"] == "bc/policy.ckpt"
    assert (run_dir / "bc" / "policy.ckpt").read_bytes() == (Path(bc) / "policy.ckpt").read_bytes()
    run = LocalRun(cfg, load_bc_policy(cfg.bc.checkpoint), run_dir, log=lambda s: None)
    run.run(LocalSchedule(online_steps=20, eval_every=20))
    run.learner.save()

    moved = tmp_path / "elsewhere" / "the-run"
    moved.parent.mkdir()
    shutil.move(str(run_dir), moved)
    cwd = tmp_path / "somewhere-else"
    cwd.mkdir()
    proc = subprocess.run(q2rl("actor", "--config", str(moved / "config.yaml"), "--evaluate", str(moved),
                               "--episodes", "1", "actor.console=none"),
                          capture_output=True, text=True, env=child_env(), cwd=cwd, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (moved / "final_eval.json").is_file()
    out = cwd / "pick.q2rl"
    proc = subprocess.run(q2rl("export", str(moved), "--checkpoint", "last", "--out", str(out)),
                          capture_output=True, text=True, env=child_env(), cwd=cwd, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.is_file()


def test_a_missing_bc_policy_is_refused_before_the_run_directory_is_made(tmp_path):
    from q2rl.config import ConfigError
    from q2rl.learner.cli import prepare_run

    config = tiny_run_config(tmp_path, str(tmp_path / "no-such-policy"))
    with pytest.raises(ConfigError, match="bc.checkpoint: .*no-such-policy is not a BC policy"):
        prepare_run(argparse.Namespace(config=str(config), resume=None, overrides=["learner.run_name=r"]))
    assert not (tmp_path / "runs" / "r").exists()
