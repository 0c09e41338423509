"""Learner updates/s in a live session as a share of the bare jitted loop (`learner_live_share`, target >= 0.9).

    python bench/live_share.py [--config configs/sim/pick_cube.yaml] [--seconds 20]

bare: the learner's own update step (replay sampling + the jitted UTD update) back to back in this process, on
      a replay filled with synthetic transitions — nothing else of q2rl running.
live: `q2rl learner` + one `q2rl actor` as processes over loopback gRPC, paced as in `make run` (the actor
      holds when it is learner.ahead_steps ahead of the updates), so the learner is the bottleneck; updates/s
      from its status file over a window in the online phase. Everything the live learner does besides
      updating (ingest, publishing, status, checkpoints, the gRPC threads, the actor sharing this 2-core
      machine) shows up as the gap. The machine is shared: compare runs by their load average.
Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def bare_updates_per_s(cfg, bc, updates: int) -> float:
    """Update calls/s of the learner's own update step with nothing else running."""
    from q2rl.interfaces import Transition
    from q2rl.learner.learner import Learner

    dim = int(bc.normalizer.state_mean.shape[-1])
    with tempfile.TemporaryDirectory() as tmp:
        learner = Learner(cfg, Path(tmp), bc, dim)
        rng = np.random.default_rng(0)
        seq = 0
        for episode in range(40):
            state = rng.normal(size=dim).astype(np.float32)
            for step in range(50):
                nxt = rng.normal(size=dim).astype(np.float32)
                a = rng.uniform(-1, 1, 7).astype(np.float32)
                learner.ingest_transition(Transition("bench", episode, step, seq, {"state": state}, a, 0.0, False,
                                                     step == 49, {"state": nxt}, a, a, 0.0, 0.0, "bc", 0))
                state, seq = nxt, seq + 1
        for _ in range(30):  # compile and warm up
            learner._update_once()
        import jax

        jax.block_until_ready(learner.state)
        t0 = time.perf_counter()
        for _ in range(updates):
            learner._update_once()
        jax.block_until_ready(learner.state)
        return updates / (time.perf_counter() - t0)


def live_updates_per_s(config: str, bc_path: str, seconds: float, tmp: Path) -> dict:
    """Updates/s of a live learner fed by one unpaced actor, from its status file."""
    from q2rl.run_dir import ADDRESS_FILE, STATUS_FILE, read_json

    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    q2rl = [sys.executable, "-m", "q2rl.cli"]
    run = tmp / "runs" / "live"
    common = [f"bc.checkpoint={bc_path}", f"learner.run_root={tmp / 'runs'}", "learner.run_name=live",
              "session.env_steps=1000000000",
              "agent.q_estimation.rollout_episodes=3", "agent.q_estimation.value_updates=300",
              "agent.q_estimation.critic_updates=300", "agent.q_estimation.actor_updates=300"]
    learner = subprocess.Popen(q2rl + ["learner", "--config", config, *common], stdout=open(tmp / "learner.log", "wb"),
                               stderr=subprocess.STDOUT, env=env, cwd=REPO)
    procs = [learner]
    try:
        while not (run / ADDRESS_FILE).is_file():
            if learner.poll() is not None:
                raise RuntimeError(f"learner exited; see {tmp / 'learner.log'}")
            time.sleep(0.2)
        actor = subprocess.Popen(q2rl + ["actor", "--config", str(run / "config.yaml"), "--learner",
                                         (run / ADDRESS_FILE).read_text().strip(), f"actor.spool_dir={tmp / 'spool'}",
                                         "actor.console=none", "actor.eval_every_episodes=0"],
                                 stdout=open(tmp / "actor.log", "wb"), stderr=subprocess.STDOUT, env=env, cwd=REPO)
        procs.append(actor)

        def status() -> dict:
            return read_json(run / STATUS_FILE) or {}  # written atomically: absent or whole

        while not (status().get("phase") == "online" and status().get("updates", 0) > 300):
            time.sleep(0.5)
        a = status()
        time.sleep(seconds)
        b = status()
        owed = b["env_steps"] - b["updates"]
        return {"updates_per_s": (b["updates"] - a["updates"]) / max(1e-9, b["updated_at"] - a["updated_at"]),
                "env_steps_per_s": (b["env_steps"] - a["env_steps"]) / max(1e-9, b["updated_at"] - a["updated_at"]),
                "backlog_at_end": owed}
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs/sim/pick_cube.yaml"))
    parser.add_argument("--seconds", type=float, default=20.0, help="live measurement window")
    parser.add_argument("--updates", type=int, default=600, help="update calls timed in the bare loop")
    args = parser.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    from q2rl.config import load_config
    from q2rl.core.checkpoint import load_bc_policy
    from q2rl.learner.bc_source import ensure_bc_policy
    from q2rl.run_config import RunConfig

    cfg = load_config(RunConfig, args.config)
    bc_path = ensure_bc_policy(cfg, progress=False)
    bare = bare_updates_per_s(cfg, load_bc_policy(bc_path), args.updates)
    print(f"bare jitted loop: {bare:.1f} update calls/s", flush=True)
    with tempfile.TemporaryDirectory(prefix="q2rl-live-") as tmp:
        live = live_updates_per_s(args.config, bc_path, args.seconds, Path(tmp))
    print(f"live session: {live['updates_per_s']:.1f} update calls/s, actor {live['env_steps_per_s']:.1f} env steps/s, "
          f"{live['backlog_at_end']} updates owed at the end (> 0: the learner was never starved)", flush=True)
    print(json.dumps({"learner_live_share": round(live["updates_per_s"] / bare, 3),
                      "bare_updates_per_s": round(bare, 1), "live_updates_per_s": round(live["updates_per_s"], 1),
                      "live_backlog_updates": live["backlog_at_end"], "load_average_1min": round(os.getloadavg()[0], 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
