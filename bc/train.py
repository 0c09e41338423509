"""Behaviour cloning: fit a policy's action distribution to demonstrations by minibatch NLL with Adam.

    dataset = read_demos("demos.hdf5", cameras=cfg.cameras)
    result = train_bc(dataset, cfg, out_dir=Path("runs/bc/pick"))     # writes policy.ckpt, metrics.jsonl
    dist, _ = result.policy.distribution(obs)

Episodes (not steps) are held out for the validation NLL, so it measures generalisation to new starts.
A recurrent policy (gmm_rnn) trains on windows of `policy.rnn_horizon` consecutive steps of one episode, from a
zero memory (robomimic's recipe); its validation NLL reads each episode in the windows a rollout sees (its memory
restarts every rnn_horizon steps).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from tqdm import tqdm

from q2rl.bc.config import BCConfig
from q2rl.config import ConfigError, dump_yaml, to_dict
from q2rl.core.checkpoint import save_bc_policy
from q2rl.core.encoders import augment_observation
from q2rl.core.normalization import ObsNormalizer
from q2rl.core.policies import BCPolicy, make_policy_net
from q2rl.demos.hdf5 import DemoDataset, Demo
from q2rl.interfaces import ACTION_DIM


class BCBatch(NamedTuple):
    """State-action pairs: obs {"state": f32[N, D], "images": {cam: u8[N, H, W, 3]}}, actions f32[N, A]; for a
    recurrent policy, windows of T steps: every leaf [N, T, ...] and `mask` [N, T] (False past an episode's end)."""

    obs: dict
    actions: Any
    mask: Any = None

    @property
    def size(self) -> int:
        return len(self.actions)

    def take(self, index: np.ndarray) -> "BCBatch":
        return jax.tree_util.tree_map(lambda x: x[index], self)


@struct.dataclass
class TrainState:
    params: Any
    opt_state: Any
    step: Any


@dataclasses.dataclass(frozen=True)
class BCResult:
    """The trained policy and how training went (NLL in nats per state-action pair, of the kept params)."""

    policy: BCPolicy
    initial_val_nll: float | None
    final_val_nll: float | None
    final_train_nll: float
    num_train_demos: int
    num_val_demos: int
    num_train_samples: int
    steps: int
    best_step: int  # the step whose parameters the policy holds (keep_best) or the last step
    seconds: float
    history: tuple[dict, ...]


def split_episodes(episodes: Sequence[Demo], val_fraction: float, rng: np.random.Generator
                   ) -> tuple[list[Demo], list[Demo]]:
    """Shuffle episodes and hold out round(val_fraction * n) of them (at least one when n >= 2)."""
    order = rng.permutation(len(episodes))
    n_val = int(round(val_fraction * len(episodes)))
    if val_fraction > 0 and len(episodes) >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, len(episodes) - 1)
    val = [episodes[i] for i in order[:n_val]]
    train = [episodes[i] for i in order[n_val:]]
    return train, val


def flatten_episodes(episodes: Sequence[Demo], cameras: Sequence[str]) -> BCBatch:
    """Concatenate episodes into one BCBatch of state-action pairs."""
    obs: dict[str, Any] = {"state": np.concatenate([e.states for e in episodes]).astype(np.float32)}
    if cameras:
        obs["images"] = {c: np.concatenate([e.images[c] for e in episodes]) for c in cameras}
    actions = np.concatenate([e.actions for e in episodes]).astype(np.float32)
    return BCBatch(obs=obs, actions=actions)


def episode_ends(episodes: Sequence[Demo]) -> np.ndarray:
    """For every step of the flattened episodes, the (exclusive) flat index where its episode ends."""
    lengths = [len(e.actions) for e in episodes]
    return np.repeat(np.cumsum(lengths), lengths)


def take_windows(data: BCBatch, ends: np.ndarray, starts: np.ndarray, horizon: int) -> BCBatch:
    """Windows of `horizon` steps from each flat index in `starts`, masked past the end of the start's episode."""
    index = starts[:, None] + np.arange(horizon)[None]
    mask = index < ends[starts][:, None]
    return data.take(np.where(mask, index, starts[:, None]))._replace(mask=mask)


