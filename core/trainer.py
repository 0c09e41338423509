"""In-process training: the actor loop and the learner loop in one process, using the same functions the
gRPC actor and learner call (gate, ReplayBuffer.add, QEstimation.fit, update). For tests and benchmarks.

    trainer = Trainer(agent, make_env, bc_policy, TrainerConfig(online_steps=5000))
    result = trainer.run()        # eval curve (success, BC share vs env steps), phase-1 report

Env steps are counted over every training interaction, phase-1 BC rollouts included; evaluation episodes
run on a separate env instance and are not counted.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np

from q2rl.config import ConfigError, doc
from q2rl.core.agents import Agent
from q2rl.core.q_estimation import QEstimationReport
from q2rl.core.replay import ReplayBuffer, RewardShaping, demo_buffer, sample_mixed, stack_batches
from q2rl.core.sac import AgentParams, SacState
from q2rl.interfaces import Transition


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """Budget and bookkeeping of an in-process run."""

    online_steps: int = doc(20000, "Env steps of online RL after phase 1 (phase-1 rollouts come on top).")
    eval_every: int = doc(2000, "Env steps between evaluations.")
    eval_episodes: int = doc(20, "Episodes per evaluation (on a separate env).")
    replay_capacity: int = doc(200_000, "Transitions the replay holds.")
    learning_starts: int = doc(500, "Transitions in replay before the first update.")
    updates_every: int = doc(1, "Env steps per update call (each call runs `utd` critic minibatches).")
    seed: int = doc(0, "Seed of parameters, actions and the training episodes' resets.")
    eval_seed: int = doc(1_000_000, "First reset seed of evaluation episodes (same seeds at every evaluation).")
    eval_deterministic: bool = doc(False, "Evaluate with modes (BC and RL); default: the gate exactly as it "
                                          "runs on the robot (sampled actions), like `q2rl bc eval`'s default.")
    paired_eval: bool = doc(False, "Evaluate every point a second time with the other protocol (sampled if "
                                   "eval_deterministic, else modes) on the same parameters and resets, so the two "
                                   "protocols compare without seed noise (EvalPoint.other_protocol_*).")

    def validate(self) -> None:
        if self.online_steps < 0 or self.eval_every < 1 or self.eval_episodes < 0 or self.updates_every < 1:
            raise ConfigError("online_steps >= 0, eval_every >= 1, eval_episodes >= 0, updates_every >= 1")


class EvalPoint(NamedTuple):
    """One evaluation: success rate at `env_steps`, and the share of BC actions executed and the success rate of the
    training episodes finished since the last one (NaN when none finished). `eval_bc_share` is the BC share in the
    evaluation episodes themselves; the `other_protocol_*` fields are NaN unless TrainerConfig.paired_eval.
    `train_episodes_total` and `train_successes_total` count every training episode finished so far, Q-Estimation's
    rollouts included: the success data in replay, against which a climb's timing can be read (None in curves saved
    before they were recorded)."""

    env_steps: int
    success_rate: float
    bc_share: float
    updates: int
    wall_s: float
    train_success: float = float("nan")
    eval_bc_share: float = float("nan")
    other_protocol_success: float = float("nan")
    other_protocol_bc_share: float = float("nan")
    train_episodes_total: int | None = None
    train_successes_total: int | None = None


class TrainResult(NamedTuple):
    curve: list[EvalPoint]
    q_estimation: QEstimationReport | None
    params: AgentParams


def policy_obs(obs: dict, cameras: Sequence[str]) -> dict:
    """Only the parts of an observation the networks read (a fixed structure for the jitted functions)."""
    out: dict = {"state": np.asarray(obs["state"], np.float32)}
    if cameras:
        out["images"] = {c: obs["images"][c] for c in cameras}
    return out


def evaluate(agent: Agent, params: AgentParams, env: Any, episodes: int, seed: int, key: jax.Array,
             cameras: Sequence[str] = (), use_bc: bool = False, deterministic: bool = False) -> tuple[float, float]:
    """(success rate, BC share) of episodes with reset seeds seed, seed+1, ... (pi_BC alone when use_bc)."""
    successes, bc_steps, steps = [], 0, 0
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done, success = False, False
        while not done:
            key, sub = jax.random.split(key)
            o = policy_obs(obs, cameras)
            if use_bc:
                act = agent.bc_mode_act if deterministic else agent.bc_act
                action, used_rl = act(params, o, sub), False
            else:
                action, info = (agent.eval_gate if deterministic else agent.gate)(params, o, sub)
                used_rl = bool(info.use_rl)
            obs, _, terminated, truncated, info_env = env.step(np.asarray(action))
            bc_steps += not used_rl
            steps += 1
            success = success or bool(info_env.get("success", False))
            done = terminated or truncated
        successes.append(success)
    return float(np.mean(successes)) if successes else float("nan"), bc_steps / max(steps, 1)


class Trainer:
    """Runs phase 1 (for the Q2RL family) and online RL against `make_env()` envs, all in this process."""

    def __init__(self, agent: Agent, make_env: Callable[[], Any], bc: Any, cfg: TrainerConfig = TrainerConfig(),
                 demos: Sequence[Any] = (), cameras: Sequence[str] = (), log: Callable[[str], None] = print):
        self.agent, self.cfg, self.bc, self.cameras, self.log = agent, cfg, bc, tuple(cameras), log
        self.env, self.eval_env = make_env(), make_env()
        self.replay = ReplayBuffer(cfg.replay_capacity, action_dim=agent.nets.action_dim)
        # demos.hdf5 episodes; only algorithms that sample a demo buffer keep one
        self.demos = demo_buffer(demos, agent.nets.action_dim, cameras) if agent.spec.uses_demos else None
        a = agent.cfg
        self.shaping = RewardShaping(a.reward_scale, a.reward_bias, a.discount)
        self.rng = np.random.default_rng(cfg.seed)
        self.env_steps = 0
        self.episode_id = 0
        self._obs: dict | None = None
        self._bc_since_eval = [0, 0]
        self.last_metrics: Any = None
        self._train_outcomes: list[bool] = []  # since the last evaluation
        self._successes_total = 0  # of all finished training episodes; their number is episode_id

    # ---- actor side
    def _reset(self) -> dict:
        obs, _ = self.env.reset(seed=int(self.rng.integers(2**31)))
        return obs

    def collect_step(self, params: AgentParams, key: jax.Array, version: int, bc_only: bool = False,
                     random: bool = False) -> bool:
        """One env step with the gate (or pure BC, or a uniform action), added to replay; True when the episode
        ended."""
        if self._obs is None:
            self._obs = self._reset()
        o = policy_obs(self._obs, self.cameras)
        if bc_only:
            action = np.asarray(self.agent.bc_act(params, o, key))
            a_bc, a_rl, q_bc, q_rl, use_rl = action, action, 0.0, 0.0, False
        elif random:
            action = np.asarray(self.agent.random_act(key))
            a_bc, a_rl, q_bc, q_rl, use_rl = action, action, 0.0, 0.0, True
        else:
            action, info = self.agent.gate(params, o, key)
            action = np.asarray(action)
            a_bc, a_rl = np.asarray(info.a_bc), np.asarray(info.a_rl)
            q_bc, q_rl, use_rl = float(info.q_bc), float(info.q_rl), bool(info.use_rl)
        next_obs, reward, terminated, truncated, _ = self.env.step(action)
        self.replay.add(Transition(
            actor_id="local", episode_id=self.episode_id, step=0, seq=self.env_steps, obs=o, action=action,
            reward=float(reward), terminated=bool(terminated), truncated=bool(truncated),
            next_obs=policy_obs(next_obs, self.cameras), a_bc=a_bc, a_rl=a_rl, q_bc=q_bc, q_rl=q_rl,
            source="rl" if use_rl else "bc", param_version=version))
        self.env_steps += 1
        self._bc_since_eval[0] += not use_rl
        self._bc_since_eval[1] += 1
        done = bool(terminated or truncated)
        self._obs = None if done else next_obs
        if done:
            self.episode_id += 1
            self._train_outcomes.append(bool(terminated))
            self._successes_total += bool(terminated)
        return done

    # ---- learner side
    def sample_batches(self) -> Any:
        """`utd` minibatches stacked on a leading axis (demos 50/50 when the algorithm uses them)."""
        a = self.agent.cfg
        return stack_batches([sample_mixed(self.rng, self.replay, self.demos, a.batch_size, self.shaping, a.n_step,
                                           a.demo_fraction) for _ in range(a.utd)])

    def _eval(self, params: AgentParams, key: jax.Array, updates: int, t0: float, curve: list[EvalPoint],
              use_bc: bool = False) -> None:
        if self.cfg.eval_episodes == 0:
            return
        success, eval_bc_share = evaluate(self.agent, params, self.eval_env, self.cfg.eval_episodes,
                                          self.cfg.eval_seed, key, self.cameras, use_bc,
                                          self.cfg.eval_deterministic)
        other_success, other_bc_share = float("nan"), float("nan")
        if self.cfg.paired_eval:
            other_success, other_bc_share = evaluate(
                self.agent, params, self.eval_env, self.cfg.eval_episodes, self.cfg.eval_seed,
                jax.random.fold_in(key, 1), self.cameras, use_bc, not self.cfg.eval_deterministic)
        bc, total = self._bc_since_eval
        share = bc / total if total else eval_bc_share
        self._bc_since_eval = [0, 0]
        train_success = float(np.mean(self._train_outcomes)) if self._train_outcomes else float("nan")
        curve.append(EvalPoint(self.env_steps, success, share, updates, time.time() - t0, train_success,
                               eval_bc_share, other_success, other_bc_share, self.episode_id,
                               self._successes_total))
        self._train_outcomes = []
        m = self.last_metrics
        extra = "" if m is None else (f" critic_loss={float(m.critic.critic_loss):.3g} q={float(m.critic.q_mean):.3g}"
                                      f" actor_q={-float(m.actor.q_term):.3g} bc_nll={float(m.actor.bc_nll):.3g}"
                                      f" q_head_std_data={float(m.critic.q_head_std):.3g}"
                                      f" q_head_std_policy={float(m.actor.q_head_std):.3g}")
        if m is not None and self.agent.cfg.calibrated_conservatism > 0:
            extra += f" conservative_term={float(m.critic.conservative_term):.3g}"
        other = (f" other_protocol_success={other_success:.2f} other_protocol_bc_share={other_bc_share:.2f}"
                 if self.cfg.paired_eval else "")
        self.log(f"[{self.agent.cfg.algo}] env_steps={self.env_steps} success={success:.2f}{other} "
                 f"bc_share={share:.2f} eval_bc_share={eval_bc_share:.2f} train_success={train_success:.2f} "
                 f"updates={updates} t={time.time() - t0:.0f}s{extra}")

    def run(self) -> TrainResult:
        """Phase 1 (if the algorithm has one), then `online_steps` env steps with updates and evaluations."""
        agent, cfg = self.agent, self.cfg
        key = jax.random.PRNGKey(cfg.seed)
        key, k_init = jax.random.split(key)
        example = policy_obs(self._reset_eval_example(), self.cameras)
        params = agent.init_params(k_init, example, self.bc)
        curve: list[EvalPoint] = []
        t0 = time.time()
        report = None
        if agent.spec.needs_bc:
            key, k_eval = jax.random.split(key)
            self._eval(params, k_eval, 0, t0, curve, use_bc=True)
        if agent.spec.q_estimation:
            episodes = 0
            while episodes < agent.cfg.q_estimation.rollout_episodes:
                key, k = jax.random.split(key)
                episodes += self.collect_step(params, k, 0, bc_only=True)
            rollouts = [self.replay.export_episode(*k) for k in self.replay.completed_episodes]
            key, k_fit = jax.random.split(key)
            params, report = agent.q_estimation.fit(params, rollouts, k_fit, init_critic=agent.spec.init_critic)
            self.log(f"[{agent.cfg.algo}] Q-Estimation: {report}")
            key, k_eval = jax.random.split(key)
            self._bc_since_eval = [0, 0]
            self._eval(params, k_eval, 0, t0, curve)
        if not agent.spec.trains:
            for _ in range(cfg.online_steps):
                key, k = jax.random.split(key)
                self.collect_step(params, k, 0)
                if self.env_steps % cfg.eval_every == 0:
                    key, k_eval = jax.random.split(key)
                    self._eval(params, k_eval, 0, t0, curve, use_bc=True)
            return TrainResult(curve, report, params)
        state = agent.init_state(params)
        updates = 0
        for i in range(cfg.online_steps):
            key, k_act, k_update = jax.random.split(key, 3)
            self.collect_step(state.params, k_act, updates, random=i < self.agent.cfg.random_steps)
            if len(self.replay) >= cfg.learning_starts and i % cfg.updates_every == 0:
                state, self.last_metrics = agent.update(state, self.sample_batches(), k_update)
                updates += 1
            if (i + 1) % cfg.eval_every == 0 or i + 1 == cfg.online_steps:
                key, k_eval = jax.random.split(key)
                self._eval(state.params, k_eval, updates, t0, curve)
        return TrainResult(curve, report, state.params)

    def _reset_eval_example(self) -> dict:
        obs, _ = self.eval_env.reset(seed=self.cfg.eval_seed)
        return obs
