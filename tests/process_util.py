"""Helpers for the tests that run the real `q2rl learner` / `q2rl actor` / `q2rl session` processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from q2rl.config import merged

REPO = Path(__file__).resolve().parents[1]


def generate_stubs(out: Path) -> Path:
    """Python stubs of protos/q2rl.proto in `out`, as a client without q2rl would build them (module q2rl_pb2)."""
    out.mkdir()
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{REPO / 'protos'}", f"--python_out={out}",
                    f"--grpc_python_out={out}", "q2rl.proto"], check=True, capture_output=True)
    return out


def tiny_agent() -> dict:
    """An agent small enough that a learner compiles and runs in seconds on this CPU."""
    return {
        "algo": "q2rl", "preset": "cpu", "hidden_dims": [64, 64], "value_hidden_dims": [64, 64],
        "ensemble_size": 2, "batch_size": 32, "utd": 1,
        "q_estimation": {"rollout_episodes": 2, "value_updates": 50, "critic_updates": 50, "actor_updates": 50,
                         "batch_size": 64},
    }


def tiny_run_config(tmp: Path, bc_checkpoint: str = "", **sections) -> Path:
    """A run config YAML for short process tests; `sections` update the defaults (section -> mapping)."""
    cfg = {
        "env": {"backend": "sim", "sim": {"task": "pick_cube", "max_episode_steps": 30}},
        "bc": {"checkpoint": bc_checkpoint, "demo_episodes": 3, "eval_episodes": 0,
               "cache_root": str(tmp / "bc-cache"), "train": {"steps": 100, "eval_every": 50}},
        "agent": tiny_agent(),
        "learner": {"run_root": str(tmp / "runs"), "publish_every_s": 0.2, "status_every_s": 0.2,
                    "checkpoint_every_s": 2.0, "actor_lost_after_s": 2.0, "ahead_steps": 50, "learning_starts": 0},
        "actor": {"eval_every_episodes": 2},
        "session": {"actors": 1, "env_steps": 200, "final_eval_episodes": 2, "refresh_s": 0.2,
                    "shutdown_timeout_s": 30.0},
    }
    cfg = merged(cfg, sections)
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def tiny_bc_policy(base: Path) -> str:
    """A BC policy trained in seconds on three scripted demos (shared by the process tests of one pytest run)."""
    from q2rl.config import load_config
    from q2rl.learner.bc_source import ensure_bc_policy
    from q2rl.run_config import RunConfig

    base.mkdir(parents=True, exist_ok=True)
    cfg = load_config(RunConfig, tiny_run_config(base))
    return ensure_bc_policy(cfg, progress=False)


def q2rl(*args: str) -> list[str]:
    return [sys.executable, "-m", "q2rl.cli", *args]


def child_env() -> dict:
    env = dict(os.environ)
    env.setdefault("MUJOCO_GL", "egl")
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def start(argv: list[str], log: Path, niceness: int = 0) -> subprocess.Popen:
    """A q2rl process writing to `log`; `niceness` > 0 lowers its CPU priority."""
    # `nice` rather than a preexec_fn: running Python code between fork and exec can deadlock under JAX threads.
    prefix = ["nice", "-n", str(niceness)] if niceness else []
    return subprocess.Popen(prefix + argv, stdout=open(log, "ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=child_env(), cwd=REPO)


def stop_in_order(*procs: subprocess.Popen, timeout_s: float = 60) -> None:
    """Ctrl-C each process in turn (actors before their learner, so the spools drain into it) and check that each
    exits cleanly."""
    for p in procs:
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout_s) == 0, f"{p.args[3:5]} exited with {p.returncode} after Ctrl-C"


def kill_left(procs) -> None:
    """SIGKILL whatever of `procs` still runs (a test's `finally`)."""
    for p in procs:
        if p.poll() is None:
            p.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def wait_for(predicate, timeout_s: float, what: str, procs: tuple = (), poll_s: float = 0.1):
    """Poll until `predicate()` is truthy (returns it); fails with `what` on timeout or if a process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{what}: process {p.args[3:5]} exited with {p.returncode}")
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
