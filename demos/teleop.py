"""Teleoperated demonstrations: `q2rl demos record --config configs/real/<task>.yaml --out demos.hdf5`.

The operator drives the end effector with the keyboard (or a 3Dconnexion SpaceMouse, `pip install -e
'.[spacemouse]'`) from the same terminal console as training (docs/design.md#operator-keys), and marks every episode:
`s` success (kept), `f` failure (discarded), `r` scene reset done — start the next episode, `p` pause, `q` quit,
`h` help. Only successful episodes are written, in the scripted demos' HDF5 format (q2rl.demos.hdf5). A config
with `env.backend: sim` teleoperates the simulator instead (that is how this is tested).

Keyboard (terminal keys, no X server; hold a key to keep moving):
    i / k  +x / -x (away from / toward the robot base)     j / l  +y / -y       u / o  up / down
    1 / 2  roll + / -      3 / 4  pitch + / -      5 / 6  yaw + / -      space  toggle the gripper
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from q2rl.config import to_dict
from q2rl.interfaces import ACTION_DIM

# key -> (action index, sign)
MOVE_KEYS = {
    "i": (0, 1.0), "k": (0, -1.0), "j": (1, 1.0), "l": (1, -1.0), "u": (2, 1.0), "o": (2, -1.0),
    "1": (3, 1.0), "2": (3, -1.0), "3": (4, 1.0), "4": (4, -1.0), "5": (5, 1.0), "6": (5, -1.0),
}
GRIPPER_TOGGLE_KEY = " "
SIM_MAX_STEPS = 3000  # 5 minutes at 10 Hz: a recording episode in sim ends when the operator marks it
KEY_HELP = ("teleop keys: i/k x+/-  j/l y+/-  u/o up/down  1/2 roll  3/4 pitch  5/6 yaw  space gripper | "
            "s success (keep)  f failure (discard)  r start next episode  p pause  q quit  h help")


def keyboard_action(text: str, gripper_closed: bool) -> tuple[np.ndarray, bool]:
    """Action from the keys typed during one step: each press adds +-1 on its axis (clipped); space toggles."""
    action = np.zeros(ACTION_DIM, np.float32)
    for ch in text.lower():
        if ch in MOVE_KEYS:
            index, sign = MOVE_KEYS[ch]
            action[index] += sign
        elif ch == GRIPPER_TOGGLE_KEY:
            gripper_closed = not gripper_closed
    action[:6] = np.clip(action[:6], -1.0, 1.0)
    action[6] = 1.0 if gripper_closed else -1.0
    return action, gripper_closed


class SpaceMouseState(NamedTuple):
    """The fields of pyspacemouse's state we use (each axis in [-1, 1])."""

    x: float
    y: float
    z: float
    roll: float
    pitch: float
    yaw: float
    buttons: tuple[int, ...]


def spacemouse_action(state: SpaceMouseState, gripper_closed: bool, deadzone: float = 0.05) -> tuple[np.ndarray, bool]:
    """Action from a SpaceMouse reading: device axes to base-frame deltas (SERL's convention), left button
    closes, right button opens; readings within the dead zone count as zero."""
    raw = np.array([-state.y, state.x, state.z, -state.roll, -state.pitch, -state.yaw], np.float64)
    raw[np.abs(raw) < deadzone] = 0.0
    buttons = tuple(state.buttons) + (0, 0)
    if buttons[0]:
        gripper_closed = True
    elif buttons[1]:
        gripper_closed = False
    action = np.concatenate([np.clip(raw, -1.0, 1.0), [1.0 if gripper_closed else -1.0]]).astype(np.float32)
    return action, gripper_closed


class SpaceMouseReader:
    """Reads the SpaceMouse on its own thread so the control loop always sees the latest state."""

    def __init__(self) -> None:
        try:
            import pyspacemouse
        except ImportError as e:
            raise RuntimeError(f"pyspacemouse is not installed ({e}): pip install -e '.[spacemouse]'") from None
        if not pyspacemouse.open():
            raise RuntimeError("no SpaceMouse found (is it plugged in, and may this user read /dev/hidraw*?)")
        self._pyspacemouse = pyspacemouse
        self._lock = threading.Lock()
        self._state = SpaceMouseState(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, (0, 0))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spacemouse", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            s = self._pyspacemouse.read()
            with self._lock:
                self._state = SpaceMouseState(s.x, s.y, s.z, s.roll, s.pitch, s.yaw, tuple(s.buttons))
            time.sleep(0.002)

    def latest(self) -> SpaceMouseState:
        with self._lock:
            return self._state

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
        self._pyspacemouse.close()


# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Recording:
    """One episode in progress."""

    cameras: tuple[str, ...]
    states: list = dataclasses.field(default_factory=list)
    next_states: list = dataclasses.field(default_factory=list)
    actions: list = dataclasses.field(default_factory=list)
    rewards: list = dataclasses.field(default_factory=list)
    dones: list = dataclasses.field(default_factory=list)
    images: dict = dataclasses.field(default_factory=dict)
    next_images: dict = dataclasses.field(default_factory=dict)

    def add(self, obs: dict, action: np.ndarray, reward: float, terminated: bool, next_obs: dict) -> None:
        self.states.append(np.array(obs["state"], np.float32))
        self.next_states.append(np.array(next_obs["state"], np.float32))
        self.actions.append(np.array(action, np.float32))
        self.rewards.append(float(reward))
        self.dones.append(bool(terminated))
        for c in self.cameras:
            self.images.setdefault(c, []).append(np.array(obs["images"][c], np.uint8))
            self.next_images.setdefault(c, []).append(np.array(next_obs["images"][c], np.uint8))

    def episode(self, success: bool, seed: int):
        from q2rl.demos.hdf5 import Demo

        rewards = np.asarray(self.rewards, np.float32)
        dones = np.asarray(self.dones, bool)
        if success and len(rewards):  # the operator's verdict is the reward, as on the robot during training
            rewards[-1], dones[-1] = 1.0, True
        stack = lambda d: {c: np.stack(v) for c, v in d.items()}  # noqa: E731
        return Demo(
            states=np.stack(self.states), actions=np.stack(self.actions), rewards=rewards, dones=dones,
            images=stack(self.images), next_states=np.stack(self.next_states), next_images=stack(self.next_images),
            success=success, seed=seed,
        )


class TeleopEnv(NamedTuple):
    env: Any
    env_args: dict
    cameras: tuple[str, ...]
    control_hz: float
    paces_itself: bool  # the real robot waits for its own control period inside step()


def make_teleop_env(config_path: str, overrides: list[str], signals: Any = None,
                    max_steps: int | None = None) -> TeleopEnv:
    """The env named by a run config's `env` section (backend sim or franka), env.* overrides applied.
    `max_steps`: the recording episode limit (None: the config's; sim teleoperation takes SIM_MAX_STEPS)."""
    from q2rl.config import build_config, read_yaml
    from q2rl.run_config import EnvOnlyConfig

    data = read_yaml(config_path)
    env = build_config(EnvOnlyConfig, {"env": data.get("env") or {}}, overrides, config_path).env
    source = {"kind": "teleop"}
    if env.backend == "sim":
        from q2rl.robot.sim import make_sim_env

        # pick_cube's 60-step training limit ends an episode after 6 s: far too short to drive the arm by hand. The
        # file's env_kwargs keep the config's limit: `bc eval` evaluates with them, at the training limit.
        cfg = dataclasses.replace(env.sim, max_episode_steps=max_steps or SIM_MAX_STEPS)
        env_args = {"env_name": cfg.task, "type": "q2rl_sim", "env_kwargs": to_dict(env.sim), "demo_source": source}
        return TeleopEnv(make_sim_env(cfg), env_args, tuple(cfg.cameras), cfg.control_hz, False)
    from q2rl.robot.franka import FrankaEnv

    cfg = env.franka if max_steps is None else dataclasses.replace(env.franka, max_episode_steps=max_steps)
    env_args = {"env_name": cfg.task, "type": "q2rl_franka", "env_kwargs": to_dict(env.franka), "demo_source": source}
    return TeleopEnv(FrankaEnv(cfg, signals=signals), env_args, tuple(c.name for c in cfg.cameras), cfg.control_hz,
                     True)


def _parser(argv: list[str]) -> argparse.ArgumentParser:
    from q2rl.run_config import EnvOnlyConfig, section_parser

    p = section_parser("q2rl demos record", __doc__.split("\n\n")[0] + "\n\n" + KEY_HELP, EnvOnlyConfig,
                       "env.sim.task=peg_insert", argv=argv, expand=False)
    p.add_argument("--config", required=True, help="Run config whose env section names the robot or sim task.")
    p.add_argument("--out", required=True, help="Output HDF5 file (only successful episodes are written).")
    p.add_argument("--episodes", type=int, default=20, help="Successful demos to collect before stopping.")
    p.add_argument("--max-steps", type=int, default=None,
                   help=f"Recording episode limit in control steps (default: {SIM_MAX_STEPS} in sim, whatever the "
                        "task's training limit; the config's env.franka.max_episode_steps on the robot).")
    p.add_argument("--input", choices=("keyboard", "spacemouse"), default="keyboard", help="Teleoperation device.")
    p.add_argument("--hz", type=float, default=None, help="Teleop rate in the simulator (default: env control_hz).")
    p.add_argument("--seed", type=int, default=0, help="Seed of the first reset (episode i uses seed + i).")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="Deprecated (goes in the next release): write env.FIELD=VALUE as a plain argument.")
    p.add_argument("--force", action="store_true", help="Overwrite an existing output file.")
    return p


class _Quit(Exception):
    pass


