"""A rehearsal of the lab's day (issue #32), with real processes through pseudo-terminals: a learner started alone
(as on the GPU box); an actor started alone at the control rate with the operator console (as at the robot), whose
keys r s f e p q drive the episodes; the marked outcomes arrive in the learner's episode store; then `q2rl export`
and `q2rl deploy` with the console marking outcomes. docs/real_robot.md's "Your first day" lists these commands."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from process_util import (child_env, free_port, kill_left, q2rl, start, stop_in_order, tiny_bc_policy,
                          tiny_run_config, wait_for)
from test_deploy import _pty


@pytest.fixture(scope="module")
def bc_checkpoint(tmp_path_factory):
    return tiny_bc_policy(tmp_path_factory.getbasetemp() / "q2rl-tiny-bc")


class Operator:
    """The operator at a terminal: presses keys and reads what the console shows, in order (each expected text is
    looked for after the previous one)."""

    def __init__(self, master: int):
        self.master, self.seen, self.pos = master, b"", 0

    def press(self, key: str, then: str, timeout_s: float = 60.0) -> str:
        os.write(self.master, key.encode())
        return self.expect(then, timeout_s)

    def expect(self, text: str, timeout_s: float = 60.0) -> str:
        needle, deadline = text.encode(), time.monotonic() + timeout_s
        while (at := self.seen.find(needle, self.pos)) < 0:
            if time.monotonic() > deadline or not self._read(deadline - time.monotonic()):
                raise AssertionError(f"{text!r} not shown; the terminal showed {self.seen[self.pos:][-3000:]!r}")
        start, self.pos = self.pos, at + len(needle)
        return self.seen[start:self.pos].decode(errors="replace")

    def read_for(self, seconds: float) -> str:
        """Everything shown over the next `seconds`."""
        start, deadline = self.pos, time.monotonic() + seconds
        while time.monotonic() < deadline and self._read(deadline - time.monotonic()):
            pass
        self.pos = len(self.seen)
        return self.seen[start:].decode(errors="replace")

    def _read(self, timeout_s: float) -> bool:
        """Read what the terminal has within `timeout_s`; False once the process has closed it."""
        if select.select([self.master], [], [], max(0.0, timeout_s))[0]:
            try:
                self.seen += os.read(self.master, 4096)
                return True
            except OSError:  # the process closed the terminal
                return False
        return True  # nothing yet; the caller's deadline decides


@pytest.mark.timeout(360)
def test_the_lab_day_learner_alone_actor_with_keys_then_export_and_deploy(tmp_path, bc_checkpoint):
    from q2rl.learner.episode_store import EpisodeStore

    # Episodes end by the operator's keys (the time limit is far away), as on the robot.
    config = tiny_run_config(tmp_path, bc_checkpoint, env={"sim": {"max_episode_steps": 400}},
                             learner={"run_name": "day", "address": f"127.0.0.1:{free_port()}", "eval_window": 1},
                             actor={"eval_every_episodes": 0})
    run = tmp_path / "runs" / "day"
    # 1. GPU box: the learner alone
    learner, address = _start_learner_alone(config, run, tmp_path)
    procs = [learner]
    master, slave = _pty(120)
    try:
        # 2. the robot workstation: the actor alone, at the control rate, the operator's terminal its console
        actor = subprocess.Popen(
            q2rl("actor", "--config", str(run / "config.yaml"), "--learner", address, "actor.pace=control_rate",
                 "actor.reset_key=always", f"actor.spool_dir={tmp_path / 'spool'}"),
            stdin=slave, stdout=slave, stderr=slave, env=child_env(), cwd=tmp_path, close_fds=True)
        procs.append(actor)
        op = Operator(master)
        op.expect("[waiting for reset (r)] ep 0", 120)
        assert "keys: s success" in op.seen.decode(errors="replace")
        op.press("r", "[train] ep 0 step")
        op.press("s", "episode 0: success")
        op.expect("[waiting for reset (r)] ep 1")
        op.press("r", "[train] ep 1 step")
        op.press("f", "episode 1: failure")
        # e while the scene is being reset: the episode that r starts is an evaluation episode
        op.press("e", "the next episode is an evaluation episode")
        op.press("r", "[eval] ep 2 step")
        op.press("s", "episode 2 (evaluation): success")
        op.press("r", "[train] ep 3 step")
        op.press("p", "paused: p resumes")
        paused = [int(m) for m in re.findall(r"\[paused\] ep 3 step (\d+)", op.read_for(2.5))]
        assert paused and len(set(paused)) == 1, paused  # the robot stands still while paused
        op.press("p", "resumed")
        running = [int(m) for m in re.findall(r"\[train\] ep 3 step (\d+)", op.read_for(2.5))]
        assert running and max(running) > paused[0], (paused, running)
        op.press("s", "episode 3: success")
        op.expect("[waiting for reset (r)] ep 4")
        os.write(master, b"q")  # between episodes: nothing is cut
        assert actor.wait(timeout=60) == 0, op.seen.decode(errors="replace")[-3000:]
        # what the operator marked is in the learner's store as they marked it
        wait_for(lambda: _stored_training_outcomes(run, EpisodeStore) == {0: True, 1: False, 3: True}, 30,
                 "the marked episodes stored", [learner])
        stop_in_order(learner)  # Ctrl-C on the GPU box: checkpoint, summary.json
    finally:
        kill_left(procs)
        os.close(master)
        os.close(slave)
    episodes = {e.episode_id: e for e in EpisodeStore(run, read_only=True).episodes() if not e.report.eval}
    for eid, success in ((0, True), (1, False), (3, True)):
        steps = episodes[eid].transitions
        assert episodes[eid].complete and len(steps) == episodes[eid].report.length >= 1
        assert steps[-1].reward == (1.0 if success else 0.0)
        assert (steps[-1].terminated, steps[-1].truncated) == ((True, False) if success else (False, True))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["reason"] == "learner stopped" and summary["env_steps"] == sum(
        len(episodes[e].transitions) for e in (0, 1, 3))

    # 3. the GPU box after the session: the policy as one file; 4. the robot: deploy it with the console
    policy = tmp_path / "day.q2rl"
    proc = subprocess.run(q2rl("export", str(run), "--checkpoint", "last", "--out", str(policy)),
                          capture_output=True, text=True, env=child_env(), cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = tmp_path / "deploy.hdf5"
    master2, slave2 = _pty(80)
    deploy = subprocess.Popen(q2rl("deploy", str(policy), "--record", str(record), "actor.reset_key=always"),
                              stdin=slave2, stdout=slave2, stderr=slave2, env=child_env(), cwd=tmp_path,
                              close_fds=True)
    try:
        op = Operator(master2)
        op.expect("[press r] ep 0", 120)
        op.press("r", "[eval] ep 0 step")
        op.press("s", "episode 0: success")
        op.press("r", "[eval] ep 1 step")
        op.press("f", "episode 1: failure")
        op.expect("[press r] ep 2")
        op.press("q", "q2rl deploy: success")
        assert deploy.wait(timeout=30) == 0
    finally:
        kill_left([deploy])
        os.close(master2)
        os.close(slave2)
    text = op.seen.decode(errors="replace")
    assert "1/2 = 50%" in text
    status = [line.replace("\x1b[2K", "") for line in text.replace("\r", "\n").split("\n") if "[eval] ep" in line]
    assert status and all("policy " in line and "learner" not in line for line in status), status[-3:]
    result = json.loads(record.with_suffix(".json").read_text())
    assert (result["episodes"], result["successes"], result["cut_episodes"]) == (2, 1, 0)


def _start_learner_alone(config: Path, run: Path, tmp_path: Path) -> tuple[subprocess.Popen, str]:
    """`q2rl learner` started alone, as on the GPU box: its process and the address it serves on."""
    learner = start(q2rl("learner", "--config", str(config)), tmp_path / "learner.out")
    try:
        return learner, wait_for(lambda: (run / "learner.addr").is_file() and (run / "learner.addr").read_text(),
                                 120, "the learner serving", [learner])
    except BaseException:
        kill_left([learner])
        raise


def _stored_training_outcomes(run, store_cls) -> dict:
    return {e.episode_id: e.report.success for e in store_cls(run, read_only=True).episodes()
            if e.complete and e.report is not None and not e.report.eval}


# ---------------------------------------------------------------------------------------------------------------
# the same actor against franky-sim: env.backend franka, a RealSense camera faked at the pyrealsense2 module

FAKE_REALSENSE = Path(__file__).parent / "fake_realsense"


@pytest.fixture(scope="module")
def franky_sim_robot():
    """A simulated FR3 behind the real libfranka protocol on loopback (franky-sim); yields its address."""
    pytest.importorskip("franky")
    pytest.importorskip("franky_sim")
    from franky_sim import SimulationServer
    from franky_sim.mujoco_simulator import MujocoSimulator

    with MujocoSimulator() as simulator:
        robot = simulator.add_robot()
        with SimulationServer(simulator) as server:
            server.run_async()
            yield robot.hostname


def _camera_bc_policy(path: Path, state_dim: int, image_hw: tuple[int, int]) -> str:
    """An untrained pi_BC that reads the robot's proprioception and a wrist camera (what a real run's BC reads;
    the rehearsal is about the operator's day, not about succeeding)."""
    import jax
    import numpy as np

    from q2rl.core.checkpoint import save_bc_policy
    from q2rl.core.normalization import ObsNormalizer
    from q2rl.core.policies import BCPolicy, PolicyConfig, make_policy_net

    net = make_policy_net(PolicyConfig(), 7, ("wrist",))
    obs = {"state": np.zeros((1, state_dim), np.float32), "images": {"wrist": np.zeros((1, *image_hw, 3), np.uint8)}}
    policy = BCPolicy(net, net.init(jax.random.PRNGKey(0), obs), ObsNormalizer.identity(state_dim))
    return str(save_bc_policy(path, policy, PolicyConfig(), state_dim, 7, {"wrist": (*image_hw, 3)}))