def rollout_window_starts(ends: np.ndarray, horizon: int) -> np.ndarray:
    """The windows a rollout's memory sees: every episode cut at steps 0, horizon, 2 horizon, ..."""
    stops = np.unique(ends)
    begins = np.concatenate([[0], stops[:-1]])
    return np.concatenate([np.arange(b, e, horizon) for b, e in zip(begins, stops)])


def log_likelihoods(module: nn.Module, params: Any, normalizer: ObsNormalizer, batch: BCBatch,
                    dropout_key: jax.Array | None = None) -> jax.Array:
    """log pi(a|s) of every pair ([N]); for windows ([N, T]) the memory runs through each window from zero."""
    training = dropout_key is not None

    def apply(obs, carry, key):
        rngs = {"dropout": key} if training else None
        return module.apply(params, normalizer.normalize(obs), carry, training=training, rngs=rngs)

    if batch.mask is None:
        dist, _ = apply(batch.obs, module.initial_carry(len(batch.actions)), dropout_key)
        return dist.log_prob(batch.actions)
    n, horizon = batch.mask.shape
    time_major = lambda x: jnp.swapaxes(x, 0, 1)
    keys = jax.random.split(dropout_key if training else jax.random.PRNGKey(0), horizon)

    def step(carry, xs):
        obs, actions, key = xs
        dist, carry = apply(obs, carry, key)
        return carry, dist.log_prob(actions)

    xs = (jax.tree_util.tree_map(time_major, batch.obs), time_major(batch.actions), keys)
    _, logp = jax.lax.scan(step, module.initial_carry(n), xs)
    return time_major(logp)


def nll_loss(module: nn.Module, params: Any, normalizer: ObsNormalizer, batch: BCBatch,
             dropout_key: jax.Array | None = None) -> jax.Array:
    """Mean negative log-likelihood of the batch's actions under the policy (nats per pair)."""
    logp = log_likelihoods(module, params, normalizer, batch, dropout_key)
    if batch.mask is None:
        return -jnp.mean(logp)
    return -jnp.sum(logp * batch.mask) / jnp.maximum(jnp.sum(batch.mask), 1)


def make_optimizer(cfg: BCConfig) -> optax.GradientTransformation:
    schedule = optax.cosine_decay_schedule(cfg.learning_rate, cfg.steps, alpha=0.1)
    adam = optax.adamw(schedule, weight_decay=cfg.weight_decay) if cfg.weight_decay > 0 else optax.adam(schedule)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), adam) if cfg.grad_clip_norm > 0 else adam


def add_state_noise(key: jax.Array, obs: dict, normalizer: ObsNormalizer, noise_std: float) -> dict:
    """Gaussian noise of `noise_std` normalised units on the state (regularises low-dim BC)."""
    if noise_std <= 0:
        return obs
    noise = jax.random.normal(key, jnp.shape(obs["state"])) * noise_std * normalizer.state_std
    return {**obs, "state": obs["state"] + noise}


def augment_windows(key: jax.Array, obs: dict, pad: int) -> dict:
    """Random-shift augmentation of a batch of pairs or of windows (images [N, T, H, W, 3]: one shift per frame)."""
    images = obs.get("images") or {}
    lead = next(iter(images.values())).shape[:-3] if images else ()
    if len(lead) < 2:
        return augment_observation(key, obs, pad)
    flat = {**obs, "images": {c: v.reshape(-1, *v.shape[-3:]) for c, v in images.items()}}
    shifted = augment_observation(key, flat, pad)["images"]
    return {**obs, "images": {c: v.reshape(*lead, *v.shape[-3:]) for c, v in shifted.items()}}


