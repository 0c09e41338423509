"""The learner's phase driver: replay in, Q-Estimation, online SAC, parameters out (docs/design.md#phases-and-pacing).

    learner = Learner(cfg, run_dir, bc_policy, state_dim, on_phase_change=hook)   # then .resume_from(store)
    learner.ingest_transition(t); learner.ingest_report(r)     # from the gRPC service or the in-process link
    learner.work()                                      # a chunk of whatever the phase needs
    learner.publish(board)                              # parameters (a new version) and pacing grants, if changed

Phases (docs/design.md#phases-and-pacing):
    rollout       the actors run pi_BC (they have no parameters yet); wait for `rollout_episodes` episodes
                  (the Q2RL family only: the others go online at once)
    q_estimation  fit V_phi to MC returns, pre-train pi_RL, regress Q_RL onto Qhat_BC: one chunk per `work()`,
                  so status, pacing and checkpoints (the fit's progress too) go on while it runs
    online        one jitted update call (UTD critic minibatches + 1 actor step) per stored env step, from
                  `learner.learning_starts` stored transitions on
    done          the session's env-step budget is spent

UTD against the measured insert rate: the learner owes one update call per online env step and never runs
ahead of the data; sim actors are paced by the Grants it publishes — per actor, the highest seq it may send — so
they run exactly as fast as the updates keep up (`learner.ahead_steps` of slack; before online RL, as fast as the
learner stores their steps), while a real robot ignores the pacing and runs at its control rate (the learner then
just falls behind or idles).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from q2rl.config import ConfigError
from q2rl.contract import TransitionContract
from q2rl.core.agents import make_agent
from q2rl.core.checkpoint import CheckpointError, kept_checkpoints, load_checkpoint, read_metadata, save_checkpoint
from q2rl.core.parameters import (LEARNER_CHECKPOINT_KIND, init_agent_params, load_learner_checkpoint,
                                  non_finite_leaves, publishable)
from q2rl.core.replay import (ReplayBuffer, RewardShaping, demo_buffer, sample_demos, sample_mixed,
                              stack_batches)
from q2rl.core.sac import SacState, UpdateMetrics
from q2rl.interfaces import ACTION_DIM, EpisodeReport, Grants, ParameterBoard, Transition, example_obs
from q2rl.candidates import link_file, rank_candidates, read_best_candidates
from q2rl.run_dir import BEST_CHECKPOINT_FILE, CHECKPOINT_FILE, FIT_CHECKPOINT_FILE, best_candidate_file
from q2rl.progress import EvalPoint, LearnerStatus
from q2rl.stats import wilson_lower

log = logging.getLogger(__name__)


def load_demo_buffer(cfg, state_dim: int, cameras: tuple[str, ...], frame_view=None,
                     frame_carry=None) -> ReplayBuffer:
    """The demo buffer of an agent that samples one (rlpd, agent.use_demos): the successful episodes of bc.demos,
    checked against the observations this run's policies read; `frame_view` and `frame_carry` as the replay's."""
    from q2rl.demos.hdf5 import DemoFileError, read_demos

    why = f"agent.algo {cfg.agent.algo}" if cfg.agent.rules.uses_demos else "agent.use_demos: true"
    if not cfg.bc.demos:
        raise ConfigError(f"bc.demos: {why} samples {cfg.agent.demo_fraction:.0%} of every batch from "
                          "demonstrations; set bc.demos to a demos.hdf5 (`q2rl demos record`, or the file pi_BC "
                          "was trained on)")
    try:
        dataset = read_demos(cfg.bc.demos, cameras=cameras, load_next_obs=True)
    except DemoFileError as e:
        raise ConfigError(f"bc.demos: {e}") from None
    if dataset.state_dim != state_dim:
        raise ConfigError(f"bc.demos: {cfg.bc.demos} has states of size {dataset.state_dim}, but pi_BC reads "
                          f"{state_dim}: record the demos with this task's observations")
    if dataset.action_dim != ACTION_DIM:
        raise ConfigError(f"bc.demos: {cfg.bc.demos} has actions of size {dataset.action_dim}, expected {ACTION_DIM}")
    buffer = demo_buffer(dataset.episodes, ACTION_DIM, cameras, frame_view, frame_carry)
    if buffer is None:
        raise ConfigError(f"bc.demos: none of the {len(dataset)} demos in {cfg.bc.demos} succeeded; a demo buffer "
                          "holds successful demonstrations")
    return buffer


class DivergedError(RuntimeError):
    """The learner's parameters stopped being finite: they are neither published to the actors nor checkpointed."""


