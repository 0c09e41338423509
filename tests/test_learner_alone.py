"""A learner started alone (as on the GPU box) is as observable as a session (issue #32): periodic status lines on
stderr and in RUN/learner.log (the session's format), and summary.json with the eval curve when it stops (Ctrl-C),
written by the session's own summary writer."""

from __future__ import annotations


import pytest
from process_util import (free_port, kill_left, q2rl, read_json, start, stop_in_order, tiny_bc_policy, tiny_run_config,
                          wait_for)


@pytest.fixture(scope="module")
def bc_checkpoint(tmp_path_factory):
    return tiny_bc_policy(tmp_path_factory.getbasetemp() / "q2rl-tiny-bc")


@pytest.mark.timeout(180)
def test_a_learner_alone_prints_status_lines_and_writes_summary_json_on_ctrl_c(tmp_path, bc_checkpoint):
    config = tiny_run_config(tmp_path, bc_checkpoint, learner={"eval_window": 1, "run_name": "alone",
                                                               "address": f"127.0.0.1:{free_port()}"},
                             actor={"eval_every_episodes": 1}, session={"env_steps": 100000})
    run = tmp_path / "runs" / "alone"
    learner = start(q2rl("learner", "--config", str(config)), tmp_path / "learner.out")
    procs = [learner]
    try:
        address = wait_for(lambda: (run / "learner.addr").is_file() and (run / "learner.addr").read_text(), 90,
                           "the learner serving", procs)
        actor = start(q2rl("actor", "--config", str(run / "config.yaml"), "--learner", address,
                           f"actor.spool_dir={tmp_path / 'spool'}", "actor.console=none"), tmp_path / "actor.out")
        procs.append(actor)
        wait_for(lambda: (read_json(run / "status.json") or {}).get("eval_curve"), 90, "an eval window", procs)
        stop_in_order(actor, learner)  # Ctrl-C
    finally:
        kill_left(procs)
    status = read_json(run / "status.json")
    summary = read_json(run / "summary.json")
    assert summary is not None, "summary.json written when the learner stops"
    assert summary["eval_curve"] == status["eval_curve"] and len(summary["eval_curve"]) >= 1
    assert summary["env_steps"] == status["env_steps"] and summary["reason"] == "learner stopped"
    assert summary["config"]["learner"]["run_name"] == "alone"
    out = (tmp_path / "learner.out").read_text()
    lines = [line for line in out.splitlines() if " | ep " in line and "| steps " in line]
    assert lines, out[-3000:]  # the session's status line
    assert "summary in" in out and "eval success during training" in out
    assert " | ep " in (run / "learner.log").read_text()