def make_train_step(module: nn.Module, optimizer: optax.GradientTransformation, normalizer: ObsNormalizer,
                    image_shift_pad: int, state_noise_std: float = 0.0):
    """The jitted update (state, batch, key) -> (state, metrics)."""

    def train_step(state: TrainState, batch: BCBatch, key: jax.Array) -> tuple[TrainState, dict]:
        aug_key, noise_key, dropout_key = jax.random.split(key, 3)
        obs = augment_windows(aug_key, batch.obs, image_shift_pad)
        batch = batch._replace(obs=add_state_noise(noise_key, obs, normalizer, state_noise_std))
        loss, grads = jax.value_and_grad(
            lambda p: nll_loss(module, p, normalizer, batch, dropout_key))(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"nll": loss, "grad_norm": optax.tree.norm(grads)}
        return TrainState(params, opt_state, state.step + 1), metrics

    return jax.jit(train_step)


def make_eval_nll(module: nn.Module, normalizer: ObsNormalizer, chunk: int = 512, horizon: int | None = None):
    """Mean NLL over a whole BCBatch of flattened episodes, in fixed-size jitted chunks (one compilation for any
    dataset size); `eval_nll(params, data, ends)`. With `horizon` (a recurrent policy) the episodes are read in the
    windows a rollout sees (rollout_window_starts), chunk // horizon windows per call."""
    rows = chunk if horizon is None else max(1, chunk // horizon)

    @jax.jit
    def chunk_nll(params: Any, batch: BCBatch, weight: jax.Array) -> jax.Array:
        logp = log_likelihoods(module, params, normalizer, batch)
        return -jnp.sum(logp * (weight if batch.mask is None else weight[:, None] * batch.mask))

    def eval_nll(params: Any, data: BCBatch, ends: np.ndarray) -> float:
        starts = np.arange(data.size) if horizon is None else rollout_window_starts(ends, horizon)
        total = 0.0
        for first in range(0, len(starts), rows):
            index = np.arange(first, first + rows)
            valid = index < len(starts)
            picked = starts[np.where(valid, index, 0)]
            batch = data.take(picked) if horizon is None else take_windows(data, ends, picked, horizon)
            total += float(chunk_nll(params, batch, valid.astype(np.float32)))
        return total / max(1, data.size)

    return eval_nll


def select_episodes(dataset: DemoDataset, cfg: BCConfig) -> list[Demo]:
    """The demos BC trains on: the first max_demos, successes only if configured."""
    episodes = list(dataset.episodes[:cfg.max_demos] if cfg.max_demos else dataset.episodes)
    if cfg.successes_only:
        episodes = [e for e in episodes if e.success]
    if not episodes:
        raise ConfigError(f"successes_only: {dataset.path} has no successful demos to train on; "
                          "set bc.successes_only=false or record more demos")
    missing = [c for c in cfg.cameras if c not in episodes[0].images]
    if missing:
        raise ConfigError(f"cameras: {missing} not loaded from {dataset.path}; read the demos with these cameras")
    return episodes


def train_bc(dataset: DemoDataset, cfg: BCConfig, out_dir: Path | None = None, progress: bool = True) -> BCResult:
    """Train a BC policy on `dataset`; with `out_dir`, write policy.ckpt, bc_config.yaml and metrics.jsonl."""
    if dataset.action_dim != ACTION_DIM:  # the actor, the learner and the robots all act in this contract
        raise ConfigError(
            f"bc.demos: {dataset.path} holds {dataset.action_dim}-D actions, but q2rl policies act in {ACTION_DIM}-D "
            "(dx, dy, dz, droll, dpitch, dyaw, gripper); record the demos with `q2rl demos` for this action contract")
    rng = np.random.default_rng(cfg.seed)
    train_eps, val_eps = split_episodes(select_episodes(dataset, cfg), cfg.val_fraction, rng)
    train_data, train_ends = flatten_episodes(train_eps, cfg.cameras), episode_ends(train_eps)
    val_data = flatten_episodes(val_eps, cfg.cameras) if val_eps else None
    val_ends = episode_ends(val_eps) if val_eps else None
    normalizer = ObsNormalizer.fit(train_data.obs["state"])
    module = make_policy_net(cfg.policy, dataset.action_dim, cfg.cameras)
    # a recurrent policy trains on windows: as many as make up batch_size state-action pairs
    horizon = cfg.policy.rnn_horizon if cfg.policy.kind == "gmm_rnn" else None

    key = jax.random.PRNGKey(cfg.seed)
    key, init_key = jax.random.split(key)
    params = module.init(init_key, normalizer.normalize(train_data.take(np.arange(2)).obs), module.initial_carry(2))
    optimizer = make_optimizer(cfg)
    state = TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))
    train_step = make_train_step(module, optimizer, normalizer, cfg.image_shift_pad if cfg.cameras else 0,
                                 cfg.state_noise_std)
    eval_nll = make_eval_nll(module, normalizer, horizon=horizon)

    metrics_file = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        dump_yaml(cfg, out_dir / "bc_config.yaml")
        metrics_file = (out_dir / "metrics.jsonl").open("w")

    def record(step: int, train_nll: float) -> dict:
        row = {"step": step, "train_nll": train_nll,
               "val_nll": eval_nll(state.params, val_data, val_ends) if val_data is not None else None}
        history.append(row)
        if row["val_nll"] is not None and row["val_nll"] < best["val_nll"]:
            best.update(val_nll=row["val_nll"], step=step, params=state.params)
        if metrics_file is not None:
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()
        return row

    history: list[dict] = []
    best: dict = {"val_nll": float("inf"), "step": 0, "params": state.params}
    initial = record(0, eval_nll(state.params, train_data, train_ends))
    start = time.perf_counter()
    bar = tqdm(range(1, cfg.steps + 1), desc="bc train", unit="step", disable=not progress, mininterval=0.5)
    running = None
    for step in bar:
        if horizon is None:
            batch = train_data.take(rng.integers(0, train_data.size, cfg.batch_size))
        else:
            starts = rng.integers(0, train_data.size, -(-cfg.batch_size // horizon))
            batch = take_windows(train_data, train_ends, starts, horizon)
        key, step_key = jax.random.split(key)
        state, metrics = train_step(state, batch, step_key)
        evaluate = step % cfg.eval_every == 0 or step == cfg.steps
        if step % 50 == 0 or evaluate:
            running = float(metrics["nll"])  # the minibatch's NLL; fetching it every step would slow training
            bar.set_postfix(nll=f"{running:.3f}", refresh=False)
        if evaluate:
            row = record(step, running)
            if row["val_nll"] is not None:
                bar.set_postfix(nll=f"{running:.3f}", val_nll=f"{row['val_nll']:.3f}", refresh=False)
    seconds = time.perf_counter() - start
    bar.close()
    if metrics_file is not None:
        metrics_file.close()

    use_best = cfg.keep_best and val_data is not None
    params, kept_step = (best["params"], best["step"]) if use_best else (state.params, cfg.steps)
    policy = BCPolicy(module=module, params=jax.device_get(params), normalizer=normalizer)
    result = BCResult(
        policy=policy, initial_val_nll=initial["val_nll"],
        final_val_nll=eval_nll(params, val_data, val_ends) if val_data is not None else None,
        final_train_nll=eval_nll(params, train_data, train_ends), best_step=kept_step, num_train_demos=len(train_eps),
        num_val_demos=len(val_eps), num_train_samples=train_data.size, steps=cfg.steps, seconds=seconds,
        history=tuple(history),
    )
    if out_dir is not None:
        image_shapes = {c: train_data.obs["images"][c].shape[1:] for c in cfg.cameras}
        save_bc_policy(out_dir, policy, cfg.policy, state_dim=dataset.state_dim, action_dim=dataset.action_dim,
                       image_shapes=image_shapes, extra={
                           "bc_config": to_dict(cfg), "env_args": dataset.env_args, "demos": dataset.path,
                           "num_train_demos": result.num_train_demos, "num_val_demos": result.num_val_demos,
                           "final_val_nll": result.final_val_nll, "final_train_nll": result.final_train_nll, "kept_step": kept_step,
                       })
    return result
