"""Actor and learner in one process: the in-process implementation of the seams in q2rl.interfaces, and a driver
that runs the very same Actor and Learner that `q2rl session` runs as processes, in one thread.

    run = LocalRun(cfg, bc, run_dir)             # cfg: a RunConfig, as in a run's config.yaml
    result = run.run(LocalSchedule(online_steps=15000, eval_every=2000))
    result.curve                                 # EvalPoints, drawn by the learner from the actor's eval reports

The benchmarks and tests use it; the lab and `q2rl session` use gRPC (actor.link + learner.service) between
processes. What differs is only the link: here transitions reach `Learner.ingest_transition` as objects, and
parameter sets reach the actor as arrays, not ParameterSubset bytes. One thread, so a run is deterministic: the actor
steps; whenever it must wait for the learner (sim pacing: Actor's `sleep`) or ends a training episode, the learner
takes its turn (`work()`, then `publish` to the link).
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import jax
import numpy as np

from q2rl.actor.actor import Actor
from q2rl.interfaces import EpisodeReport, Grants, Transition
from q2rl.learner.learner import Learner
from q2rl.progress import EvalPoint, format_number


class LocalLink:
    """An actor's TransitionSink and ParameterSource, and its learner's ParameterBoard, in one process."""

    def __init__(self, on_transition: Callable[[Transition], None], on_episode: Callable[[EpisodeReport], None]):
        self._on_transition, self._on_episode = on_transition, on_episode
        self._latest: tuple[int, Mapping[str, Any]] | None = None
        self._grants: Grants | None = None

    # the actor's side
    def add(self, transition: Transition) -> None:
        self._on_transition(transition)

    def send_held(self) -> None:
        pass  # nothing is held back in process

    def end_episode(self, report: EpisodeReport) -> None:
        self._on_episode(report)

    def latest(self) -> tuple[int, Mapping[str, Any]] | None:
        return self._latest

    def grants(self) -> Grants | None:
        return self._grants

    # the learner's side
    def publish(self, version: int, subsets: Mapping[str, Any]) -> None:
        self._latest = (version, subsets)  # a new tuple per set: the actor adopts a set by identity

    def publish_grants(self, grants: Grants) -> None:
        self._grants = grants


@dataclasses.dataclass(frozen=True)
class LocalSchedule:
    """How long a local run trains and when it evaluates (each evaluation: `learner.eval_window` episodes)."""

    online_steps: int  # training env steps from the start of the online phase (Q-Estimation's rollouts on top)
    eval_every: int  # online env steps between evaluations (0: none); each at the next episode boundary
    eval_seed: int = 1_000_000  # reset seeds of the evaluation episodes: the same scenes at every evaluation
    paired_eval: bool = False  # evaluate each point a second time with the other protocol (modes / sampled)


class LocalResult(NamedTuple):
    curve: list[EvalPoint]
    q_estimation: Any  # core.q_estimation.QEstimationReport, or None without phase 1
    params: Any  # the learner's AgentParams at the end (host arrays)


class LocalRun:
    """One actor and one learner of `cfg` in this process (see the module docstring)."""

    def __init__(self, cfg, bc, run_dir: str | Path, log: Callable[[str], None] = print):
        from q2rl.robot.envs import make_env

        self.cfg, self.log = cfg, log
        state_dim = int(np.asarray(bc.normalizer.state_mean).shape[-1])
        self.learner = Learner(cfg, Path(run_dir), bc, state_dim, on_phase_change=self._on_phase_change)
        self.link = LocalLink(self.learner.ingest_transition, self._on_episode)
        self.env = make_env(cfg.env)
        self.actor = Actor(cfg, self.env, bc, sink=self.link, source=self.link, sleep=self._learner_turn)
        self._online_from: int | None = None  # the env-step count when the online phase started
        self._evaluate_now = False  # Q-Estimation just ended: evaluate before the next training episode

    def _learner_turn(self, _seconds: float = 0.0) -> None:
        self.learner.work()
        self.learner.publish(self.link)

    def _on_episode(self, report: EpisodeReport) -> None:
        self.learner.ingest_report(report)
        if not report.eval:
            self._learner_turn()
            while self.learner.book.phase == "q_estimation":  # the whole fit now, so it ends on this boundary
                self._learner_turn()

    def _on_phase_change(self, phase: str) -> None:
        self.learner.publish(self.link, force=True)
        if phase == "online":
            self._online_from = self.learner.book.env_steps
            self._evaluate_now = self.learner.spec.q_estimation

    def run(self, schedule: LocalSchedule) -> LocalResult:
        """pi_BC's evaluation (algorithms with a BC prior), then training episodes until `online_steps` online env
        steps are done (the last episode finishes), evaluating every `eval_every` of them and at the end."""
        stop, curve = threading.Event(), []
        if schedule.eval_every and self.learner.spec.needs_bc:
            curve.append(self._evaluate(schedule))  # the actor has no parameters yet: pi_BC alone
        self._learner_turn()  # the algorithms without phase 1 go online now, before the first step
        next_eval = schedule.eval_every
        while True:
            if self._evaluate_now and schedule.eval_every:
                curve.append(self._evaluate(schedule))
            self._evaluate_now = False
            self.actor.run_episode(stop)
            if self._online_from is None:
                continue
            steps = self.learner.book.env_steps - self._online_from
            done = steps >= schedule.online_steps
            if schedule.eval_every and (steps >= next_eval or done):
                curve.append(self._evaluate(schedule))
                next_eval = (steps // schedule.eval_every + 1) * schedule.eval_every
            if done:
                break
        self.env.close()
        return LocalResult(curve, self.learner.q_estimation_report, jax.device_get(self.learner.state.params))

    def _evaluate(self, schedule: LocalSchedule) -> EvalPoint:
        """One evaluation of `learner.eval_window` episodes at the fixed reset seeds; the learner draws the point."""
        n = self.cfg.learner.eval_window
        self.actor.evaluate(n, first_seed=schedule.eval_seed)  # reported: the learner closes its window
        point = EvalPoint(**self.learner.book.eval_curve[-1])
        if schedule.paired_eval:
            other = self.actor.evaluate(n, first_seed=schedule.eval_seed, report=False,
                                        deterministic=not self.cfg.actor.eval_deterministic)
            steps = sum(r.length for r in other)
            point = dataclasses.replace(
                point, other_protocol_success=float(np.mean([r.success for r in other])),
                other_protocol_bc_share=sum(r.bc_share * r.length for r in other) / max(1, steps))
        self.log(_format_point(self.cfg.agent.algo, point, self.learner.status().learning))
        return point


def _format_point(algo: str, p: EvalPoint, learning: Mapping[str, float | None]) -> str:
    """One log line per evaluation: the point and the last update's losses."""
    other = "" if p.other_protocol_success is None else f" other_protocol_success={p.other_protocol_success:.2f}"
    losses = " ".join(f"{k}={format_number(v)}" for k, v in learning.items())
    return (f"[{algo}] env_steps={p.env_steps} success={p.success_rate:.2f}{other} "
            f"bc_share={format_number(p.bc_share)} eval_bc_share={format_number(p.eval_bc_share)} "
            f"train_success={format_number(p.train_success)} updates={p.updates} t={p.wall_s:.0f}s {losses}")
