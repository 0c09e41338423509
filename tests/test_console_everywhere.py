"""The operator console everywhere the operator works (issue #32): no key is dropped while a sim actor holds for the
learner, the status line fits an 80-column terminal, the pause screen does not blame the learner, and `q2rl session
--console` gives its first actor the keyboard through a real pseudo-terminal (rehearsing in sim what the robot
needs)."""

from __future__ import annotations

import os
import subprocess
import termios
import threading

import pytest
from process_util import REPO, child_env, q2rl, tiny_bc_policy, tiny_run_config
from test_console import read_until
from test_deploy import _pty

from q2rl.interfaces import Grants
from q2rl.robot.console import Command, StatusLine


@pytest.fixture(scope="module")
def bc_checkpoint(tmp_path_factory):
    return tiny_bc_policy(tmp_path_factory.getbasetemp() / "q2rl-tiny-bc")


class HeldSource:
    """A learner that grants nothing past seq 2 until the operator's key has been read, then everything."""

    def __init__(self, console):
        self.console = console

    def latest(self):
        return None

    def grants(self):
        return Grants({"actor-0": 10**9 if self.console.read else 2})


class KeysWhileHolding:
    """A console whose operator presses s once, while the actor holds for the learner at seq 3."""

    interactive = True

    def __init__(self):
        self.read, self.drawn, self.actor = False, [], None

    def poll(self, timeout_s: float = 0.0):
        if not self.read and self.actor.seq == 3:
            self.read = True
            return [Command.SUCCESS]
        return []

    def set_status(self, status):
        self.drawn.append(status)

    def print(self, text):
        pass


def test_a_success_key_pressed_while_the_actor_holds_for_the_learner_ends_that_episode(tmp_path, bc_checkpoint):
    from q2rl.actor.actor import Actor
    from q2rl.config import load_config
    from q2rl.core.checkpoint import load_bc_policy
    from q2rl.robot.envs import make_env
    from q2rl.run_config import RunConfig

    cfg = load_config(RunConfig, tiny_run_config(tmp_path, bc_checkpoint), ["actor.pace=learner"])
    env = make_env(cfg.env)
    console = KeysWhileHolding()
    sink = type("Sink", (), {"add": lambda self, t: None, "end_episode": lambda self, r: None,
                             "send_held": lambda self: None})()
    actor = console.actor = Actor(cfg, env, load_bc_policy(bc_checkpoint), sink=sink, source=HeldSource(console),
                                  console=console)
    report = actor.run_episode(threading.Event())
    env.close()
    assert console.read and report.success and report.length == 4  # steps 0-2, then the held step 3 ends it
    assert actor.summary.paced_s > 0


def test_the_status_line_fits_80_columns_and_the_pause_screen_does_not_blame_the_learner():
    busy = StatusLine(episode=1234, step=1370, bc_share=0.4, success_rate=0.55, learner_version=81234,
                      link="reconnecting (spool 123456)", mode="train", message="waiting for the learner")
    line = busy.render(79)
    assert len(line) <= 79
    for part in ("[train]", "ep 1234", "st 1370", "BC 40%", "RL 60%", "succ 55%", "v81234"):
        assert part in line, part
    assert len(StatusLine(mode="waiting for reset (r)", episode=3).render(79)) <= 79
    short = StatusLine(episode=3, step=17, bc_share=0.25, success_rate=0.5, learner_version=12, link="ok")
    assert short.render(79) == short.render(200)  # what fits is shown in full


def test_the_learners_status_line_shows_no_training_success_before_an_episode_and_fits_what_it_is_given():
    from q2rl.progress import LearnerStatus, format_status_line

    fresh = LearnerStatus(phase="rollout", episodes=0)
    assert "train   -" in format_status_line(fresh, [], 50000, 0.0)
    assert "tr - ev -" in format_status_line(fresh, [], 50000, 0.0, width=63)
    later = LearnerStatus(phase="online", episodes=4, train_success_rate=0.5, env_steps=1200)
    assert "train  50%" in format_status_line(later, [], 50000, 0.0)
    assert len(format_status_line(later, [], 50000, 0.0, width=63)) <= 63


@pytest.mark.timeout(180)
def test_a_session_gives_its_first_actor_the_keyboard_in_a_terminal(tmp_path, bc_checkpoint):
    config = tiny_run_config(tmp_path, bc_checkpoint, session={"final_eval_episodes": 0, "env_steps": 100000})
    master, slave = _pty(80)
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen(q2rl("session", "--config", str(config), "--console", "learner.run_name=c"),
                            stdin=slave, stdout=slave, stderr=slave, env=child_env(), cwd=REPO, close_fds=True,
                            start_new_session=True)
    try:
        seen = read_until(master, b"actor-0 has the keyboard", 90)
        seen += read_until(master, b"[train] ep 0 st", 90)  # the actor's console, on the session's terminal
        os.write(master, b"p")
        seen += read_until(master, b"[paused]", 30)
        paused = seen[seen.rindex(b"[paused]"):].split(b"\r")[0]
        assert b"waiting for the learner" not in paused
        os.write(master, b"p")
        seen += read_until(master, b"resumed", 30)
        os.write(master, b"q")
        seen += read_until(master, b"session finished: the operator quit (key q)", 90)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        after = termios.tcgetattr(slave)
        os.close(master)
        os.close(slave)
    text = seen.decode(errors="replace")
    status = [line.replace("\x1b[2K", "") for line in text.replace("\r", "\n").split("\n") if "] ep " in line]
    assert status and all(len(line) < 80 for line in status), status
    assert after[3] & (termios.ICANON | termios.ECHO) == before[3] & (termios.ICANON | termios.ECHO)
    log = (tmp_path / "runs" / "c" / "actor-0.log").read_text()
    assert "Traceback" not in log


def test_without_a_terminal_the_session_ends_on_its_latest_status_line():
    import io

    from q2rl.learner.session import Display

    out = io.StringIO()
    display = Display(out, plain_every_s=10.0)
    display.show("first")
    display.show("second")  # within 10 s: not written yet
    display.finish()
    assert out.getvalue() == "first\nsecond\n"
    display.finish()
    assert out.getvalue() == "first\nsecond\n"
