"""The operator's terminal console (docs/design.md#operator-keys): single keys, a live status line, no X server.

    with OperatorConsole.open(require_terminal=robot_is_real) as console:
        while True:
            for command in console.poll():          # never blocks
                ...                                 # Command.SUCCESS, FAILURE, RESET_DONE, PAUSE, EVAL, QUIT
            console.set_status(StatusLine(episode=3, step=17, bc_share=0.4, ...))

Keys: s success, f failure, r reset done, p pause/resume, e evaluation episode, q quit, h help (printed by the
console itself). The terminal is put in cbreak mode (keys arrive without Enter, Ctrl-C still interrupts) and
restored on exit, so it works over SSH and inside tmux. When stdin is not a terminal, `open()` says so and
returns a console without keys (`interactive` is False): a simulated session then uses the environment's own
success signal, and a real-robot session (require_terminal=True) refuses to start.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import select
import sys
import termios
import tty
from typing import TextIO


class Command(enum.Enum):
    SUCCESS = "s"
    FAILURE = "f"
    RESET_DONE = "r"
    PAUSE = "p"
    EVAL = "e"
    QUIT = "q"
    HELP = "h"


HELP_TEXT = (
    "keys: s success (reward 1, ends episode) | f failure (ends episode) | r reset done, start next episode | "
    "p pause/resume | e evaluation episode | q quit (flush, checkpoint) | h help"
)

# Deploying a policy: no learner, so no evaluation episodes to ask for and nothing to checkpoint.
DEPLOY_HELP_TEXT = (
    "keys: s success (reward 1, ends episode) | f failure (ends episode) | r reset done, start next episode | "
    "p pause/resume | q quit (the episode under way is recorded as cut) | h help"
)

_KEYS = {c.value: c for c in Command}


class ConsoleUnavailable(RuntimeError):
    """The operator console needs a terminal and stdin is not one."""


@dataclasses.dataclass(frozen=True)
class StatusLine:
    """What the operator sees at a glance."""

    episode: int = 0
    step: int = 0
    bc_share: float = float("nan")  # fraction of steps that ran the BC action this episode
    success_rate: float = float("nan")  # over recent episodes
    learner_version: int = -1  # parameter version in use (-1: none yet)
    link: str = "-"  # learner link health, e.g. "ok", "down 3s", "spooling 120"
    mode: str = "train"  # train | eval | paused | waiting for reset
    message: str = ""
    training: bool = True  # False (teleoperation): no BC/RL share, no parameter version, which do not apply
    policy: str = ""  # a deployed policy (q2rl deploy): what acts, shown instead of the learner and its link

    def render(self, width: int = 120) -> str:
        """The line, at most `width` characters: in full when it fits, else in a compact form that keeps every
        figure (the mode, the episode and its step, the BC/RL share, the success rate, the parameter version, the
        link), the message last and cut first."""
        def pct(x: float) -> str:
            return "  -" if x != x else f"{100 * x:3.0f}%"

        def tight(x: float) -> str:
            return "-" if x != x else f"{100 * x:.0f}%"

        width = max(width, 20)
        version = self.learner_version if self.learner_version >= 0 else "-"
        share = f"BC {pct(self.bc_share)} RL {pct(1 - self.bc_share)} | " if self.training else ""
        learner = f"learner v{version} | " if self.training else ""
        source = f"policy {self.policy}" if self.policy else f"{learner}link {self.link}"
        text = (f"[{self.mode}] ep {self.episode} step {self.step} | {share}"
                f"success {pct(self.success_rate)} | {source}")
        if self.message:
            text += f" | {self.message}"
        if len(text) <= width:
            return text
        mode = "press r" if self.mode.startswith("waiting for reset") else self.mode
        share = f"BC {tight(self.bc_share)} RL {tight(1 - self.bc_share)} | " if self.training else ""
        source = self.policy or f"{f'v{version} ' if self.training else ''}{self.link}"
        text = f"[{mode}] ep {self.episode} st {self.step} | {share}succ {tight(self.success_rate)} | {source}"
        if self.message and len(text) + 3 + len(self.message) <= width:
            text += f" | {self.message}"
        return text[:width]


def parse_keys(data: str) -> list[Command]:
    """Commands for the operator keys in `data` (case-insensitive); other bytes are ignored."""
    return [_KEYS[ch] for ch in data.lower() if ch in _KEYS]


class OperatorConsole:
    """Reads operator keys from a terminal without blocking and keeps a status line on its last row."""

    def __init__(self, fd: int | None, out: TextIO, *, handle_help: bool = True, help_text: str = HELP_TEXT):
        self.fd = fd
        self.out = out
        self.interactive = fd is not None
        self.handle_help = handle_help
        self.help_text = help_text  # the keys that apply where it is used (teleoperation has no e, for one)
        self._saved_attrs = None
        self._status = StatusLine()

    @classmethod
    def open(
        cls,
        require_terminal: bool,
        stdin: TextIO | None = None,
        out: TextIO | None = None,
        help_text: str = HELP_TEXT,
    ) -> OperatorConsole:
        """A console on stdin; without a terminal: raise if `require_terminal`, else a key-less console."""
        stdin = stdin or sys.stdin
        out = out or sys.stderr
        try:
            fd = stdin.fileno()
            is_tty = os.isatty(fd)
        except (AttributeError, ValueError, OSError):
            fd, is_tty = None, False
        if not is_tty:
            if require_terminal:
                raise ConsoleUnavailable(
                    "stdin is not a terminal: the real robot needs the operator's keys (s/f/r/...). Start it from an "
                    "interactive shell (ssh -t, tmux, screen), not with input redirected or under nohup."
                )
            out.write("q2rl: stdin is not a terminal; no operator keys, episodes end on the environment's own "
                      "success signal and time limit.\n")
            out.flush()
            return cls(None, out, help_text=help_text)
        return cls(fd, out, help_text=help_text)

    # ---- context manager: cbreak mode in, restored out -------------------------------------------------------

    def __enter__(self) -> OperatorConsole:
        if self.fd is not None:
            self._saved_attrs = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)  # keys without Enter, no echo; Ctrl-C still raises KeyboardInterrupt
            self._write(self.help_text + "\n")
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def restore(self) -> None:
        """Put the terminal back as it was and end the status line."""
        if self.fd is not None and self._saved_attrs is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved_attrs)
            self._saved_attrs = None
            self._write("\n")

    # ---- input ------------------------------------------------------------------------------------------------

    def read_text(self, timeout_s: float = 0.0) -> str:
        """Raw characters typed since the last call (waits up to `timeout_s` for the first one)."""
        if self.fd is None:
            return ""
        chunks = []
        wait = timeout_s
        while select.select([self.fd], [], [], wait)[0]:
            data = os.read(self.fd, 1024)
            if not data:  # the terminal went away (SSH dropped): behave as if no keys come
                break
            chunks.append(data.decode(errors="ignore"))
            wait = 0.0
        return "".join(chunks)

    def poll(self, timeout_s: float = 0.0) -> list[Command]:
        """Operator commands since the last poll; `h` prints the help and is also returned."""
        commands = parse_keys(self.read_text(timeout_s))
        if self.handle_help and Command.HELP in commands:
            self.show_help()
        return commands

    # ---- output -----------------------------------------------------------------------------------------------

    def _write(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):  # a closed terminal must not crash the control loop
            pass

    def _width(self) -> int:
        try:
            columns = os.get_terminal_size(self.out.fileno()).columns
        except (OSError, ValueError, AttributeError):
            columns = 0
        return columns - 1 if columns > 20 else 119  # a pty without a size reports 0 columns

    def set_status(self, status: StatusLine) -> None:
        """Redraw the status line in place (carriage return + clear line)."""
        self._status = status
        if self.fd is not None:
            self._write("\r\x1b[2K" + status.render(self._width()))

    def print(self, text: str) -> None:
        """A log line above the status line."""
        if self.fd is not None:
            self._write("\r\x1b[2K" + text + "\n" + self._status.render(self._width()))
        else:
            self._write(text + "\n")

    def show_help(self) -> None:
        self.print(self.help_text)
