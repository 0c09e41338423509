"""Teleoperated demonstrations: key/SpaceMouse -> action by hand, and the real `q2rl demos record` entry point
driving the MuJoCo simulator through a pseudo-terminal: operator keys move the arm, `s` keeps an episode,
`f` discards one, `q` quits; the file has the scripted demos' format."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from q2rl.demos.teleop import SpaceMouseState, keyboard_action, spacemouse_action


def test_keyboard_keys_sum_per_axis_clip_and_toggle_the_gripper():
    action, closed = keyboard_action("iil5", gripper_closed=False)
    np.testing.assert_array_equal(action, [1, -1, 0, 0, 0, 1, -1])  # i twice clips to 1; l is -y; 5 is +yaw
    action, closed = keyboard_action("ik ", closed)
    np.testing.assert_array_equal(action, [0, 0, 0, 0, 0, 0, 1])  # i and k cancel; space closes
    assert closed
    action, closed = keyboard_action("sfr", closed)  # operator keys do not move the arm
    np.testing.assert_array_equal(action, [0, 0, 0, 0, 0, 0, 1])


def test_spacemouse_mapping_deadzone_and_buttons():
    state = SpaceMouseState(x=0.5, y=0.2, z=0.03, roll=-0.4, pitch=0.0, yaw=1.5, buttons=(1, 0))
    action, closed = spacemouse_action(state, gripper_closed=False, deadzone=0.05)
    # (-y, x, z, -roll, -pitch, -yaw): z = 0.03 is inside the dead zone; yaw clips to -1; left button closes.
    np.testing.assert_allclose(action, [-0.2, 0.5, 0.0, 0.4, 0.0, -1.0, 1.0])
    assert closed
    _, closed = spacemouse_action(state._replace(buttons=(0, 1)), closed)
    assert not closed


class Terminal:
    """The operator's side of a pty running `q2rl demos record`."""

    def __init__(self, argv: list[str], cwd: Path):
        self.master, slave = pty.openpty()
        env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
        code = "import sys; from q2rl.cli import main; sys.exit(main(['demos', 'record', *sys.argv[1:]]))"
        self.child = subprocess.Popen([sys.executable, "-c", code, *argv], stdin=slave, stdout=slave, stderr=slave,
                                      cwd=cwd, env=env, close_fds=True)
        os.close(slave)
        self.seen = b""
        self.everything = b""  # all output, for what must never be shown

    def expect(self, pattern: bytes, timeout_s: float = 60.0) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while True:
            match = re.search(pattern, self.seen)
            if match:
                self.seen = self.seen[match.end():]
                return match
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.child.poll() is not None and not select.select([self.master], [], [], 0)[0]:
                raise AssertionError(f"{pattern!r} not seen; output: {self.seen[-2000:]!r}")
            if select.select([self.master], [], [], min(remaining, 0.5))[0]:
                try:
                    chunk = os.read(self.master, 65536)
                    self.seen += chunk
                    self.everything += chunk
                except OSError:
                    pass

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def close(self) -> None:
        if self.child.poll() is None:
            self.child.kill()
        self.child.wait(timeout=10)
        os.close(self.master)


