"""Where a session's pi_BC comes from: the configured checkpoint, or scripted demos + BC training (sim), cached.

    path = ensure_bc_policy(cfg)        # runs/bc-cache/<task>-<hash>/bc  (trained once, reused after)
    cfg = with_bc_source(cfg)           # the same, with bc.checkpoint and bc.demos (the demos.hdf5 beside it) set

The cache key is a hash of everything that shapes the policy: the sim task config, the demo settings and the
BC training config. Training calls what `q2rl demos scripted`, `q2rl bc train` and `q2rl bc eval` call, with the
run config's own sections (no command-line strings in between), so what `make run` does is what a user can do by
hand. A half-built cache entry (interrupted run) is never mistaken for a finished one: the policy directory is
renamed into place only after training succeeded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

from q2rl.config import ConfigError, to_dict

BC_DIR = "bc"
DEMOS_FILE = "demos.hdf5"
BC_EVAL_FILE = "bc_eval.json"


def bc_cache_dir(cfg) -> Path:
    """runs/bc-cache/<task>-<hash of sim config, demo settings, BC training config>."""
    key = {
        "sim": to_dict(cfg.env.sim),
        "demos": [cfg.bc.demo_episodes, cfg.bc.demo_noise, cfg.bc.demo_seed],
        "train": to_dict(cfg.bc.train),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cfg.bc.cache_root) / f"{cfg.env.sim.task}-{digest}"


def ensure_bc_policy(cfg, progress: bool = True) -> str:
    """The BC checkpoint for this run (trained and cached here for sim when bc.checkpoint is empty)."""
    if cfg.bc.checkpoint:
        return cfg.bc.checkpoint
    if cfg.env.backend != "sim":
        raise ConfigError("bc.checkpoint: a real-robot run needs a trained BC policy (q2rl demos record, q2rl bc train)")
    sim = cfg.env.sim
    if not sim.privileged_state and not cfg.bc.train.cameras:
        raise ConfigError(f"bc.train.cameras: empty while env.sim.privileged_state is false: the pi_BC trained for "
                          f"this run would see only the robot's own joints (about 10 % success on pick_cube); train "
                          f"it on the cameras: bc.train.cameras=[{', '.join(sim.cameras)}]")
    from q2rl.bc.train import train_bc
    from q2rl.demos.hdf5 import read_demos
    from q2rl.demos.scripted import ScriptedDemoSpec, default_noise, record_scripted_demos

    root = bc_cache_dir(cfg)
    policy_dir = root / BC_DIR
    if (policy_dir / "policy.ckpt").is_file():
        print(f"session: using the cached BC policy {policy_dir}", flush=True)
        return str(policy_dir)
    root.mkdir(parents=True, exist_ok=True)
    demos, task = root / DEMOS_FILE, cfg.env.sim.task
    noise = default_noise(task) if cfg.bc.demo_noise < 0 else cfg.bc.demo_noise
    print(f"session: recording {cfg.bc.demo_episodes} scripted demos of {task} -> {demos}", flush=True)
    record_scripted_demos(cfg.env.sim, ScriptedDemoSpec(cfg.bc.demo_episodes, noise, cfg.bc.demo_seed), demos,
                          overwrite=True, progress=progress)
    staging = root / (BC_DIR + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    train = cfg.bc.train
    print(f"session: training pi_BC ({train.policy.kind}, {train.steps} steps) -> {policy_dir}", flush=True)
    train_bc(read_demos(demos, cameras=train.cameras), train, out_dir=staging, progress=progress)
    staging.rename(policy_dir)
    if cfg.bc.eval_episodes > 0:
        result = evaluate_bc(policy_dir, cfg.bc.eval_episodes, progress)
        (root / BC_EVAL_FILE).write_text(json.dumps(result))
        print(f"session: pi_BC alone succeeds in {100 * result['success_rate']:.0f}% of episodes", flush=True)
    return str(policy_dir)


def evaluate_bc(policy_dir: Path, episodes: int, progress: bool) -> dict:
    """What `q2rl bc eval` measures and prints for a policy directory, as a dict."""
    from q2rl.bc.cli import DEFAULT_EVAL_SEED
    from q2rl.bc.evaluate import eval_env_config, evaluate_policy
    from q2rl.core.checkpoint import load_bc_policy_with_metadata
    from q2rl.robot.sim import make_sim_env

    print(f"session: evaluating pi_BC alone over {episodes} episodes", flush=True)
    policy, meta = load_bc_policy_with_metadata(policy_dir)
    env_cfg = eval_env_config(meta)
    action = meta.get("bc_config", {}).get("eval_action", "sample")
    env = make_sim_env(env_cfg)
    try:
        result = evaluate_policy(policy, env, episodes, DEFAULT_EVAL_SEED, action, progress=progress)
    finally:
        env.close()
    return result.summary(task=env_cfg.task, policy=str(policy_dir), seed=DEFAULT_EVAL_SEED, action=action)


def with_bc_source(cfg):
    """`cfg` with bc.checkpoint filled (training and caching pi_BC for sim when it is empty) and, for a policy
    trained here, bc.demos: the demos it was trained on, which a demo buffer (rlpd, use_demos) samples."""
    if cfg.bc.checkpoint:
        return cfg
    checkpoint = ensure_bc_policy(cfg)
    demos = cfg.bc.demos or str(bc_cache_dir(cfg) / DEMOS_FILE)
    return dataclasses.replace(cfg, bc=dataclasses.replace(cfg.bc, checkpoint=checkpoint, demos=demos))


def bc_baseline(policy_dir: str | Path) -> float | None:
    """The success rate `bc eval` measured for a cached policy (None when not measured)."""
    path = Path(policy_dir).parent / BC_EVAL_FILE
    try:
        return float(json.loads(path.read_text())["success_rate"])
    except (FileNotFoundError, KeyError, ValueError):
        return None


def bc_failure_warning(checkpoint: str | Path) -> str | None:
    """A warning when pi_BC's last measured success is 0 (`q2rl bc eval`'s eval.json beside the policy, or the
    cache's bc_eval.json); None when it succeeded or was never measured."""
    folder = Path(checkpoint)
    folder = folder.parent if folder.is_file() else folder
    for path in (folder / "eval.json", folder.parent / BC_EVAL_FILE):
        try:
            result = json.loads(path.read_text())
            rate, episodes = float(result["success_rate"]), int(result.get("episodes", 0))
        except (OSError, KeyError, ValueError, TypeError):
            continue
        if rate > 0:
            return None
        return (f"pi_BC succeeded in 0% of {episodes} evaluation episodes ({path}): Q-Estimation's rollouts will "
                "hold no success to value, so the gate has nothing to keep and pi_RL starts from a failing prior. "
                "Check the demos and the BC training (q2rl bc eval) before spending the robot's time")
    return None
