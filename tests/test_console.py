"""The operator console through a real pseudo-terminal: keys arrive without Enter, the status line is drawn,
the terminal is restored afterwards; without a terminal it says so (sim) or refuses (real robot)."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import termios
import textwrap
import time

import pytest

from q2rl.robot.console import Command, StatusLine, parse_keys

CHILD = textwrap.dedent(
    """
    import sys, time
    from q2rl.robot.console import Command, OperatorConsole, StatusLine
    with OperatorConsole.open(require_terminal=True) as console:
        console.set_status(StatusLine(episode=1, step=0, bc_share=0.25, success_rate=0.5, learner_version=7, link="ok"))
        deadline = time.monotonic() + 20
        done = False
        while not done and time.monotonic() < deadline:
            for command in console.poll(timeout_s=0.05):
                console.print("got " + command.name)
                done = done or command is Command.QUIT
    print("bye")
    """
)


def read_until(fd: int, needle: bytes, timeout_s: float = 20.0) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout_s
    while needle not in out:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{needle!r} not seen; got {out!r}")
        if select.select([fd], [], [], remaining)[0]:
            try:
                out += os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
    return out


def test_parse_keys_ignores_other_bytes_and_case():
    assert parse_keys("sx\x1b[AF r") == [Command.SUCCESS, Command.FAILURE, Command.RESET_DONE]


def test_status_line_shows_the_numbers():
    text = StatusLine(episode=3, step=17, bc_share=0.25, success_rate=0.5, learner_version=12, link="ok").render()
    assert "ep 3 step 17" in text and "BC  25% RL  75%" in text and "success  50%" in text
    assert "learner v12" in text and "link ok" in text
    assert "learner v-" in StatusLine().render()


@pytest.mark.timeout(60)
def test_keys_through_a_pty_without_enter_and_terminal_restored():
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    try:
        out = read_until(master, b"learner v7")  # help, then the status line
        assert b"keys: s success" in out and b"link ok" in out
        os.write(master, b"s")  # a single key, no Enter
        assert b"got SUCCESS" in read_until(master, b"got SUCCESS")
        os.write(master, b"fpeh")
        out = read_until(master, b"got HELP")
        for name in (b"got FAILURE", b"got PAUSE", b"got EVAL", b"keys: s success"):
            assert name in out
        os.write(master, b"q")
        out = read_until(master, b"bye")
        assert b"got QUIT" in out
        assert child.wait(timeout=20) == 0
        after = termios.tcgetattr(slave)
        assert after[3] & (termios.ICANON | termios.ECHO) == before[3] & (termios.ICANON | termios.ECHO)
    finally:
        if child.poll() is None:
            child.kill()
        os.close(master)
        os.close(slave)


def run_without_terminal(require: bool) -> subprocess.CompletedProcess:
    code = (
        "from q2rl.robot.console import OperatorConsole\n"
        f"c = OperatorConsole.open(require_terminal={require})\n"
        "print('interactive', c.interactive, c.poll())\n"
    )
    return subprocess.run([sys.executable, "-c", code], stdin=subprocess.PIPE, capture_output=True, text=True,
                          timeout=60)


def test_without_a_terminal_sim_falls_back_and_robot_refuses():
    sim = run_without_terminal(False)
    assert sim.returncode == 0 and "interactive False []" in sim.stdout
    assert "stdin is not a terminal" in sim.stderr and "environment's own success signal" in sim.stderr
    robot = run_without_terminal(True)
    assert robot.returncode != 0
    assert "ConsoleUnavailable" in robot.stderr and "stdin is not a terminal" in robot.stderr