@pytest.mark.timeout(420)
def test_the_same_actor_on_franky_sim_with_a_realsense_camera_drives_episodes_by_the_operators_keys(
        tmp_path, franky_sim_robot):
    from q2rl.learner.episode_store import EpisodeStore
    from q2rl.robot.real_config import FrankaEnvConfig

    franka = {
        "task": "rehearsal", "robot_ip": franky_sim_robot, "realtime": "ignore", "control_hz": 10.0,
        "max_episode_steps": 400, "relative_dynamics_factor": 0.5, "reset_dynamics_factor": 0.5,
        "joint_reset_every": 0, "home_position": [0.5, 0.0, 0.35], "reset_position_noise": [0.0, 0.0, 0.0],
        "reset_rpy_noise": [0.0, 0.0, 0.0], "workspace_low": [0.35, -0.2, 0.1], "workspace_high": [0.56, 0.2, 0.45],
        "gripper": {"kind": "franka_hand", "cooldown_s": 0.0, "command_timeout_s": 15.0, "home_on_connect": False},
        "command_timeout_s": 10.0,  # franky-sim shares this loaded CPU with the test's processes
        "cameras": [{"name": "wrist", "serial": "1", "capture_width": 64, "capture_height": 48, "height": 24,
                     "width": 32, "stale_after_s": 1.0, "wait_timeout_s": 0.5}],
    }
    from q2rl.config import from_dict

    state_dim = from_dict(FrankaEnvConfig, franka).state_dim
    bc = _camera_bc_policy(tmp_path / "bc.ckpt", state_dim, (24, 32))
    config = tiny_run_config(tmp_path, bc, learner={"run_name": "robot", "address": f"127.0.0.1:{free_port()}"},
                             actor={"eval_every_episodes": 0})
    data = yaml.safe_load(config.read_text())
    data["env"] = {"backend": "franka", "franka": franka}
    config.write_text(yaml.safe_dump(data))
    run = tmp_path / "runs" / "robot"
    learner, address = _start_learner_alone(config, run, tmp_path)
    procs = [learner]
    master, slave = _pty(120)
    try:
        env = child_env()
        env["PYTHONPATH"] = os.pathsep.join([str(FAKE_REALSENSE), env.get("PYTHONPATH", "")])
        # the defaults of a robot: paced at the control rate, waiting for r before each episode
        actor = subprocess.Popen(q2rl("actor", "--config", str(run / "config.yaml"), "--learner", address,
                                      f"actor.spool_dir={tmp_path / 'spool'}"),
                                 stdin=slave, stdout=slave, stderr=slave, env=env, cwd=tmp_path, close_fds=True)
        procs.append(actor)
        op = Operator(master)
        op.expect("[waiting for reset (r)] ep 0", 180)
        op.press("r", "[train] ep 0 step 3")  # the arm moves at 10 Hz, the camera streams
        op.press("s", "episode 0: success")
        op.press("r", "[train] ep 1 step 3")
        op.press("f", "episode 1: failure")
        op.expect("[waiting for reset (r)] ep 2")
        os.write(master, b"q")
        assert actor.wait(timeout=90) == 0, op.seen.decode(errors="replace")[-3000:]
        wait_for(lambda: _stored_training_outcomes(run, EpisodeStore) == {0: True, 1: False}, 30,
                 "the marked episodes stored", [learner])
        stop_in_order(learner)
    finally:
        kill_left(procs)
        os.close(master)
        os.close(slave)
    for e in EpisodeStore(run, read_only=True).episodes():
        first = e.transitions[0]
        assert first.obs["images"]["wrist"].shape == (24, 32, 3) and first.obs["state"].shape == (state_dim,)
        assert len({int(t.obs["images"]["wrist"][0, 0, 0]) for t in e.transitions}) > 1  # live frames, not one
