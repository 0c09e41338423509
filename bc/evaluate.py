"""Evaluate a BC policy in the simulator: success rate, return and length over seeded episodes.

    policy, meta = load_bc_policy_with_metadata("runs/bc/pick")
    env = make_sim_env(eval_env_config(meta, task="pick_cube"))
    result = evaluate_policy(policy, env, episodes=50, seed=10_000)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, get_args

import jax
import numpy as np
from tqdm import tqdm

from q2rl.bc.config import ActionMode
from q2rl.config import ConfigError, from_dict
from q2rl.core.policies import BCPolicy
from q2rl.interfaces import policy_obs


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Per-episode outcomes of an evaluation."""

    successes: tuple[bool, ...]
    returns: tuple[float, ...]
    lengths: tuple[int, ...]

    @property
    def success_rate(self) -> float:
        return float(np.mean(self.successes)) if self.successes else 0.0

    def summary(self, **leading: Any) -> dict:
        """A flat dict for the JSON line; `success_rate` is deliberately the last key."""
        return {
            **leading,
            "episodes": len(self.successes),
            "mean_return": float(np.mean(self.returns)) if self.returns else 0.0,
            "mean_length": float(np.mean(self.lengths)) if self.lengths else 0.0,
            "success_rate": self.success_rate,
        }


def eval_env_config(metadata: Mapping[str, Any], task: str | None = None, max_episode_steps: int | None = None):
    """The SimEnvConfig a policy was trained for (from its demos' env_args), with the task swapped if asked."""
    from q2rl.robot.sim.config import SimEnvConfig

    env_args = metadata.get("env_args") or {}
    kwargs = dict(env_args.get("env_kwargs") or {})
    if task is not None:
        kwargs["task"] = task
    kwargs["cameras"] = list(metadata.get("camera_names", ()))
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = max_episode_steps
    try:
        return from_dict(SimEnvConfig, kwargs)
    except ConfigError as e:
        raise ConfigError(f"env_args of the policy's demos do not make a sim env config: {e}") from None


def make_act_fn(action_mode: ActionMode):
    """Jitted (policy, obs, key, carry) -> (action, carry) for a single observation."""
    if action_mode not in get_args(ActionMode):
        allowed = " or ".join(repr(mode) for mode in get_args(ActionMode))
        raise ConfigError(f"eval_action: {action_mode!r} must be {allowed}")
    deterministic = action_mode == "mode"
    return jax.jit(lambda policy, obs, key, carry: policy.act(obs, key, carry, deterministic))


def evaluate_policy(policy: BCPolicy, env: Any, episodes: int, seed: int, action_mode: ActionMode = "sample",
                    progress: bool = True) -> EvalResult:
    """Run `episodes` episodes (reset seeds seed, seed+1, ...); actions clipped to the [-1, 1] box."""
    act = make_act_fn(action_mode)
    cameras = policy.camera_names
    key = jax.random.PRNGKey(seed)
    successes, returns, lengths = [], [], []
    bar = tqdm(range(episodes), desc="bc eval", unit="ep", disable=not progress)
    for i in bar:
        obs, _ = env.reset(seed=seed + i)
        carry = policy.initial_carry()  # a recurrent policy's memory starts fresh every episode
        done, total, steps, success = False, 0.0, 0, False
        while not done:
            key, step_key = jax.random.split(key)
            action, carry = act(policy, policy_obs(obs, cameras), step_key, carry)
            action = np.clip(np.asarray(action), -1.0, 1.0)
            obs, reward, terminated, truncated, info = env.step(action)
            total += float(reward)
            steps += 1
            success = success or bool(info.get("success", False))
            done = terminated or truncated
        successes.append(success)
        returns.append(total)
        lengths.append(steps)
        bar.set_postfix(success_rate=f"{np.mean(successes):.2f}", refresh=False)
    bar.close()
    return EvalResult(tuple(successes), tuple(returns), tuple(lengths))