def learning_metrics(metrics: UpdateMetrics | None) -> dict[str, float]:
    """An update's metrics as plain floats for status.json (plain JSON: a non-finite value is null); actor_q is
    the mean Q of pi_RL's actions."""
    if metrics is None:
        return {}
    critic, actor = jax.device_get(metrics)
    values = {"critic_loss": critic.critic_loss, "q_mean": critic.q_mean, "target_mean": critic.target_mean,
              "conservative_term": critic.conservative_term, "actor_q": -actor.q_term, "bc_nll": actor.bc_nll,
              "entropy": actor.entropy, "temperature": actor.temperature,
              "q_head_std_data": critic.q_head_std, "q_head_std_policy": actor.q_head_std,
              "ntk_term": critic.ntk_term, "cql_term": critic.cql_term, "value_loss": critic.value_loss}
    return {name: float(v) if np.isfinite(v) else None for name, v in values.items()}


@dataclasses.dataclass
class Bookkeeping:
    """Host-side counters; JSON in the checkpoint's metadata and rebuilt from the episode store on resume."""

    phase: str = "rollout"
    env_steps: int = 0
    online_start_steps: int = 0
    online_start_updates: int = 0  # update calls made before the online phase (offline pre-training)
    updates: int = 0
    iterations: int = 0  # batch_online's finished iterations (agent.batch_online.iteration_episodes > 0)
    param_version: int = 0
    episodes: int = 0
    train_successes: int = 0  # of `episodes`
    cut_episodes: int = 0
    eval_episodes: int = 0
    rollout_keys: list = dataclasses.field(default_factory=list)  # [actor_id, episode_id] of phase-1 rollouts
    eval_curve: list = dataclasses.field(default_factory=list)  # EvalPoint dicts
    best_eval: dict | None = None  # the EvalPoint best.ckpt was saved at


