"""Where a session's pi_BC comes from: the configured checkpoint, or scripted demos + BC training (sim), cached.

    path = ensure_bc_policy(cfg)        # runs/bc-cache/<task>-<hash>/bc  (trained once, reused after)
    cfg = with_bc_source(cfg)           # the same, with bc.checkpoint and bc.demos (the demos.hdf5 beside it) set

The cache key is a hash of everything that shapes the policy: the sim task config, the demo settings and the
BC training config. Training runs the ordinary commands (`q2rl demos scripted`, `q2rl bc train`,
`q2rl bc eval`) as child processes, so what `make run` does is exactly what a user can do by hand. A
half-built cache entry (interrupted run) is never mistaken for a finished one: the policy directory is
renamed into place only after training succeeded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
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


def _sets(prefix: str, tree: dict) -> list[str]:
    """--set FIELD=VALUE arguments for every leaf of a config mapping (values as JSON, which YAML reads)."""
    out = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _sets(f"{prefix}{key}.", value)
        else:
            out += ["--set", f"{prefix}{key}={json.dumps(value)}"]
    return out


def _run(argv: list[str], what: str) -> str:
    print(f"session: {what}", flush=True)
    proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit code {proc.returncode}): {' '.join(argv)}")
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""


def ensure_bc_policy(cfg, progress: bool = True) -> str:
    """The BC checkpoint for this run (trained and cached here for sim when bc.checkpoint is empty)."""
    if cfg.bc.checkpoint:
        return cfg.bc.checkpoint
    if cfg.env.backend != "sim":
        raise ConfigError("bc.checkpoint: a real-robot run needs a trained BC policy (q2rl demos record, q2rl bc train)")
    root = bc_cache_dir(cfg)
    policy_dir = root / BC_DIR
    if (policy_dir / "policy.ckpt").is_file():
        print(f"session: using the cached BC policy {policy_dir}", flush=True)
        return str(policy_dir)
    root.mkdir(parents=True, exist_ok=True)
    q2rl = [sys.executable, "-m", "q2rl.cli"]
    quiet = [] if progress else ["--no-progress"]
    demos = root / DEMOS_FILE
    sim = to_dict(cfg.env.sim)
    sim_sets = _sets("", {k: v for k, v in sim.items() if k != "task"})
    argv = q2rl + ["demos", "scripted", "--task", cfg.env.sim.task, "--episodes", str(cfg.bc.demo_episodes),
                   "--seed", str(cfg.bc.demo_seed), "--out", str(demos), "--force", *sim_sets, *quiet]
    if cfg.bc.demo_noise >= 0:
        argv += ["--noise", str(cfg.bc.demo_noise)]
    _run(argv, f"recording {cfg.bc.demo_episodes} scripted demos of {cfg.env.sim.task} -> {demos}")
    staging = root / (BC_DIR + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    _run(q2rl + ["bc", "train", "--demos", str(demos), "--out", str(staging), *_sets("", to_dict(cfg.bc.train)), *quiet],
         f"training pi_BC ({cfg.bc.train.policy.kind}, {cfg.bc.train.steps} steps) -> {policy_dir}")
    staging.rename(policy_dir)
    if cfg.bc.eval_episodes > 0:
        line = _run(q2rl + ["bc", "eval", "--policy", str(policy_dir), "--episodes", str(cfg.bc.eval_episodes), *quiet],
                    f"evaluating pi_BC alone over {cfg.bc.eval_episodes} episodes")
        try:
            result = json.loads(line)
            (root / BC_EVAL_FILE).write_text(json.dumps(result))
            print(f"session: pi_BC alone succeeds in {100 * result['success_rate']:.0f}% of episodes", flush=True)
        except (json.JSONDecodeError, KeyError):
            pass
    return str(policy_dir)


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
