"""The actor: the environment loop with Q-Gating on CPU, feeding a TransitionSink, reading a ParameterSource.

    actor = Actor(cfg, env, bc_policy, sink=link, source=link, console=console)
    summary = actor.run(stop_event)          # until stopped, quit (key q) or actor.max_episodes

Per step: the newest parameters the source holds (never waits for them), one jitted gate call
`(params, obs, key) -> (action, GateInfo)`, env.step, `sink.add(Transition)` (spooled, returns at once).
Before the learner's first parameters (the Q-Estimation rollouts) the gate is pi_BC alone.

Pacing: a real robot runs at its control rate. A simulator runs as fast as the learner keeps up: the learner
publishes, per actor, the highest seq it may send (Grants; UTD target + slack), and the loop holds
before a step that would exceed it. Holding reads only in-memory state (no network), so stop and console
keys are still served within a millisecond.

Evaluation episodes (every `actor.eval_every_episodes`, key e, or `evaluate(n)`) act with the policies' modes or
sample as in training (`actor.eval_deterministic`), are not sent for training, and are reported with `eval=True` so the learner can draw
the eval success curve. `run_episode` is the one episode loop: training, evaluation, and checkpoint evaluation.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from q2rl.core.agents import make_agent
from q2rl.core.noise import ou_step
from q2rl.core.parameters import apply_parameter_set, init_agent_params
from q2rl.core.encoders import BC_CARRY
from q2rl.interfaces import (ACTION_DIM, EpisodeReport, Grants, ParameterSource, Transition, TransitionSink,
                             example_obs, policy_obs)
from q2rl.metrics import ActorStatusLog
from q2rl.progress import ActorStatus, StatusWriter

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ActorSummary:
    """What an actor did, for logs and tests."""

    episodes: int = 0
    eval_episodes: int = 0
    eval_successes: int = 0
    successes: int = 0
    env_steps: int = 0
    cut_episodes: int = 0
    paced_s: float = 0.0
    max_loop_gap_s: float = 0.0
    max_loop_gap_at: str = ""  # "episode/step" where the longest gap between two control steps happened
    quit: bool = False

    def describe(self) -> str:
        """One line for the log."""
        gap = f"; longest gap between steps {1000 * self.max_loop_gap_s:.0f} ms (episode/step {self.max_loop_gap_at})"
        return (f"{self.episodes} training episodes ({self.successes} successes), {self.eval_episodes} evaluation "
                f"({self.eval_successes} successes), {self.cut_episodes} cut; {self.env_steps} env steps sent"
                f"{gap if self.max_loop_gap_at else ''}; {self.paced_s:.0f} s held for the learner")


class _Quit(Exception):
    """Raised inside an episode when the actor must stop (signal, key q)."""


class Actor:
    """One actor's control loop; see the module docstring."""

    def __init__(
        self,
        cfg,
        env,
        bc,
        sink: TransitionSink | None,
        source: ParameterSource | None,
        *,
        console=None,
        paced_by_learner: bool | None = None,
        status_dir: str | Path | None = None,
        first_seq: int = 0,
        first_episode_id: int = 0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        policy: str = "gated",
        recorder=None,
    ):
        """`policy`: gated (Q-Gating, as trained), rl (pi_RL alone) or bc (pi_BC alone), once parameters are
        set; `recorder`: gets every step (`add(Transition)`) and every episode's end (`end_episode(report)`),
        evaluation episodes included (q2rl deploy records them as HDF5)."""
        if policy not in ("gated", "rl", "bc"):
            raise ValueError(f"policy {policy!r}: one of gated, rl, bc")
        self.policy, self.recorder = policy, recorder
        self._pending_keys: list = []  # success/failure keys read while holding for the learner, for the next step
        self.cfg, self.acfg = cfg, cfg.agent
        self.env, self.sink, self.source, self.console = env, sink, source, console
        self.actor_id = cfg.actor.actor_id
        if paced_by_learner is None:
            paced_by_learner = cfg.actor.pace == "learner" or (cfg.actor.pace == "auto" and cfg.env.backend == "sim")
        self.paced_by_learner = paced_by_learner
        self.period_s = 1.0 / cfg.env.control_hz
        self.status_dir = Path(status_dir) if status_dir else None
        # actors/<id>.json and the metrics history (link health, loop timing), from the writer's own thread
        self._status_writer = (StatusWriter(ActorStatusLog(self.status_dir, self.actor_id, first_seq))
                               if self.status_dir is not None else None)
        self.clock, self.sleep = clock, sleep
        images = cfg.env.camera_shapes()
        self.cameras = tuple(images)
        self.agent = make_agent(self.acfg, ACTION_DIM, self.cameras)
        state_dim = int(np.asarray(bc.normalizer.state_mean).shape[-1])
        # every observation is checked against these before a network reads it (policy_obs)
        self.contract = (images, state_dim)
        self.key = jax.random.PRNGKey(cfg.actor.seed)
        self.key, k = jax.random.split(self.key)
        self.template = init_agent_params(self.agent, k, example_obs(state_dim, images), bc)
        # a recurrent pi_BC's memory: restarted with every episode, advanced by every observation it reads
        self._bc_recurrent = bc.recurrent
        self._bc_carry = bc.initial_carry()
        self._warm_up(example_obs(state_dim, images))
        self.params: Any = None  # AgentParams on device once the learner has published them
        self.version = 0
        self._adopted: Any = None  # the source's set object that `params` came from
        self._adopted_at = 0.0  # wall time it was adopted (status: how fresh the acting parameters are)
        self.pacing: Grants | None = None
        self.seq = first_seq
        self.first_seq = first_seq
        # agent.random_steps: uniform exploration once parameters arrive; a resumed actor counts what it sent
        self._random_left = max(0, self.acfg.random_steps - first_seq)
        # batch_online's OU noise on the executed training actions: its state restarts with every episode
        self._ou = self.acfg.ou_noise
        self._noise = np.zeros(ACTION_DIM)
        self._noise_rng = np.random.default_rng(cfg.actor.seed)
        self.episode_id = first_episode_id
        self.summary = ActorSummary()
        self.paused = False
        self.eval_requested = False
        self._recent: list[bool] = []
        self._recent_eval: list[bool] = []
        self._running_episode: int | None = None  # the episode under way (the console shows it; None between)
        self._last_step_time: float | None = None
        self._last_status = 0.0
        self._mode = "train"
        self._step = self._bc_steps = 0  # this episode's step and BC steps so far (status line, loop-gap note)
        self._recent_max_gap = 0.0  # longest gap between control steps since the last status snapshot

    def _warm_up(self, obs) -> None:
        """Compile every decision function now: the first gated step must not stall the control loop."""
        functions = [self.agent.bc_act, self.agent.gate]
        if self.cfg.actor.eval_deterministic:  # evaluation acts with the modes
            functions += [self.agent.bc_mode_act, self.agent.eval_gate]
        elif self.acfg.bc_action == "mode":  # phase 1 acts with pi_BC's mode
            functions += [self.agent.bc_mode_act]
        if self.policy == "rl":
            functions += [self.agent.rl_act, self.agent.rl_mode_act]
        obs = self._with_memory(obs)
        for fn in functions:
            jax.block_until_ready(fn(self.template, obs, self.key))
        if self._bc_recurrent:
            jax.block_until_ready(self.agent.bc_carry_step(self.template.bc, obs))
        if self.acfg.random_steps:
            jax.block_until_ready(self.agent.random_act(self.key))

    # -------------------------------------------------------------------------------------- parameters
    def refresh(self) -> None:
        """Adopt the newest parameter set the source holds (no waiting)."""
        if self.source is None:
            return
        self.pacing = self.source.grants()
        got = self.source.latest()
        # By identity, not version: a restarted learner numbers its sets afresh and may repeat ours.
        if got is None or got is self._adopted:
            return
        version, subsets = got
        self.params = jax.device_put(apply_parameter_set(self.template, subsets))
        self.version, self._adopted, self._adopted_at = version, got, time.time()

    def set_params(self, params, version: int) -> None:
        """Use fixed parameters (final evaluation from a checkpoint)."""
        self.params, self.version = jax.device_put(params), version

    def grant(self) -> int | None:
        """The highest seq the learner lets this actor send now (None: no limit known)."""
        return None if self.pacing is None else self.pacing.for_actor(self.actor_id, self.first_seq)

    def _hold_for_learner(self, stop: threading.Event) -> None:
        """Sim pacing: wait (polling memory, never the network) until this step's seq is granted."""
        started = None
        while True:
            self.refresh()
            grant = self.grant()
            if grant is None or self.seq <= grant:
                break
            if started is None and self.sink is not None:
                self.sink.send_held()  # the learner may be waiting for it to grant the next step
            started = started or self.clock()
            self._pending_keys += self._episode_keys(stop)  # an s or f while holding marks this step's episode
            if stop.is_set():
                raise _Quit
            self._publish_status(waiting=True, holding_s=self.clock() - started)
            self.sleep(0.001)
        if started is not None:
            self.summary.paced_s += self.clock() - started
            self._last_step_time = None  # a deliberate hold is not a loop stall

    # -------------------------------------------------------------------------------------- console
    def _serve_console(self, stop: threading.Event, timeout_s: float = 0.0) -> list:
        """Handle the operator's quit, pause and evaluation keys; returns the keys left for the caller (success,
        failure, reset done)."""
        if self.console is None:
            return []
        from q2rl.robot.console import Command

        left = []
        for command in self.console.poll(timeout_s=timeout_s):
            if command == Command.QUIT:
                stop.set()
            elif command == Command.PAUSE:
                self.paused = not self.paused
                self.console.print("paused: p resumes" if self.paused else "resumed")
                self._publish_status(force=True)
            elif command == Command.EVAL:
                self.eval_requested = True
                self.console.print("the next episode is an evaluation episode")
            elif command in (Command.SUCCESS, Command.FAILURE, Command.RESET_DONE):
                left.append(command)
        return left

    def _episode_keys(self, stop: threading.Event) -> list:
        """The success/failure keys pressed since the last look (r means nothing during an episode)."""
        from q2rl.robot.console import Command

        return [c for c in self._serve_console(stop) if c is not Command.RESET_DONE]

    def _wait_for_reset(self, stop: threading.Event) -> None:
        """With an operator at a terminal (on the robot, or rehearsing in sim with actor.reset_key=always): the next
        episode starts when they press r (scene reset done)."""
        wait = self.cfg.actor.reset_key
        if wait == "never" or (wait == "robot" and self.cfg.env.backend == "sim"):
            return
        if self.console is None or not getattr(self.console, "interactive", False):
            return
        from q2rl.robot.console import Command

        self._mode, self._step, self._bc_steps = "waiting for reset (r)", 0, 0  # the next episode, not the last
        self._publish_status(force=True)
        while not stop.is_set():
            if Command.RESET_DONE in self._serve_console(stop, timeout_s=0.1):
                return
        raise _Quit

    # -------------------------------------------------------------------------------------- the loop
    def run(self, stop: threading.Event | None = None, max_episodes: int | None = None) -> ActorSummary:
        """Episodes until `stop` is set, the operator quits, or `max_episodes` training episodes ran."""
        stop = stop or threading.Event()
        limit = self.cfg.actor.max_episodes if max_episodes is None else max_episodes
        every = self.cfg.actor.eval_every_episodes
        since_eval = 0
        try:
            while not stop.is_set() and (not limit or self.summary.episodes < limit):
                self._running_episode = None
                self._wait_for_reset(stop)  # first: an e pressed while the scene is reset applies to this episode
                evaluate = self.eval_requested or (every > 0 and since_eval >= every)
                self.eval_requested = False
                self.run_episode(stop, evaluate=evaluate, wait_for_reset=False)
                since_eval = 0 if evaluate else since_eval + 1
        except _Quit:
            self.summary.quit = True
        self._publish_status(force=True)
        if self._status_writer is not None:
            self._status_writer.close()
        return self.summary

    def evaluate(self, episodes: int, stop: threading.Event | None = None, first_seed: int | None = None,
                 deterministic: bool | None = None, report: bool = True) -> list[EpisodeReport]:
        """Run `episodes` evaluation episodes (reset seeds first_seed, first_seed + 1, ... when given, so every
        evaluation sees the same scenes; `deterministic` overrides actor.eval_deterministic; `report=False` keeps
        them from the sink) and return their reports."""
        stop = stop or threading.Event()
        return [self.run_episode(stop, evaluate=True, deterministic=deterministic, report=report,
                                 seed=None if first_seed is None else first_seed + i) for i in range(episodes)]

    def run_episode(self, stop: threading.Event, evaluate: bool = False, seed: int | None = None,
                    deterministic: bool | None = None, report: bool = True, wait_for_reset: bool = True
                    ) -> EpisodeReport:
        """One episode, after the operator's r when one is asked for (`wait_for_reset`); a stop mid-episode cuts it
        (reported with cut=True) and raises _Quit. An evaluation episode acts with the modes when `deterministic`
        (default actor.eval_deterministic) is true."""
        self._running_episode = None  # between episodes the console shows the next one
        if wait_for_reset:
            self._wait_for_reset(stop)
        episode_id = self._running_episode = self.episode_id
        self.episode_id += 1
        self._mode = "eval" if evaluate else "train"
        self._step = self._bc_steps = 0
        modes = evaluate and (self.cfg.actor.eval_deterministic if deterministic is None else deterministic)
        if seed is None:
            seed = self.cfg.actor.seed + episode_id + (1_000_000 if evaluate else 0)
        obs = policy_obs(self.env.reset(seed=seed)[0], *self.contract)
        self._noise = np.zeros(ACTION_DIM)
        self._bc_carry = self.template.bc.initial_carry()  # () for a feed-forward pi_BC
        step, total_reward, bc_steps, success = 0, 0.0, 0, False
        self._last_step_time = None
        next_tick = self.clock()
        try:
            while True:
                if self.paced_by_learner and not evaluate:
                    self._hold_for_learner(stop)  # refreshes while it holds
                else:
                    if not self.paced_by_learner:
                        next_tick = self._hold_control_rate(next_tick)
                    self.refresh()
                ending, self._pending_keys = self._pending_keys + self._episode_keys(stop), []
                if self.paused:
                    while self.paused and not stop.is_set():
                        self.sleep(0.05)
                        ending += self._episode_keys(stop)
                        self._publish_status()
                    self._last_step_time, next_tick = None, self.clock()  # a pause is not a loop stall
                if stop.is_set():
                    raise _Quit
                self._step = step
                seen = self._with_memory(obs)
                action, info = self._decide(seen, evaluate, modes)
                if self._bc_recurrent:  # pi_BC read this observation whichever action runs
                    bc = (self.params if self.params is not None else self.template).bc
                    self._bc_carry = self.agent.bc_carry_step(bc, seen)
                self._note_loop_gap()
                raw_next, reward, terminated, truncated, env_info = self.env.step(action)
                next_obs = policy_obs(raw_next, *self.contract)
                ending += self._episode_keys(stop)
                reward, terminated, truncated = _apply_operator(ending, float(reward), terminated, truncated)
                a_bc, a_rl, q_bc, q_rl, use_rl = info
                source = "rl" if use_rl else "bc"
                send = not evaluate and self.sink is not None
                if send or self.recorder is not None:
                    transition = Transition(
                        actor_id=self.actor_id, episode_id=episode_id, step=step, seq=self.seq, obs=obs,
                        action=action, reward=reward, terminated=bool(terminated), truncated=bool(truncated),
                        next_obs=next_obs, a_bc=a_bc, a_rl=a_rl, q_bc=float(q_bc), q_rl=float(q_rl),
                        source=source, param_version=self.version,
                    )
                    if self.recorder is not None:
                        self.recorder.add(transition)
                if send:
                    self.sink.add(transition)
                    self.seq += 1
                    self.summary.env_steps += 1
                step += 1
                total_reward += reward
                bc_steps += source == "bc"
                self._step, self._bc_steps = step, bc_steps
                obs = next_obs
                self._publish_status()
                if terminated or truncated:
                    success = bool(terminated and (env_info.get("success", True) or reward > 0))
                    break
        except _Quit:
            cut = EpisodeReport(self.actor_id, episode_id, step, False, total_reward, bc_steps / max(1, step),
                                eval=evaluate, cut=True, fault="stopped")
            if report:
                self._report(cut)
            if self.recorder is not None:
                self.recorder.end_episode(cut)
            self.summary.cut_episodes += 1
            raise
        result = EpisodeReport(self.actor_id, episode_id, step, success, total_reward, bc_steps / max(1, step),
                               eval=evaluate)
        if report:
            self._report(result)
        if self.recorder is not None:
            self.recorder.end_episode(result)
        if evaluate:
            self.summary.eval_episodes += 1
            self.summary.eval_successes += success
            self._recent_eval = (self._recent_eval + [success])[-20:]
        else:
            self.summary.episodes += 1
            self.summary.successes += success
            self._recent = (self._recent + [success])[-20:]
        # The operator's line counts this episode now, not at the next one's steps. Only the line: the status file
        # keeps its once-a-second rhythm, not one reset at every episode's end.
        self._draw_status_line()
        return result

    def _with_memory(self, obs):
        """The observation as the policies read it: with a recurrent pi_BC's memory under BC_CARRY (the transition
        stores `obs` without it; the learner recomputes it, docs/design.md#recurrent-bc)."""
        return {**obs, BC_CARRY: self._bc_carry} if self._bc_recurrent else obs

    def _decide(self, obs, evaluate: bool, modes: bool):
        """The gate's action and record, as numpy (pi_BC alone until parameters arrive); `modes`: act with the
        policies' modes."""
        self.key, k = jax.random.split(self.key)
        if self.params is None or self.policy == "bc":  # phase 1: pi_BC alone (sampled; its mode in evaluation)
            # agent.bc_action: mode makes pi_BC act with its mode in training too, in phase 1 as in the gate, so
            # Q-Estimation's returns are those of the pi_BC the gate then proposes
            mode = modes or (self.acfg.bc_action == "mode" and self.policy == "gated")
            act = self.agent.bc_mode_act if mode else self.agent.bc_act
            action = np.asarray(jax.device_get(act(self.template, obs, k)), np.float32)
            record = (action, action, 0.0, 0.0, False)
        elif self._random_left > 0 and not evaluate:
            self._random_left -= 1
            action = np.asarray(jax.device_get(self.agent.random_act(k)), np.float32)
            record = (action, action, 0.0, 0.0, True)
        elif self.policy == "rl":  # pi_RL alone (q2rl deploy --policy rl)
            act = self.agent.rl_mode_act if modes else self.agent.rl_act
            action = np.asarray(jax.device_get(act(self.params, obs, k)), np.float32)
            record = (action, action, 0.0, 0.0, True)
        else:
            gate = self.agent.eval_gate if modes else self.agent.gate
            action, info = jax.device_get(gate(self.params, obs, k))
            action = np.asarray(action, np.float32)
            record = (np.asarray(info.a_bc, np.float32), np.asarray(info.a_rl, np.float32),
                      float(info.q_bc), float(info.q_rl), bool(info.use_rl))
        if self._ou is not None and not evaluate and self.policy == "gated":
            self._noise = ou_step(self._noise, self._noise_rng.standard_normal(ACTION_DIM), *self._ou)
            action = np.clip(action + self._noise, -1.0, 1.0).astype(np.float32)
        if not np.all(np.isfinite(action)):
            raise FloatingPointError(f"the gate produced a non-finite action {action} (parameter version {self.version})")
        return action, record

    def _report(self, report: EpisodeReport) -> None:
        if self.sink is None:
            return
        self.sink.end_episode(report)
        if self.console is not None:  # the operator sees how each episode they marked (or the env ended) counted
            outcome = "cut" if report.cut else ("success" if report.success else "failure")
            self.console.print(f"episode {report.episode_id}{' (evaluation)' if report.eval else ''}: {outcome} "
                               f"after {report.length} steps, BC {100 * report.bc_share:.0f}%")

    def _hold_control_rate(self, next_tick: float) -> float:
        """Real-time pacing: sleep until the next control tick; a late tick starts a new schedule."""
        now = self.clock()
        if next_tick > now:
            self.sleep(next_tick - now)
            return next_tick + self.period_s
        return max(next_tick, now - self.period_s) + self.period_s

    def _note_loop_gap(self) -> None:
        now = self.clock()
        if self._last_step_time is not None:
            gap = now - self._last_step_time
            self._recent_max_gap = max(self._recent_max_gap, gap)
            if gap > self.summary.max_loop_gap_s:
                self.summary.max_loop_gap_s = gap
                self.summary.max_loop_gap_at = f"{self.episode_id - 1}/{self._step}"
        self._last_step_time = now

    # -------------------------------------------------------------------------------------- status
    def _publish_status(self, waiting: bool = False, force: bool = False, holding_s: float = 0.0) -> None:
        """The console's status line and actors/<id>.json, at most once a second; `holding_s`: how long the hold
        under way has lasted (so a hold shows while it happens, not only once it ends)."""
        now = time.monotonic()
        if not force and now - self._last_status < 1.0:
            return
        self._last_status = now
        link, h = self._link()
        self._draw_status_line(waiting, (link, h))
        if self._status_writer is not None:
            self._status_writer.update(ActorStatus(
                actor_id=self.actor_id, episode=self.episode_id, step=self._step, env_steps=self.summary.env_steps,
                param_version=self.version, param_adopted_at=self._adopted_at, link=link, spooled=0 if h is None else int(h.unacked),
                waiting_for_learner_s=self.summary.paced_s + holding_s, max_loop_gap_ms=1000 * self.summary.max_loop_gap_s,
                max_loop_gap_at=self.summary.max_loop_gap_at, recent_max_loop_gap_ms=1000 * self._recent_max_gap))
            self._recent_max_gap = 0.0

    def _link(self) -> tuple[str, Any]:
        """The link's state in a word, and the source's health (None in process)."""
        health = getattr(self.source, "health", None)
        h = health() if callable(health) else None
        link = "local" if h is None else ("connected" if h.connected else ("refused" if h.refused else "reconnecting"))
        return link, h

    def _draw_status_line(self, waiting: bool = False, link_state: tuple[str, Any] | None = None) -> None:
        """The operator console's status line (none without a console); `link_state`: `_link()` if the caller has it."""
        if self.console is None:
            return
        from q2rl.robot.console import StatusLine

        link, h = link_state or self._link()
        recent = self._recent or self._recent_eval  # an evaluation-only actor (q2rl deploy) shows its own
        rate = float(np.mean(recent)) if recent else float("nan")
        self.console.set_status(StatusLine(
            episode=self._running_episode if self._running_episode is not None else self.episode_id,
            step=self._step, success_rate=rate,
            bc_share=self._bc_steps / self._step if self._step else float("nan"),
            learner_version=self.version if self.params is not None else -1,
            link=link if h is None or h.connected else f"{link} (spool {h.unacked})",
            policy=self._deployed_label(),
            mode="paused" if self.paused else self._mode,
            message="waiting for the learner" if waiting and not self.paused else ""))

    def _deployed_label(self) -> str:
        """What acts, for the status line of an actor with no learner (q2rl deploy); empty while training."""
        if self.source is not None or self.sink is not None:
            return ""
        return self.policy if self.params is not None else "bc (pre-RL)"


def _apply_operator(commands: list, reward: float, terminated: bool, truncated: bool) -> tuple[float, bool, bool]:
    """Operator keys override the environment: s = success (reward 1, terminates), f = failure (truncates)."""
    from q2rl.robot.console import Command

    if Command.SUCCESS in commands:
        return 1.0, True, False
    if Command.FAILURE in commands:
        return reward, False, True
    return reward, terminated, truncated