class Learner:
    """Replay, phases, updates and bookkeeping of one run; the gRPC service feeds it, `run_learner` drives it."""

    def __init__(self, cfg, run_dir: Path, bc, state_dim: int, devices: list | None = None,
                 on_phase_change: Callable[[str], None] = lambda phase: None):
        """`on_phase_change(phase)` runs when a phase starts (the driver writes its status and publishes)."""
        self.cfg, self.acfg, self.run_dir = cfg, cfg.agent, Path(run_dir)
        self.on_phase_change = on_phase_change
        self.images = cfg.env.camera_shapes()
        self.agent = make_agent(self.acfg, ACTION_DIM, tuple(self.images))
        self.spec = self.agent.spec
        self.key = jax.random.PRNGKey(cfg.learner.seed)
        self.rng = np.random.default_rng(cfg.learner.seed)
        self.key, k_init = jax.random.split(self.key)
        params = init_agent_params(self.agent, k_init, example_obs(state_dim, self.images), bc)
        self.state: SacState = self.agent.init_state(params)
        # With the frozen image encoder, replay keeps each frame as pi_BC's features of its images (computed once,
        # as the frame comes in); the episode store keeps the images.
        view = self.agent.frame_view
        frame_view = (lambda obs: view(bc, obs)) if view is not None else None
        # A recurrent pi_BC's memory is recomputed with every frame as it comes in (docs/design.md#recurrent-bc).
        frame_carry = self.agent.frame_carry(bc)
        self.replay = ReplayBuffer(cfg.learner.replay_capacity, action_dim=ACTION_DIM, frame_view=frame_view,
                                   frame_carry=frame_carry)
        # Read from bc.demos at every start (resume included): the demos are an input of the run, not its state.
        self.demos = (load_demo_buffer(cfg, state_dim, tuple(self.images), frame_view, frame_carry)
                      if self.spec.uses_demos else None)
        if self.demos is not None:
            log.info("demo buffer: %d transitions from %s", len(self.demos), cfg.bc.demos)
        self.shaping = RewardShaping(self.acfg.reward_scale, self.acfg.reward_bias, self.acfg.discount)
        self.book = Bookkeeping(phase="rollout")
        self.mesh = DataParallel(devices, self.acfg.minibatch_size)
        self.state = self.mesh.replicate(self.state)
        self.update = self.agent.update_donating  # the learner keeps only the newest state
        # per-actor stream bookkeeping
        self.last_seq: dict[str, int] = {}
        self.open_episode: dict[str, int] = {}
        self.train_results: collections.deque = collections.deque(maxlen=cfg.learner.train_window)
        self.bc_steps: collections.deque = collections.deque(maxlen=cfg.learner.train_window)
        self.pending_eval: list[EpisodeReport] = []
        self._since_eval = _EpisodeTally()  # training episodes finished since the last eval point
        # The kept best candidates (learner.best_candidates), best first: {"point", "successes", "lcb", "window",
        # "file"}; rebuilt from their files on resume. `_due_candidate`: a closed window save_best() must keep.
        self.best_candidates: list[dict] = []
        self._due_candidate: dict | None = None
        self.duplicates = 0
        self._cut_keys: set[tuple[str, int]] = set()
        self.finished = False  # the env-step budget is spent and every owed update done
        self._rate = RateMeter()
        self.metrics = None  # the last update's UpdateMetrics (device arrays)
        self.q_estimation_report = None
        self.fit = None  # core.q_estimation.QEstimationFit while phase 1's regressions run
        self._started = time.monotonic()
        self._published_grants: Grants | None = None
        self._published_updates: int | None = None

    # ------------------------------------------------------------------------------------------ ingest
    def ingest_transition(self, t: Transition) -> None:
        """Store one training transition (the service delivers each seq once, in order, per actor)."""
        if t.seq <= self.last_seq.get(t.actor_id, -1):
            self.duplicates += 1  # defence in depth: the service already drops duplicates
            return
        previous = self.open_episode.get(t.actor_id)
        if previous is not None and previous != t.episode_id:
            self._cut(t.actor_id, previous, "the actor started a new episode without ending this one")
        self.replay.add(t)
        self.last_seq[t.actor_id] = t.seq
        self.book.env_steps += 1
        if t.terminated or t.truncated:
            self.open_episode.pop(t.actor_id, None)
            if self.book.phase == "rollout":
                self.book.rollout_keys.append([t.actor_id, int(t.episode_id)])
        else:
            self.open_episode[t.actor_id] = int(t.episode_id)

    def ingest_report(self, r: EpisodeReport) -> None:
        """Count a finished episode: training success, BC share, the eval curve, cut episodes."""
        if r.eval:
            self.book.eval_episodes += 1
            self.pending_eval.append(r)
            if len(self.pending_eval) >= self.cfg.learner.eval_window:
                self._close_eval_window()
            return
        if r.cut:
            if (r.actor_id, r.episode_id) not in self._cut_keys:
                self._cut(r.actor_id, r.episode_id, r.fault or "cut by the actor")
            return
        self.book.episodes += 1
        self.book.train_successes += int(bool(r.success))
        self.train_results.append(bool(r.success))
        self.bc_steps.append((r.bc_share * r.length, r.length))
        self._since_eval.add(r)

    def _close_eval_window(self) -> None:
        """A point of the eval curve from the pending evaluation episodes; best.ckpt is due if it is the best."""
        evals, trained = self.pending_eval, self._since_eval
        point = EvalPoint(
            self.book.env_steps, float(np.mean([r.success for r in evals])), len(evals), self.book.updates,
            time.monotonic() - self._started, bc_share=trained.bc_share(), train_success=trained.success_rate(),
            eval_bc_share=_bc_share(evals), train_episodes_total=self.book.episodes,
            train_successes_total=self.book.train_successes)
        self.book.eval_curve.append(dataclasses.asdict(point))
        self.pending_eval, self._since_eval = [], _EpisodeTally()
        successes = int(sum(bool(r.success) for r in evals))
        candidate = {"point": dataclasses.asdict(point), "successes": successes,
                     "lcb": wilson_lower(successes, len(evals)), "window": len(self.book.eval_curve) - 1}
        ranked = rank_candidates(self.best_candidates + [candidate])
        if candidate in ranked[:self.cfg.learner.best_candidates]:
            self._due_candidate = candidate
            if ranked[0] is candidate:
                self.book.best_eval = candidate["point"]

    def actor_lost(self, actor_id: str) -> None:
        """The service lost this actor (crash, network): its open episode is cut."""
        episode = self.open_episode.get(actor_id)
        if episode is not None:
            self._cut(actor_id, episode, "the actor disconnected mid-episode")

    def _cut(self, actor_id: str, episode_id: int, why: str) -> None:
        """Count an episode that ended without success or time limit once, however many ways we learn of it."""
        self._cut_keys.add((actor_id, int(episode_id)))
        self.replay.end_episode(actor_id, episode_id)
        if self.open_episode.get(actor_id) == episode_id:
            self.open_episode.pop(actor_id, None)
        self.book.cut_episodes += 1
        log.info("episode %s/%d cut: %s", actor_id, episode_id, why)

    # ------------------------------------------------------------------------------------------ phases
    def work(self) -> int:
        """Do the next chunk of work for the current phase; returns the number of update calls made."""
        phase = self.book.phase
        if phase == "rollout" and self._rollouts_ready():
            if self.spec.q_estimation:
                self.book.phase = "q_estimation"
                self.on_phase_change(self.book.phase)
            elif self.acfg.offline_updates > 0:
                self.book.phase = "offline"
                self.on_phase_change(self.book.phase)
            else:
                self._start_online_phase()
            return 0
        if phase == "q_estimation":
            self._advance_fit()
            return 0
        if phase == "offline":
            return self._pretrain()
        if phase != "online":
            return 0
        owed = self.owed_updates()
        if owed <= 0:
            if self.book.env_steps >= self.cfg.session.env_steps:
                self.finished = True
            return 0
        n = min(owed, self.cfg.learner.updates_per_chunk)
        for _ in range(n):
            self._update_once()
        if self.acfg.iteration_episodes and n == owed:  # this iteration's training is done: the next one collects
            self.book.iterations += 1
            log.info("batch_online iteration %d trained (%d update calls in all)", self.book.iterations,
                     self.book.updates)
        return n

    def _rollouts_ready(self) -> bool:
        if not self.spec.q_estimation:
            return True  # no phase 1: online (with learning_starts) from the first step
        needed = self.acfg.q_estimation.rollout_episodes
        return len(self.book.rollout_keys) >= needed and len(self.replay) >= self.acfg.minibatch_size

    def _advance_fit(self) -> None:
        """One chunk of the Q-Estimation fit (started on the first call, from its saved progress if a learner
        stopped during it); when it ends, the online phase starts from its parameters."""
        if self.fit is None:
            self.fit = self._begin_fit()
        if not self.fit.advance():
            return
        params, report = self.fit.params, self.fit.report()
        log.info("Q-Estimation on %d episodes took %.1f s (this learner's share): %s", report.num_episodes,
                 time.monotonic() - self._fit_started, report)
        self.q_estimation_report, self.fit = report, None
        self.state = self.mesh.replicate(self.agent.init_state(params))
        self._start_online_phase()

    def _begin_fit(self):
        """A fit on the rollout episodes; it goes on from FIT_CHECKPOINT_FILE when that holds progress on the same
        episodes (a damaged or foreign one is reported and left in place; the fit then starts over)."""
        episodes = [self.replay.export_episode(a, e) for a, e in self.book.rollout_keys]
        self._fit_started = time.monotonic()
        path = self.run_dir / FIT_CHECKPOINT_FILE
        if path.is_file():
            try:
                meta = read_metadata(path)
                if meta.get("rollout_keys") == self.book.rollout_keys:
                    fit = self.agent.q_estimation.start(jax.device_get(self.state.params), episodes,
                                                        jnp.asarray(np.asarray(meta["key"], np.uint32)),
                                                        init_critic=self.spec.init_critic)
                    fit.restore(load_checkpoint(path, target=fit.progress_template(meta)).state, meta)
                    log.info("Q-Estimation goes on from %s: stage %s, %d steps left", path, fit.stage_name,
                             fit.steps_left())
                    return fit
                log.info("%s belongs to other rollout episodes; the fit starts over", path)
            except (CheckpointError, KeyError, TypeError, ValueError) as e:
                log.warning("%s cannot be used (%s); the Q-Estimation fit starts over", path, e)
        self.key, k = jax.random.split(self.key)
        return self.agent.q_estimation.start(jax.device_get(self.state.params), episodes, k,
                                             init_critic=self.spec.init_critic)

    def _save_fit(self) -> None:
        tree, meta = self.fit.progress()
        meta = {**meta, "kind": "q2rl-q-estimation-fit", "rollout_keys": self.book.rollout_keys,
                "key": _key_list(self.fit.key)}
        save_checkpoint(self.run_dir / FIT_CHECKPOINT_FILE, tree, meta)

    def _pretrain(self) -> int:
        """One chunk of offline pre-training (agent.offline_updates update calls on the demo buffer alone, as
        Simplified Q pre-trains); online RL starts when they are done."""
        n = min(self.acfg.offline_updates - self.book.updates, self.cfg.learner.updates_per_chunk)
        for _ in range(max(0, n)):
            self._update_once(demos_only=True)
        if self.book.updates >= self.acfg.offline_updates:
            log.info("offline pre-training: %d update calls on %d demo transitions", self.book.updates,
                     len(self.demos))
            self._start_online_phase()
        return max(0, n)

    def _start_online_phase(self) -> None:
        """Online updates owed per new env step, from learning_starts stored transitions on."""
        self.book.phase = "online"
        # Updates are owed from here on, but not before learning_starts transitions are stored.
        self.book.online_start_steps = max(self.book.env_steps, self.cfg.learner.learning_starts)
        self.book.online_start_updates = self.book.updates
        self.on_phase_change(self.book.phase)

    @property
    def _online_updates(self) -> int:
        """Update calls of the online phase (offline pre-training's are not owed to the data)."""
        return self.book.updates - self.book.online_start_updates

    def _collecting(self) -> bool:
        """In batch_online's iterations: the current iteration still collects its episodes (no updates owed)."""
        return self.book.episodes < (self.book.iterations + 1) * self.acfg.iteration_episodes

    def owed_updates(self) -> int:
        """Update calls owed to the data: one per online env step (UTD against the insert rate,
        docs/design.md#update-pacing); in batch_online's iterations, iteration_updates once each iteration's
        episodes are in, none while they are collected."""
        if self.book.phase != "online" or not self.spec.trains:
            return 0
        online_updates = self._online_updates
        if self.acfg.iteration_episodes:
            if self._collecting():
                return 0
            return (self.book.iterations + 1) * self.acfg.batch_online.iteration_updates - online_updates
        return self.book.env_steps - self.book.online_start_steps - online_updates

    def _update_once(self, demos_only: bool = False) -> None:
        a = self.acfg
        sample = ((lambda: sample_demos(self.rng, self.demos, a.minibatch_size, self.shaping, a.n_step)) if demos_only
                  else lambda: sample_mixed(self.rng, self.replay, self.demos, a.minibatch_size, self.shaping,
                                            a.n_step, a.demo_fraction))
        batches = stack_batches([sample() for _ in range(a.utd)])
        self.key, k = jax.random.split(self.key)
        self.state, self.metrics = self.update(self.state, self.mesh.shard_batch(batches), k)
        self.book.updates += 1
        self._rate.tick()

    # ------------------------------------------------------------------------------------------ outputs
    def grants(self) -> Grants:
        """Per actor, the highest seq it may send now (sim pacing)."""
        phase, ahead = self.book.phase, self.cfg.learner.ahead_steps
        if phase not in ("rollout", "online"):
            return Grants(dict(self.last_seq), -1)
        if phase == "online" and self.acfg.iteration_episodes:
            # batch_online's iterations: steps flow while the iteration collects, none while the learner trains
            paid = self.book.env_steps + (ahead if self._collecting() else 0)
        elif phase == "online" and self.spec.trains:
            paid = self.book.online_start_steps + self._online_updates + ahead  # UTD: one update call per step
        else:
            # No updates to wait for (pi_BC rollouts, or the bc baseline), but still at most `ahead` steps beyond
            # what the learner has stored: a learner slow to ingest (a loaded machine) would otherwise switch to
            # online RL long after the actor finished its rollouts, and the actor would run pi_BC past the switch
            # and past the session's budget.
            paid = self.book.env_steps + ahead
        paid = min(paid, self.cfg.session.env_steps)
        headroom = max(0, paid - self.book.env_steps)
        # Rounded up: with N actors and fewer than N steps of headroom a floor would grant nobody anything and
        # stall the session just short of its budget; at most N-1 steps of overshoot is harmless.
        share = -(-headroom // max(1, len(self.last_seq)))
        return Grants({a: s + share for a, s in self.last_seq.items()}, share - 1)

    def publish(self, board: ParameterBoard, force: bool = False) -> None:
        """The one place parameters leave the learner: the grants when they changed, and in the online phase a new
        parameter version when updates moved the state on (`force`: both, e.g. on a fresh board)."""
        grants = self.grants()
        if force or grants != self._published_grants:
            board.publish_grants(grants)
            self._published_grants = grants
        if self.book.phase != "online" or (not force and self.book.updates == self._published_updates):
            return
        if self.acfg.iteration_episodes and self.owed_updates() > 0:
            return  # batch_online's iterations: the parameters change only between iterations
        subsets = publishable(self._finite(jax.device_get(self.state.params)),
                              with_bc=self.spec.policy_objective == "imitation")
        self.book.param_version += 1
        board.publish(self.book.param_version, subsets)
        self._published_updates = self.book.updates

    def _finite(self, tree: Any) -> Any:
        """`tree` (on the host) if every value in it is finite, else a DivergedError that says what is intact."""
        bad = non_finite_leaves(tree)
        if not bad:
            return tree
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        last = ""
        if self.metrics is not None:
            c = self.metrics.critic
            last = (f"; the last update's critic loss was {float(c.critic_loss):.4g}, mean Q {float(c.q_mean):.4g}, "
                    f"mean TD target {float(c.target_mean):.4g}")
        raise DivergedError(
            f"the learner's parameters are no longer finite after update {self.book.updates} ({bad[0]}{more}){last}. "
            f"They were not sent to the actors and not checkpointed: {self.run_dir / CHECKPOINT_FILE} keeps the last "
            f"finite state and {self.run_dir / 'episodes'} every transition. The usual causes are learning rates too "
            "high for the reward scale (agent.critic_lr, agent.actor_lr, agent.reward_scale).")

    def updates_per_s(self) -> float:
        """Update calls per second over the last few seconds."""
        return self._rate.rate()

    def status(self) -> LearnerStatus:
        bc_num = sum(b for b, _ in self.bc_steps)
        bc_den = sum(n for _, n in self.bc_steps)
        curve = [EvalPoint(**p) for p in self.book.eval_curve]
        return LearnerStatus(
            phase="done" if self.finished else self.book.phase,
            env_steps=self.book.env_steps,
            episodes=self.book.episodes,
            train_successes=self.book.train_successes,
            cut_episodes=self.book.cut_episodes,
            eval_episodes=self.book.eval_episodes,
            train_success_rate=float(np.mean(self.train_results)) if self.train_results else 0.0,
            eval_success_rate=curve[-1].success_rate if curve else None,
            bc_share=bc_num / bc_den if bc_den else 1.0,
            updates=self.book.updates,
            updates_per_s=self.updates_per_s(),
            utd_measured=self.acfg.utd * self._online_updates / max(1, self.book.env_steps - self.book.online_start_steps)
            if self.book.phase == "online" else 0.0,
            param_version=self.book.param_version,
            replay_size=len(self.replay),
            duplicates_dropped=self.duplicates,
            budget_env_steps=min(self.cfg.session.env_steps, self.book.online_start_steps + self._online_updates
                                 + self.cfg.learner.ahead_steps) if self.book.phase == "online" else 0,
            eval_curve=curve,
            best_eval=EvalPoint(**self.book.best_eval) if self.book.best_eval else None,
            learning=learning_metrics(self.metrics),
            q_estimation_steps_left=self.fit.steps_left() if self.fit is not None else 0,
        )

    # ------------------------------------------------------------------------------------------ persistence
    def save(self) -> Path:
        """Checkpoint the learner state (msgpack, atomic) with the bookkeeping as JSON metadata. The last
        learner.keep_checkpoints states stay, as checkpoint/learner-<updates>.ckpt, and learner.ckpt names the newest."""
        if self.fit is not None:  # the fit's progress first: the learner checkpoint below says it is under way
            self._save_fit()
        return self._save_to(CHECKPOINT_FILE, keep=self.cfg.learner.keep_checkpoints)

    def save_best(self) -> Path | None:
        """Keep the state of an eval window that closed among the best `learner.best_candidates` since the last
        call as checkpoint/best-<updates>-<window>.ckpt (the one it pushes out of the top is deleted), and point
        best.ckpt at it when it ranks first (by the Wilson lower bound of its window: rank_candidates). Returns
        best.ckpt's path when it now names a new state, else None.

        The window's episodes ran on the parameter versions published while it filled; what is saved is the state
        when it closed, the latest of them. A sim session's final evaluation measures every candidate afresh and
        points best.ckpt at the winner (q2rl.actor.best)."""
        candidate, self._due_candidate = self._due_candidate, None
        if candidate is None:
            return None
        file = best_candidate_file(self.book.updates, candidate["window"])
        self._save_to(file, extra={"candidate": candidate})
        candidate = dict(candidate, file=file)
        ranked = rank_candidates(self.best_candidates + [candidate])
        keep = self.cfg.learner.best_candidates
        for dropped in ranked[keep:]:
            (self.run_dir / dropped["file"]).unlink(missing_ok=True)
        self.best_candidates = ranked[:keep]
        if ranked[0] is not candidate:
            log.info("eval window %d (%d/%d) kept as best candidate %s", candidate["window"], candidate["successes"],
                     candidate["point"]["episodes"], file)
            return None
        path = link_file(self.run_dir / file, self.run_dir / BEST_CHECKPOINT_FILE)
        log.info("best eval so far (%s, lower bound %.2f): saved %s", self.book.best_eval, candidate["lcb"], file)
        return path

    def _save_to(self, file: str, keep: int = 1, extra: dict | None = None) -> Path:
        meta = {
            "kind": LEARNER_CHECKPOINT_KIND,
            "book": dataclasses.asdict(self.book),
            "key": _key_list(self.key),
            "rng": self.rng.bit_generator.state,
            "saved_at": time.time(),
            **(extra or {}),
        }
        return save_checkpoint(self.run_dir / file, self._finite(jax.device_get(self.state)), meta, keep=keep,
                               number=self.book.updates)

    def resume_from(self, store, contract: TransitionContract | None = None, fresh_state: bool = False) -> int:
        """Refill replay and counters from the episode store (every acknowledged transition), then put back the
        last checkpoint's state and phase; updates owed for data stored after that checkpoint are made up.

        A stored record that fails the checks of q2rl.contract against the run's `contract` (stored unchecked by an
        older learner) is left out with a warning, never a crash, as is one a damaged file lost; replay starts its
        episode afresh after the gap. Returns the number of records left out for failing the checks."""
        skipped: list[tuple[str, int | None, str]] = []
        last: dict[str, Transition] = {}  # per actor, the newest transition replay took
        for ep in store.episodes(contract=contract, on_skip=lambda *why: skipped.append(why)):
            for t in ep.transitions:
                prev = last.get(t.actor_id)
                if prev is not None and prev.episode_id == t.episode_id and (
                        t.step != prev.step + 1 or not np.array_equal(prev.next_obs["state"], t.obs["state"])):
                    self.replay.end_episode(t.actor_id, t.episode_id)  # a step between them was left out
                self.ingest_transition(t)
                last[t.actor_id] = t
            if ep.report is not None:
                self.ingest_report(ep.report)
        for actor_id, seq, _ in skipped:
            if seq == store.stored_seq(actor_id) and actor_id in self.open_episode:
                # the actor continues after a step replay lacks: its next one starts the episode afresh
                self.replay.end_episode(actor_id, self.open_episode[actor_id])
        if skipped:
            log.warning("resume: left out %d stored records that fail the run's contract (they stay on disk): %s",
                        len(skipped), "; ".join(f"actor {a}: {why}" for a, _, why in skipped[:20]))
        self.pending_eval = []
        # The replayed windows were judged before: best.ckpt, the file itself, says which won (it may be newer
        # than learner.ckpt), so a later window must beat that, not the replay's pick.
        self._due_candidate = None
        best = self.run_dir / BEST_CHECKPOINT_FILE
        self.book.best_eval = self._best_eval_of(best) if best.is_file() else None
        self.best_candidates = read_best_candidates(self.run_dir)
        if fresh_state or not self.restore_checkpoint():  # fresh_state: a learner state that starts over
            return len(skipped)
        saved = self.saved_book
        self.book.phase = saved.phase
        self.book.updates, self.book.online_start_steps = saved.updates, saved.online_start_steps
        self.book.online_start_updates, self.book.iterations = saved.online_start_updates, saved.iterations
        self.book.param_version = saved.param_version
        self.book.eval_curve = saved.eval_curve
        if saved.phase != "rollout":
            self.book.rollout_keys = saved.rollout_keys
        return len(skipped)

    def restore_checkpoint(self, file: str = CHECKPOINT_FILE) -> bool:
        """Load a checkpoint (the last one unless told) into this learner; when it is missing or damaged, the newest
        intact state kept beside it (learner.keep_checkpoints), with a warning naming it. False when there is no
        checkpoint at all; CheckpointError, saying what to do, when there are some but none is intact."""
        path = self.run_dir / file
        kept = [k for k in kept_checkpoints(path) if not (path.exists() and k.samefile(path))]  # not path again
        if not path.exists() and not kept:
            return False
        problems = [] if path.exists() else [f"{path} is missing"]
        for candidate in ([path] if path.exists() else []) + kept:
            try:
                self._restore(candidate)
            except CheckpointError as e:
                problems.append(str(e))
                continue
            if problems:
                log.warning("%s; resuming from %s, the newest intact checkpoint (update %d); the updates made after "
                            "it are made up from the episode files", "; ".join(problems), candidate,
                            self.saved_book.updates)
            return True
        raise CheckpointError(
            f"{'; '.join(problems)}; no intact learner checkpoint is left. Resume from the episode files with a fresh "
            f"learner state (parameters, optimiser, update count and phase start over; every stored transition is "
            f"kept): q2rl learner --resume {self.run_dir} --fresh-state")

    def _restore(self, path: Path) -> None:
        """Load one learner checkpoint; nothing of this learner changes unless all of it loads."""
        ckpt = load_learner_checkpoint(path, target=jax.device_get(self.state))
        meta = ckpt.metadata
        try:
            book = Bookkeeping(**meta["book"])
            key = jnp.asarray(np.asarray(meta["key"], np.uint32))
            rng = np.random.default_rng()
            rng.bit_generator.state = meta["rng"]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: learner checkpoint metadata is incomplete ({e!r})") from None
        self.state = self.mesh.replicate(ckpt.state)
        self.saved_book, self.key = book, key
        self.rng.bit_generator.state = rng.bit_generator.state

    @staticmethod
    def _best_eval_of(best: Path) -> dict | None:
        """The eval window best.ckpt was saved at; a damaged best.ckpt is ignored with a warning."""
        try:
            meta = read_metadata(best)
            return meta["candidate"]["point"] if "candidate" in meta else meta["book"]["best_eval"]
        except (CheckpointError, KeyError, TypeError) as e:
            log.warning("%s is damaged (%s); ignoring it: the next eval window saves a new one", best, e)
            return None


def _key_list(key: jax.Array) -> list[int]:
    """A PRNG key as JSON (checkpoint metadata)."""
    return np.asarray(jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key).tolist()


@dataclasses.dataclass
class _EpisodeTally:
    """Counts of finished episodes (not the reports: a run without evaluations would keep every one)."""

    episodes: int = 0
    successes: int = 0
    steps: int = 0
    bc_steps: float = 0.0

    def add(self, r: EpisodeReport) -> None:
        self.episodes += 1
        self.successes += int(bool(r.success))
        self.steps += r.length
        self.bc_steps += r.bc_share * r.length

    def success_rate(self) -> float | None:
        return self.successes / self.episodes if self.episodes else None

    def bc_share(self) -> float | None:
        return self.bc_steps / self.steps if self.steps else None


def _bc_share(reports: list[EpisodeReport]) -> float | None:
    """The share of steps that ran pi_BC's action over these episodes (None: no steps)."""
    steps = sum(r.length for r in reports)
    return sum(r.bc_share * r.length for r in reports) / steps if steps else None


class RateMeter:
    """Events per second over a sliding window of recent ticks."""

    def __init__(self, window_s: float = 5.0):
        self.window_s = window_s
        self.ticks: collections.deque = collections.deque()

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.ticks.append(now)
        while self.ticks and now - self.ticks[0] > self.window_s:
            self.ticks.popleft()

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        while self.ticks and now - self.ticks[0] > self.window_s:
            self.ticks.popleft()
        if len(self.ticks) < 2:
            return 0.0
        return (len(self.ticks) - 1) / max(1e-9, self.ticks[-1] - self.ticks[0])


class DataParallel:
    """The update data-parallel over local devices: the state replicated, each minibatch split on its batch axis.

    jit follows the data's shardings (GSPMD): the same jitted update runs on one device or on all of them,
    with gradient means becoming an all-reduce. One device: everything is a no-op.
    """

    def __init__(self, devices: list | None, batch_size: int):
        self.devices = list(devices) if devices else [jax.local_devices()[0]]
        if batch_size % len(self.devices):
            raise ValueError(f"a critic minibatch of {batch_size} transitions (agent.batch_size, batch_accounting) does "
                             f"not split over {len(self.devices)} devices; choose a multiple or set learner.devices")
        if len(self.devices) > 1:
            from jax.sharding import Mesh, NamedSharding, PartitionSpec

            mesh = Mesh(np.asarray(self.devices), ("batch",))
            self.replicated = NamedSharding(mesh, PartitionSpec())
            self.batch_sharding = NamedSharding(mesh, PartitionSpec(None, "batch"))  # [utd, batch, ...]
        else:
            self.replicated = self.batch_sharding = None

    def replicate(self, tree: Any) -> Any:
        return tree if self.replicated is None else jax.device_put(tree, self.replicated)

    def shard_batch(self, batches: Any) -> Any:
        return batches if self.batch_sharding is None else jax.device_put(batches, self.batch_sharding)


def select_devices(count: int) -> list:
    """The first `count` local devices (0: all of them)."""
    devices = jax.local_devices()
    if count < 0 or count > len(devices):
        raise ValueError(f"learner.devices: {count} asked, {len(devices)} available")
    return devices[:count] if count else devices
