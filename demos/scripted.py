"""Record scripted-expert demonstrations in the simulator into a robomimic-layout HDF5 file.

    summary = record_scripted_demos(SimEnvConfig(task="pick_cube"), ScriptedDemoSpec(episodes=50, noise=0.3),
                                    out="demos.hdf5")

Demo i resets with seed `seed + i`; the expert's imperfections come from one np.random.Generator(seed),
so the same arguments give the same file.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from q2rl.config import ConfigError, to_dict
from q2rl.demos.hdf5 import DemoWriter, Demo

KeepPolicy = Literal["all", "successes-only"]
# Defaults chosen so BC on pick_cube lands in the middle of the success range (see the BC report / README).
DEFAULT_EPISODES = 20
# Per base task: the same noise is harder on some tasks (peg_insert's expert drops to ~20% success at 0.3).
DEFAULT_NOISE = {"pick_cube": 0.3, "peg_insert": 0.2, "kitting": 0.3}


def default_noise(task: str) -> float:
    """The expert imperfection used when none is given (shifted variants share their base task's)."""
    return DEFAULT_NOISE.get(task.removesuffix("_shifted"), 0.3)


@dataclasses.dataclass(frozen=True)
class ScriptedDemoSpec:
    """What to record: how many demos, how imperfect, which ones to keep."""

    episodes: int = DEFAULT_EPISODES
    noise: float = DEFAULT_NOISE["pick_cube"]
    seed: int = 0
    keep: KeepPolicy = "successes-only"
    max_attempts_factor: int = 10  # successes-only: give up after episodes * this many attempts

    def validate(self) -> None:
        if self.episodes < 1:
            raise ConfigError(f"episodes: must be >= 1, got {self.episodes}")
        if self.noise < 0:
            raise ConfigError(f"noise: must be >= 0, got {self.noise}")
        if self.keep not in ("all", "successes-only"):
            raise ConfigError(f"keep: {self.keep!r} must be 'all' or 'successes-only'")


@dataclasses.dataclass(frozen=True)
class RecordSummary:
    """What a recording run produced."""

    out: str
    task: str
    written: int
    attempts: int
    expert_successes: int
    mean_length: float

    @property
    def expert_success_rate(self) -> float:
        return self.expert_successes / max(1, self.attempts)


def env_args_for(env_cfg: Any, spec: ScriptedDemoSpec) -> dict:
    """robomimic-style env metadata: name, type, the full env config, and how the demos were made."""
    return {
        "env_name": env_cfg.task,
        "type": "q2rl_sim",
        "env_kwargs": to_dict(env_cfg),
        "demo_source": {"kind": "scripted", "noise": spec.noise, "seed": spec.seed, "keep": spec.keep},
    }


def _copy_obs(obs: dict, cameras: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return np.array(obs["state"], np.float32), {c: np.array(obs["images"][c], np.uint8) for c in cameras}


def run_expert_episode(env: Any, expert: Any, seed: int, cameras: tuple[str, ...]) -> Demo:
    """One episode of the expert, as a Demo (actions as executed: clipped to [-1, 1])."""
    from q2rl.robot.sim.experts import expert_observation

    obs, _ = env.reset(seed=seed)
    expert.reset()
    states, images, actions, rewards, dones = [], {c: [] for c in cameras}, [], [], []
    next_states, next_images = [], {c: [] for c in cameras}
    success, done = False, False
    while not done:
        state, imgs = _copy_obs(obs, cameras)
        action = np.clip(np.asarray(expert.act(expert_observation(env)), np.float32), -1.0, 1.0)
        obs, reward, terminated, truncated, info = env.step(action)
        next_state, next_imgs = _copy_obs(obs, cameras)
        states.append(state)
        next_states.append(next_state)
        for c in cameras:
            images[c].append(imgs[c])
            next_images[c].append(next_imgs[c])
        actions.append(action)
        rewards.append(float(reward))
        dones.append(bool(terminated))
        success = success or bool(info.get("success", False))
        done = terminated or truncated
    stack = lambda xs: {c: np.stack(v) for c, v in xs.items()}
    return Demo(
        states=np.stack(states), actions=np.stack(actions), rewards=np.asarray(rewards, np.float32),
        dones=np.asarray(dones, bool), images=stack(images), next_states=np.stack(next_states),
        next_images=stack(next_images), success=success, seed=seed,
    )


def record_scripted_demos(env_cfg: Any, spec: ScriptedDemoSpec, out: str | Path, overwrite: bool = False,
                          progress: bool = True) -> RecordSummary:
    """Roll out the task's scripted expert and stream the kept episodes into `out`."""
    from q2rl.robot.sim import make_sim_env
    from q2rl.robot.sim.experts import make_expert

    spec.validate()
    if env_cfg.cameras:
        os.environ.setdefault("MUJOCO_GL", "egl")
    env = make_sim_env(env_cfg)
    expert = make_expert(env_cfg.task, spec.noise, np.random.default_rng(spec.seed), env_cfg)
    cameras = tuple(env_cfg.cameras)
    max_attempts = spec.episodes if spec.keep == "all" else spec.episodes * spec.max_attempts_factor
    attempts = successes = 0
    lengths = []
    bar = tqdm(total=spec.episodes, desc=f"demos {env_cfg.task}", unit="demo", disable=not progress)
    try:
        with DemoWriter(out, env_args_for(env_cfg, spec), overwrite=overwrite) as writer:
            while writer.num_demos < spec.episodes and attempts < max_attempts:
                episode = run_expert_episode(env, expert, spec.seed + attempts, cameras)
                attempts += 1
                successes += episode.success
                if episode.success or spec.keep == "all":
                    writer.add(episode)
                    lengths.append(len(episode))
                    bar.update(1)
                bar.set_postfix(expert_success=f"{successes / attempts:.2f}", refresh=False)
            written = writer.num_demos
    finally:
        bar.close()
        env.close()
    if written < spec.episodes:
        raise RuntimeError(
            f"only {written} of {spec.episodes} demos succeeded in {attempts} attempts (expert success "
            f"{successes / attempts:.0%}); lower --noise or use --keep all. {out} holds the {written} recorded"
        )
    return RecordSummary(out=os.fspath(out), task=env_cfg.task, written=written, attempts=attempts,
                         expert_successes=successes, mean_length=float(np.mean(lengths)))