def main(argv: list[str]) -> int:
    from q2rl.run_config import deprecated_set, parse_command_line

    args = parse_command_line(_parser(argv), argv)
    if args.episodes < 1 or (args.max_steps is not None and args.max_steps < 1):
        print("q2rl demos record: --episodes and --max-steps must be >= 1", file=sys.stderr)
        return 2
    overrides = deprecated_set("q2rl demos record", args.set, "env") + list(args.overrides)
    from q2rl.demos.hdf5 import DemoWriter
    from q2rl.robot.console import ConsoleUnavailable, OperatorConsole

    try:
        console = OperatorConsole.open(require_terminal=True, help_text=KEY_HELP)
    except ConsoleUnavailable as e:
        print(f"q2rl demos record: {e}", file=sys.stderr)
        return 2
    if Path(args.out).exists() and not args.force:
        print(f"q2rl demos record: {args.out} exists; choose another --out or pass --force", file=sys.stderr)
        return 2
    try:
        teleop = make_teleop_env(args.config, overrides, max_steps=args.max_steps)
    except RuntimeError as e:  # RobotError, CameraError, GripperError: unreachable or misconfigured hardware
        print(f"q2rl demos record: {e}", file=sys.stderr)
        return 1
    mouse = SpaceMouseReader() if args.input == "spacemouse" else None
    try:
        with console, DemoWriter(args.out, teleop.env_args, overwrite=args.force) as writer:
            summary = _collect(args, teleop, console, writer, mouse)
    finally:
        if mouse is not None:
            mouse.close()
        teleop.env.close()
    print(json.dumps({"out": args.out, **summary}))
    return 0


def _collect(args, teleop: TeleopEnv, console, writer, mouse: SpaceMouseReader | None) -> dict:
    from q2rl.robot.console import Command, StatusLine

    hz = args.hz or teleop.control_hz
    attempts = 0
    status = lambda mode, step=0, msg="": console.set_status(StatusLine(  # noqa: E731
        episode=attempts, step=step, success_rate=writer.num_demos / attempts if attempts else float("nan"),
        mode=mode, link=args.input, message=f"kept {writer.num_demos}/{args.episodes} {msg}".strip(),
        training=False))
    try:
        while writer.num_demos < args.episodes:
            status("waiting for r")  # first: a print redraws the status line, which must be teleop's from the start
            console.print(f"episode {attempts + 1}: set up the scene, then press r")
            _wait_for(console, Command.RESET_DONE)
            seed = args.seed + attempts
            attempts += 1
            recording, success = _run_episode(teleop, console, mouse, seed, hz, status)
            if success and recording.actions:
                name = writer.add(recording.episode(True, seed))
                console.print(f"episode {attempts}: success, kept as {name} ({len(recording.actions)} steps)")
            else:
                console.print(f"episode {attempts}: failure, discarded")
    except _Quit:
        console.print("quit: the current episode is discarded; kept episodes are in the file")
    return {"demos": writer.num_demos, "attempts": attempts}


def _wait_for(console, wanted) -> None:
    from q2rl.robot.console import Command

    while True:
        for command in console.poll(timeout_s=0.1):
            if command is Command.QUIT:
                raise _Quit
            if command is wanted:
                return


def _keys_until(console, deadline: float) -> str:
    """Keys typed until `deadline` (time.monotonic); the simulator is paced this way, the robot in step()."""
    text = console.read_text(timeout_s=max(0.0, deadline - time.monotonic()))
    while time.monotonic() < deadline:
        text += console.read_text(timeout_s=max(0.0, deadline - time.monotonic()))
    return text


def _run_episode(teleop: TeleopEnv, console, mouse, seed: int, hz: float, status: Callable) -> tuple[_Recording, bool]:
    from q2rl.robot.console import Command, parse_keys

    env = teleop.env
    obs, _ = env.reset(seed=seed)
    recording = _Recording(teleop.cameras)
    gripper_closed, paused, step = False, False, 0
    next_tick = time.monotonic()
    while True:
        text = _keys_until(console, next_tick if not teleop.paces_itself else 0.0)
        next_tick = max(next_tick + 1.0 / hz, time.monotonic())
        commands = parse_keys(text.replace(GRIPPER_TOGGLE_KEY, ""))
        if Command.HELP in commands:
            console.print(KEY_HELP)
        if Command.QUIT in commands:
            raise _Quit
        if Command.SUCCESS in commands or Command.FAILURE in commands:
            return recording, Command.SUCCESS in commands
        if Command.PAUSE in commands:
            paused = not paused
        if paused:
            status("paused", step)
            continue
        if mouse is not None:
            action, gripper_closed = spacemouse_action(mouse.latest(), gripper_closed)
        else:
            action, gripper_closed = keyboard_action(text, gripper_closed)
        next_obs, reward, terminated, truncated, info = env.step(action)
        recording.add(obs, action, reward, terminated, next_obs)
        obs = next_obs
        step += 1
        status("teleop", step)
        if info.get("fault"):
            console.print(f"robot fault: {info['fault']}")
        if terminated or truncated:
            return recording, bool(info.get("success", False)) and terminated