@pytest.mark.timeout(180)
def test_record_in_the_simulator_through_a_pty(tmp_path):
    from q2rl.demos.hdf5 import read_demos

    config = tmp_path / "sim.yaml"
    config.write_text("env:\n  backend: sim\n  sim:\n    task: pick_cube\n    max_episode_steps: 400\n")
    out = tmp_path / "teleop.hdf5"
    term = Terminal(["--config", str(config), "--out", str(out), "--episodes", "3", "--hz", "20"], tmp_path)
    try:
        term.expect(rb"episode 1: set up the scene, then press r")
        term.type("r")
        term.expect(rb"step 2 ")
        term.type("iii")  # +x
        term.expect(rb"step 6 ")
        term.type("u")  # up
        term.expect(rb"step 9 ")
        term.type(" ")  # close the gripper
        term.expect(rb"step 12 ")
        term.type("s")  # success: keep
        kept = term.expect(rb"episode 1: success, kept as demo_0 \((\d+) steps\)")
        term.expect(rb"episode 2: set up the scene, then press r")
        term.type("r")
        term.expect(rb"step 3 ")
        term.type("f")  # failure: discard
        term.expect(rb"episode 2: failure, discarded")
        term.type("q")
        summary = term.expect(rb"(\{\"out\".*\})")
        assert term.child.wait(timeout=30) == 0
    finally:
        term.close()
    assert json.loads(summary.group(1)) == {"out": str(out), "demos": 1, "attempts": 2}
    shown = term.everything.decode(errors="replace")
    assert "s success (keep)" in shown and "space gripper" in shown  # the teleop keys
    assert "evaluation episode" not in shown and "checkpoint" not in shown  # no training key
    assert "learner v" not in shown and "RL " not in shown  # nor training figures on the status line
    demos = read_demos(out, load_next_obs=True)
    assert len(demos) == 1 and demos.env_args["env_name"] == "pick_cube"
    assert demos.env_args["demo_source"]["kind"] == "teleop"
    ep = demos.episodes[0]
    steps = int(kept.group(1))
    assert len(ep) == steps >= 12 and ep.success
    assert ep.actions.shape == (steps, 7) and ep.rewards[-1] == 1.0 and ep.dones[-1] and not ep.dones[:-1].any()
    x_steps = np.flatnonzero(ep.actions[:, 0] == 1.0)
    assert len(x_steps) >= 1
    moved = ep.next_states[x_steps, 0] - ep.states[x_steps, 0]
    assert moved.max() > 0.005  # the arm went +x on the step the key arrived
    assert (ep.actions[:, 2] == 1.0).any()
    assert ep.actions[0, 6] == -1.0 and ep.actions[-1, 6] == 1.0  # opened at first, closed at the end


def test_record_refuses_without_a_terminal(tmp_path):
    config = tmp_path / "sim.yaml"
    config.write_text("env:\n  backend: sim\n  sim:\n    task: pick_cube\n")
    code = "import sys; from q2rl.demos.teleop import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run([sys.executable, "-c", code, "--config", str(config), "--out", str(tmp_path / "x.hdf5")],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "stdin is not a terminal" in result.stderr
    assert not (tmp_path / "x.hdf5").exists()


def test_sim_teleop_has_a_recording_limit_of_its_own_and_the_file_keeps_the_training_limit(tmp_path):
    """pick_cube's 60-step training limit ended a hand-driven episode after 6 s."""
    from q2rl.demos.teleop import SIM_MAX_STEPS, make_teleop_env

    config = tmp_path / "sim.yaml"
    config.write_text("env:\n  backend: sim\n  sim:\n    task: pick_cube\n")
    teleop = make_teleop_env(str(config), ["env.sim.control_hz=20"])
    try:
        assert teleop.env.max_episode_steps == SIM_MAX_STEPS >= 1000
        assert teleop.env_args["env_kwargs"]["max_episode_steps"] == 0  # bc eval: the task's own limit
        assert teleop.control_hz == 20.0
    finally:
        teleop.env.close()
    teleop = make_teleop_env(str(config), [], max_steps=77)
    try:
        assert teleop.env.max_episode_steps == 77
    finally:
        teleop.env.close()


def test_record_help_names_the_recording_limit_and_the_env_backend_in_use(tmp_path):
    config = tmp_path / "sim.yaml"
    config.write_text("env:\n  backend: sim\n  sim:\n    task: pick_cube\n")
    code = "import sys; from q2rl.cli import main; sys.exit(main(['demos', 'record', *sys.argv[1:]]))"
    result = subprocess.run([sys.executable, "-c", code, "--config", str(config), "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "--max-steps" in result.stdout and "env.sim.task " in result.stdout
    assert "env.franka.robot_ip" not in result.stdout and "evaluation episode" not in result.stdout
