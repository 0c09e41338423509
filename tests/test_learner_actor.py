"""Learner and actor: the phase driver, UTD against the insert rate, sim pacing, cut episodes, checkpoints,
data-parallel updates, and — over real loopback gRPC between real processes — SIGKILL of an actor and of the
learner (then --resume) without losing or duplicating a transition."""

import dataclasses
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from process_util import (REPO, child_env, free_port, kill_left, q2rl, read_json, start, stop_in_order, tiny_bc_policy,
                          tiny_run_config, wait_for)

from q2rl.config import load_config
from q2rl.interfaces import EpisodeReport, Transition


@pytest.fixture(scope="module")
def bc_checkpoint(tmp_path_factory):
    return tiny_bc_policy(tmp_path_factory.getbasetemp() / "q2rl-tiny-bc")


def run_config(tmp_path, bc_checkpoint, **sections):
    from q2rl.run_config import RunConfig

    return load_config(RunConfig, tiny_run_config(tmp_path, bc_checkpoint, **sections))


def test_phases_pacing_and_one_update_per_online_step_in_process(tmp_path, bc_checkpoint):
    from q2rl.actor.actor import Actor
    from q2rl.core.checkpoint import load_bc_policy
    from q2rl.learner.learner import Learner
    from q2rl.local import LocalLink
    from q2rl.robot.envs import make_env

    cfg = run_config(tmp_path, bc_checkpoint, session={"env_steps": 150}, learner={"eval_window": 2})
    bc = load_bc_policy(bc_checkpoint)
    phases, over_grant = [], []
    learner = Learner(cfg, tmp_path, bc, int(bc.normalizer.state_mean.shape[-1]),
                      on_phase_change=lambda phase: (phases.append(phase), learner.publish(link, force=True)))
    done = threading.Event()

    def learner_turn(_seconds):  # the actor's pacing hold lets the learner work (one thread, deterministic)
        learner.work()
        learner.publish(link)
        if learner.finished:
            done.set()  # what the session does once the env-step budget is spent: stop the actor

    def add(t):
        over_grant.append(t.seq - link.grants().for_actor(t.actor_id, 0))
        learner.ingest_transition(t)

    link = LocalLink(add, lambda r: (learner.ingest_report(r), learner_turn(0)))
    learner.publish(link, force=True)
    env = make_env(cfg.env)
    actor = Actor(cfg, env, bc, sink=link, source=link, sleep=learner_turn)
    assert actor.paced_by_learner  # sim + pace auto
    summary = actor.run(done)
    env.close()
    assert summary.quit and summary.cut_episodes == 1  # stopped while held mid-episode: that episode is cut

    book = learner.book
    assert phases == ["q_estimation", "online"]
    assert len(book.rollout_keys) >= cfg.agent.q_estimation.rollout_episodes
    # UTD against the insert rate: exactly one update call per online env step, none ahead of the data.
    assert book.updates == book.env_steps - book.online_start_steps > 0
    # Pacing: the actor never sent a seq beyond its grant, and it did have to wait for the learner.
    assert max(over_grant) <= 0
    assert actor.summary.paced_s > 0
    assert book.env_steps == actor.summary.env_steps == len(learner.replay)
    # Parameters reached the actor and its steps record the version they were decided with.
    assert actor.params is not None and actor.version > 0
    # Eval episodes are reported (not trained on) and make the curve.
    assert actor.summary.eval_episodes >= 2 and book.eval_episodes == actor.summary.eval_episodes
    assert len(book.eval_curve) == book.eval_episodes // 2
    status = learner.status()
    assert status.phase == "done" and status.env_steps >= 150
    assert 0.0 <= status.bc_share <= 1.0
    # The last update's losses reach status.json and the live line (what an operator watches for divergence).
    from q2rl.progress import LearnerStatus, format_status_line

    assert np.isfinite(status.learning["q_mean"]) and np.isfinite(status.learning["critic_loss"])
    # q2rl's default critic carries the calibrated term (weight 1), so the learner reports it.
    assert cfg.agent.calibrated_conservatism == 1.0 and np.isfinite(status.learning["conservative_term"])
    assert status.learning["conservative_term"] != 0.0
    assert LearnerStatus.from_json(json.loads(json.dumps(status.to_json()))).learning == status.learning
    assert f"Q {status.learning['q_mean']:.3g} |" in format_status_line(status, [], 150, 0.0)


def test_cut_episodes_are_counted_once_however_they_are_learned_of(tmp_path, bc_checkpoint):
    from q2rl.core.checkpoint import load_bc_policy
    from q2rl.learner.learner import Learner

    cfg = run_config(tmp_path, bc_checkpoint)
    bc = load_bc_policy(bc_checkpoint)
    learner = Learner(cfg, tmp_path, bc, int(bc.normalizer.state_mean.shape[-1]))
    dim = int(bc.normalizer.state_mean.shape[-1])
    seq = iter(range(100))

    def step(episode, k, done=False):
        s = np.full(dim, k, np.float32)
        a = np.zeros(7, np.float32)
        learner.ingest_transition(Transition("a", episode, k, next(seq), {"state": s}, a, 0.0, done, False,
                                             {"state": s + 1}, a, a, 0.0, 0.0, "bc", 0))

    step(0, 0), step(0, 1)
    learner.ingest_report(EpisodeReport("a", 0, 2, False, 0.0, 1.0, cut=True, fault="actor restarted"))  # service
    step(1, 0)  # ... and the actor moved on: still one cut
    assert learner.book.cut_episodes == 1
    learner.actor_lost("a")  # the actor's connection is gone mid-episode 1
    learner.ingest_report(EpisodeReport("a", 1, 1, False, 0.0, 1.0, cut=True))  # and later the service says so
    step(2, 0)
    assert learner.book.cut_episodes == 2
    step(2, 1, done=True)
    learner.ingest_report(EpisodeReport("a", 2, 2, True, 1.0, 1.0))
    assert (learner.book.cut_episodes, learner.book.episodes, learner.book.env_steps) == (2, 1, 5)
    assert learner.book.train_successes == 1  # a cut episode is no training success, nor a training episode
    assert learner.status().train_success_rate == 1.0


def test_rlpd_learner_samples_half_of_every_batch_from_the_demos_pi_bc_was_trained_on(tmp_path, tmp_path_factory,
                                                                                     bc_checkpoint):
    """A sim policy trained here names its demos (bc.demos); an rlpd learner loads the successful ones and mixes
    them 50/50 into every critic minibatch of the update calls it owes."""
    from q2rl.core.checkpoint import load_bc_policy
    from q2rl.demos.hdf5 import read_demos
    from q2rl.learner.bc_source import with_bc_source
    from q2rl.learner.learner import Learner
    from q2rl.run_config import RunConfig

    trained = with_bc_source(load_config(RunConfig, tiny_run_config(tmp_path_factory.getbasetemp() / "q2rl-tiny-bc")))
    assert trained.bc.checkpoint == bc_checkpoint and Path(trained.bc.demos).is_file()
    demos = read_demos(trained.bc.demos).episodes
    cfg = run_config(tmp_path, bc_checkpoint, bc={"demos": trained.bc.demos}, agent={"algo": "rlpd"})
    bc = load_bc_policy(bc_checkpoint)
    dim = int(bc.normalizer.state_mean.shape[-1])
    learner = Learner(cfg, tmp_path, bc, dim)
    assert len(learner.demos) == sum(len(d) for d in demos if d.success) > 0

    batches = []
    update = learner.update
    learner.update = lambda state, b, key: (batches.append(b), update(state, b, key))[1]
    learner.book.phase = "online"
    marker = 1000.0  # online states are all `marker`, the demos' never are
    for k in range(40):
        s, a = np.full(dim, marker, np.float32), np.zeros(7, np.float32)
        learner.ingest_transition(Transition("a", k // 10, k % 10, k, {"state": s}, a, 0.0, False, k % 10 == 9,
                                             {"state": s}, a, a, 0.0, 0.0, "rl", 1))
    while learner.work():  # one update call owed per online env step, `updates_per_chunk` at a time
        pass
    assert learner.book.updates == len(batches) == 40
    for b in batches:
        is_demo = np.asarray(b.is_demo)
        assert is_demo.mean() == cfg.agent.demo_fraction == 0.5
        states = np.asarray(b.obs["state"])[..., 0]
        assert np.all(states[~is_demo] == marker) and not np.any(states[is_demo] == marker)


def test_a_demo_buffer_without_usable_demos_is_a_config_error(tmp_path, bc_checkpoint):
    from q2rl.config import ConfigError
    from q2rl.core.checkpoint import load_bc_policy
    from q2rl.demos.hdf5 import Demo
    from q2rl.demos.hdf5 import write_demos
    from q2rl.learner.learner import Learner

    bc = load_bc_policy(bc_checkpoint)
    dim = int(bc.normalizer.state_mean.shape[-1])
    with pytest.raises(ConfigError, match="bc.demos: agent.algo rlpd samples 50% of every batch from demonstrations"):
        Learner(run_config(tmp_path, bc_checkpoint, agent={"algo": "rlpd"}), tmp_path, bc, dim)
    wrong = tmp_path / "other_task.hdf5"
    write_demos(wrong, [Demo(states=np.zeros((3, dim + 2), np.float32), actions=np.zeros((3, 7), np.float32),
                             rewards=np.r_[0, 0, 1].astype(np.float32), dones=np.r_[0, 0, 1].astype(bool),
                             success=True)], {"env_name": "other"})
    cfg = run_config(tmp_path, bc_checkpoint, bc={"demos": str(wrong)}, agent={"algo": "q2rl", "use_demos": True})
    with pytest.raises(ConfigError, match=f"has states of size {dim + 2}, but pi_BC reads {dim}"):
        Learner(cfg, tmp_path, bc, dim)
    truncated = tmp_path / "truncated.hdf5"
    truncated.write_bytes(wrong.read_bytes()[:300])
    cfg = run_config(tmp_path, bc_checkpoint, bc={"demos": str(truncated)}, agent={"algo": "rlpd"})
    with pytest.raises(ConfigError, match="bc.demos: .*truncated.hdf5"):
        Learner(cfg, tmp_path, bc, dim)


def test_pacing_grants_leave_no_actor_stuck_short_of_the_budget(tmp_path, bc_checkpoint):
    """Two actors, one step of headroom left before the session's budget: someone must get it (a floor split of
    1 // 2 = 0 stalled a two-actor session at 239 of 240 steps)."""
    from q2rl.core.checkpoint import load_bc_policy
    from q2rl.learner.learner import Learner

    cfg = run_config(tmp_path, bc_checkpoint, session={"env_steps": 240}, learner={"ahead_steps": 50})
    bc = load_bc_policy(bc_checkpoint)
    learner = Learner(cfg, tmp_path, bc, int(bc.normalizer.state_mean.shape[-1]))
    learner.book.phase, learner.book.online_start_steps = "online", 60
    learner.book.updates, learner.book.env_steps = 179, 239  # paid = min(60 + 179 + 50, 240) = 240
    learner.last_seq.update({"actor-0": 143, "actor-1": 94})
    grants = learner.grants().max_seq
    assert grants["actor-0"] >= 144 and grants["actor-1"] >= 95  # each may send its next step
    assert grants["actor-0"] - 143 + grants["actor-1"] - 94 <= 240 - 239 + 1  # overshoot below one step per actor
    learner.book.env_steps = 240  # budget spent: nobody may send more
    grants = learner.grants().max_seq
    assert (grants["actor-0"], grants["actor-1"]) == (143, 94)


def test_rollout_and_bc_grants_keep_actors_within_ahead_steps_of_what_the_learner_stored(tmp_path, bc_checkpoint):
    """No updates to wait for is no licence to run free: a learner slow to ingest (a loaded 2-core box) once let a
    sim actor run 400 pi_BC steps past the switch to online RL and past a 150-step budget."""
    from q2rl.core.checkpoint import load_bc_policy
    from q2rl.interfaces import Grants
    from q2rl.learner.learner import Learner

    bc = load_bc_policy(bc_checkpoint)
    dim = int(bc.normalizer.state_mean.shape[-1])
    for algo, phase in (("q2rl", "rollout"), ("bc", "online")):
        cfg = run_config(tmp_path, bc_checkpoint, agent={"algo": algo}, session={"env_steps": 500},
                         learner={"ahead_steps": 50})
        learner = Learner(cfg, tmp_path, bc, dim)
        learner.book.phase = phase
        assert learner.grants() == Grants({}, 49)  # nobody heard from yet: seqs 0..49
        learner.last_seq.update({"actor-0": 99, "actor-1": 79})
        learner.book.env_steps = 180  # stored so far; the two actors share 50 more
        assert learner.grants() == Grants({"actor-0": 124, "actor-1": 104}, 24)
        learner.book.env_steps = 490  # the budget caps it: 10 more steps, 5 each
        assert learner.grants() == Grants({"actor-0": 104, "actor-1": 84}, 4)
    learner.book.phase = "q_estimation"  # phase 1's fit: everyone holds
    assert learner.grants() == Grants({"actor-0": 99, "actor-1": 79}, -1)


def test_checkpoint_round_trip_restores_state_and_bookkeeping(tmp_path, bc_checkpoint):
    import jax

    from q2rl.core.checkpoint import load_bc_policy
    from q2rl.learner.learner import Learner

    cfg = run_config(tmp_path, bc_checkpoint)
    bc = load_bc_policy(bc_checkpoint)
    dim = int(bc.normalizer.state_mean.shape[-1])
    a = Learner(cfg, tmp_path, bc, dim)
    a.book.phase, a.book.updates, a.book.online_start_steps, a.book.param_version = "online", 17, 40, 9
    a.book.eval_curve = [{"env_steps": 50, "success_rate": 0.5, "episodes": 10}]
    a.state = a.state.replace(step=a.state.step + 5)
    a.save()
    b = Learner(dataclasses.replace(cfg, learner=dataclasses.replace(cfg.learner, seed=123)), tmp_path, bc, dim)
    assert b.restore_checkpoint()
    assert b.saved_book == a.book
    assert int(b.state.step) == int(a.state.step) == 5
    for x, y in zip(jax.tree_util.tree_leaves(a.state.params.critic), jax.tree_util.tree_leaves(b.state.params.critic)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert np.array_equal(np.asarray(b.key), np.asarray(a.key))  # the RNG continues, not restarts
    assert b.rng.integers(1 << 30) == a.rng.integers(1 << 30)


def test_the_best_eval_window_saves_best_ckpt_with_the_state_it_closed_on_and_a_resume_keeps_it(tmp_path, bc_checkpoint,
                                                                                                   capsys):
    """checkpoint/best.ckpt holds the state when the best window so far closed (a tie goes to the later state); a
    worse window leaves it alone; a resumed learner must beat the saved window, not the replay's pick."""
    import threading

    import jax

    from q2rl.actor.cli import evaluate_run
    from q2rl.core.checkpoint import load_bc_policy, load_checkpoint
    from q2rl.learner.episode_store import EpisodeStore
    from q2rl.learner.learner import Learner
    from q2rl.run_dir import BEST_CHECKPOINT_FILE

    cfg = run_config(tmp_path, bc_checkpoint, learner={"eval_window": 2})
    bc = load_bc_policy(bc_checkpoint)
    dim = int(bc.normalizer.state_mean.shape[-1])
    best_file = tmp_path / BEST_CHECKPOINT_FILE

    # No window has closed: nothing to evaluate as "best", and the error says when the file appears.
    assert evaluate_run(cfg, tmp_path, 1, threading.Event(), "best") == 2
    assert "eval_window" in capsys.readouterr().err and not best_file.exists()

    learner = Learner(cfg, tmp_path, bc, dim)
    learner.book.phase = "online"
    episode = iter(range(100))

    def window(env_steps: int, successes: tuple[bool, bool], step: int):
        learner.book.env_steps = env_steps
        learner.state = learner.state.replace(step=step)  # marks which state a save took
        for s in successes:
            learner.ingest_report(EpisodeReport("a", next(episode), 5, s, 0.0, 0.5, eval=True))
        return learner.save_best()

    def chosen(point: dict) -> dict:
        """What the choice rests on (a point also has its wall time, updates and BC shares)."""
        keys = ("env_steps", "success_rate", "episodes", "train_episodes_total", "train_successes_total")
        return {k: point[k] for k in keys}

    def saved():
        ckpt = load_checkpoint(best_file, target=jax.device_get(learner.state))
        return int(ckpt.state.step), chosen(ckpt.metadata["book"]["best_eval"])

    def practise(*successes: bool):
        for s in successes:
            learner.ingest_report(EpisodeReport("a", next(episode), 5, s, 0.0, 0.5))

    assert window(100, (True, False), step=1) == best_file
    assert saved() == (1, {"env_steps": 100, "success_rate": 0.5, "episodes": 2,
                           "train_episodes_total": 0, "train_successes_total": 0})
    practise(True, False, False)
    assert window(200, (False, False), step=2) is None  # worse: best.ckpt stays the step-1 state
    assert saved()[0] == 1
    practise(True)
    assert window(300, (True, True), step=3) == best_file
    assert window(400, (True, True), step=4) == best_file  # a tie: the later, longer-trained state
    best = {"env_steps": 400, "success_rate": 1.0, "episodes": 2, "train_episodes_total": 4, "train_successes_total": 2}
    assert saved() == (4, best)
    assert chosen(dataclasses.asdict(learner.status().best_eval)) == best
    # and the success of the training episodes finished since the window before (None: none finished)
    assert [p["train_success"] for p in learner.book.eval_curve] == [None, pytest.approx(1 / 3), 1.0, None]
    assert [p["success_rate"] for p in learner.book.eval_curve] == [0.5, 0.0, 1.0, 1.0]
    # each window carries the training episodes (and their successes) finished when it closed; eval ones not
    assert [(p["train_episodes_total"], p["train_successes_total"]) for p in learner.book.eval_curve] == [
        (0, 0), (3, 1), (4, 2), (4, 2)]
    assert learner.status().train_successes == 2

    # A learner that resumes (here before any learner.ckpt was written) takes the best from best.ckpt itself.
    resumed = Learner(cfg, tmp_path, bc, dim)
    resumed.resume_from(EpisodeStore(tmp_path))
    assert chosen(resumed.book.best_eval) == best
    for i, s in enumerate((True, False)):
        resumed.ingest_report(EpisodeReport("a", 200 + i, 5, s, 0.0, 0.5, eval=True))
    assert resumed.save_best() is None and saved()[0] == 4


def test_non_finite_parameters_are_neither_published_nor_checkpointed(tmp_path, bc_checkpoint):
    """A diverged learner stops with an error naming what is intact; the last finite checkpoint survives it."""
    import jax

    from q2rl.core.checkpoint import load_bc_policy
    from q2rl.learner.learner import CHECKPOINT_FILE, DivergedError, Learner

    cfg = run_config(tmp_path, bc_checkpoint)
    bc = load_bc_policy(bc_checkpoint)
    dim = int(bc.normalizer.state_mean.shape[-1])
    from q2rl.local import LocalLink

    learner = Learner(cfg, tmp_path, bc, dim)
    learner.book.phase, learner.book.updates = "online", 7
    board = LocalLink(lambda t: None, lambda r: None)
    learner.publish(board)
    assert "policy" in board.latest()[1] and board.latest()[0] == 1  # finite parameters publish as before
    learner.save()
    good = (tmp_path / CHECKPOINT_FILE).read_bytes()

    critic = learner.state.params.critic
    first = jax.tree_util.tree_leaves(critic)[0]
    poisoned = jax.tree_util.tree_map(lambda x: x.at[(0,) * x.ndim].set(float("nan")) if x is first else x, critic)
    learner.state = learner.state.replace(params=learner.state.params.replace(critic=poisoned))
    learner.book.updates = 9
    with pytest.raises(DivergedError) as publish_error:
        learner.publish(board)
    message = str(publish_error.value)
    assert "after update 9" in message and "critic" in message and "not sent to the actors" in message
    assert str(tmp_path / CHECKPOINT_FILE) in message and "agent.critic_lr" in message
    with pytest.raises(DivergedError):
        learner.save()
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == good  # the finite checkpoint was not overwritten

    restored = Learner(cfg, tmp_path, bc, dim)
    assert restored.restore_checkpoint() and restored.saved_book.updates == 7
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(restored.state.params))


def test_update_is_data_parallel_over_local_devices(tmp_path):
    """With two (forced) CPU devices the batch is split on its batch axis and the result equals one device's."""
    script = tmp_path / "dp.py"
    script.write_text(textwrap.dedent("""
        import json
        import jax, numpy as np
        from q2rl.config import from_dict
        from q2rl.core.agent_config import AgentConfig
        from q2rl.core.agents import make_agent
        from q2rl.core.normalization import ObsNormalizer
        from q2rl.core.replay import Batch
        from q2rl.learner.learner import DataParallel

        cfg = from_dict(AgentConfig, {"algo": "rlpd", "hidden_dims": [32, 32], "value_hidden_dims": [32],
                                       "ensemble_size": 2, "batch_size": 8, "utd": 2})
        agent = make_agent(cfg, 7, ())
        params = agent.init_params(jax.random.PRNGKey(0), {"state": np.zeros(5, np.float32)})
        state = agent.init_state(params)
        rng = np.random.default_rng(0)
        u, b = 2, 8
        batch = Batch(obs={"state": rng.normal(size=(u, b, 5)).astype(np.float32)},
                      actions=rng.uniform(-1, 1, (u, b, 7)).astype(np.float32),
                      rewards=rng.normal(size=(u, b)).astype(np.float32),
                      discounts=np.full((u, b), 0.99, np.float32),
                      next_obs={"state": rng.normal(size=(u, b, 5)).astype(np.float32)},
                      a_bc=rng.uniform(-1, 1, (u, b, 7)).astype(np.float32), is_demo=np.zeros((u, b), bool))
        key = jax.random.PRNGKey(1)
        single, _ = agent.update(state, batch, key)
        dp = DataParallel(jax.local_devices(), b)
        sharded = dp.shard_batch(batch)
        multi, _ = agent.update(dp.replicate(state), sharded, key)
        diff = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                   for x, y in zip(jax.tree_util.tree_leaves(single.params.critic),
                                   jax.tree_util.tree_leaves(multi.params.critic)))
        leaf = jax.tree_util.tree_leaves(multi.params.critic)[0]
        print(json.dumps({"devices": len(jax.local_devices()), "max_diff": diff,
                          "batch_shards": len(sharded.actions.sharding.device_set),
                          "batch_spec": str(sharded.actions.sharding.spec),
                          "result_devices": len(leaf.sharding.device_set)}))
        """))
    env = child_env()
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == 2
    assert result["batch_shards"] == 2 and "batch" in result["batch_spec"]
    assert result["result_devices"] == 2  # the state stays replicated on both devices
    assert result["max_diff"] < 1e-4  # same update as on one device (up to float reassociation)


def test_a_batch_that_does_not_split_over_the_devices_is_a_clear_error():
    from q2rl.learner.learner import DataParallel

    class Fake:
        pass

    with pytest.raises(ValueError, match="a critic minibatch of 10 transitions .* does not split over 3 devices"):
        DataParallel([Fake(), Fake(), Fake()], 10)


# ------------------------------------------------------------------------------------------ real processes
def log_time(log: Path, needle: str) -> float:
    """The wall time of the first line of a q2rl process log that contains `needle` (its asctime stamp)."""
    line = next(line for line in log.read_text().splitlines() if needle in line)
    stamp, millis = line[:23].split(",")
    return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000.0


def store_seqs(run: Path, actor_id: str) -> list[int]:
    from q2rl.learner.episode_store import EpisodeStore

    return [t.seq for ep in EpisodeStore(run).episodes(actor_id) for t in ep.transitions]


@pytest.mark.slow
def test_faults_over_loopback_grpc_kill_an_actor_then_the_learner_and_resume(tmp_path, bc_checkpoint):
    """Two actors at a 20 Hz control rate (a real robot's pacing). SIGKILL one actor: the learner keeps training
    on the other and counts the cut episode. SIGKILL the learner: the live actor's control loop never stalls (no
    step later than a few control periods), and after `q2rl learner --resume` the episode store and the replay
    hold every transition exactly once (counted by seq)."""
    port = free_port()
    hz = 20.0
    publish_every_s = 6.0  # a set sent at once arrives in well under a second; one that waits for a publish, later
    config = tiny_run_config(
        tmp_path, bc_checkpoint,
        env={"sim": {"control_hz": hz}},
        learner={"address": f"127.0.0.1:{port}", "run_name": "faults", "checkpoint_every_s": 1.0,
                 "publish_every_s": publish_every_s},
        actor={"pace": "control_rate", "eval_every_episodes": 0},
        session={"env_steps": 100000},
    )
    run = tmp_path / "runs" / "faults"
    logs = tmp_path / "logs"
    logs.mkdir()
    # In a deployment the learner has a box of its own; here it shares two cores with the actors, so it runs at
    # lower CPU priority, as if on another machine, while the control loop's timing is measured.
    learner = start(q2rl("learner", "--config", str(config)), logs / "learner.log", niceness=10)
    procs = [learner]
    try:
        wait_for(lambda: (run / "learner.addr").is_file(), 180, "the learner to serve", (learner,))

        def actor(name):
            return start(q2rl("actor", "--config", str(run / "config.yaml"), "--learner", f"127.0.0.1:{port}",
                              f"actor.actor_id={name}", f"actor.status_dir={run}",
                              f"actor.spool_dir={tmp_path / 'spool' / name}", "actor.console=none"),
                         logs / f"{name}.log")

        steady, doomed = actor("steady"), actor("doomed")
        procs += [steady, doomed]
        status = lambda: read_json(run / "status.json") or {}
        wait_for(lambda: status().get("phase") == "online" and status().get("updates", 0) > 20, 240,
                 "online updates", (learner, steady, doomed))

        # 1. SIGKILL an actor mid-episode: training goes on with the other; the cut episode is accounted. Killed
        # between two episodes, the actor leaves nothing open to cut, so the kill waits for a new status snapshot
        # early in an episode of 30 steps (a snapshot is at most about a second, 20 steps, old when written).
        def early_in_an_episode(seen={"at": None}):
            snapshot = read_json(run / "actors" / "doomed.json") or {}
            fresh = snapshot.get("updated_at") != seen["at"]
            seen["at"] = snapshot.get("updated_at")
            return fresh and 2 <= snapshot.get("step", 0) <= 8

        wait_for(early_in_an_episode, 60, "the doomed actor a few steps into an episode", (learner, doomed),
                 poll_s=0.01)
        doomed.kill()
        doomed.wait()
        killed_at = status()["updates"]
        wait_for(lambda: status().get("cut_episodes", 0) >= 1, 60, "the cut episode to be counted", (learner,))
        wait_for(lambda: status()["updates"] > killed_at + 20, 60, "updates after the actor died", (learner, steady))

        # 2. SIGKILL the learner; the actor keeps stepping (spooling), then the learner resumes on the same port.
        before = status()["env_steps"]
        gaps = []  # the actor's longest control-step gap per status snapshot, while the learner is away

        def sample_gaps():
            snapshot = read_json(run / "actors" / "steady.json") or {}
            gaps.append((snapshot.get("updated_at"), snapshot.get("recent_max_loop_gap_ms", 0.0)))

        learner.kill()
        learner.wait()
        for _ in range(12):
            time.sleep(0.25)
            sample_gaps()
        learner = start(q2rl("learner", "--resume", str(run)), logs / "learner-resumed.log", niceness=10)
        procs.append(learner)
        wait_for(lambda: sample_gaps() or (status().get("env_steps", 0) > before + 60 and status().get("updates", 0) > 0),
                 240, "the resumed learner to ingest the spooled and new steps", (learner, steady), poll_s=0.25)
        # The control-rate actor acts on the resumed learner's parameters within one publish interval of its
        # reconnection (the resumed learner may repeat a version number the actor holds: it adopts the new set anyway).
        connected_at = log_time(logs / "learner-resumed.log", "actor steady connected")
        adopted_at = wait_for(lambda: (read_json(run / "actors" / "steady.json") or {}).get("param_adopted_at", 0)
                              > connected_at and read_json(run / "actors" / "steady.json")["param_adopted_at"],
                              30, "the actor to adopt the resumed learner's parameters", (learner, steady))
        assert adopted_at - connected_at < publish_every_s, (adopted_at - connected_at)

        # 3. Clean shutdown: the actor flushes its spool, then the learner checkpoints.
        stop_in_order(steady, learner)
    finally:
        kill_left(procs)

    final = read_json(run / "status.json")
    steady_status = read_json(run / "actors" / "steady.json")
    sent = steady_status["env_steps"]
    seqs = store_seqs(run, "steady")
    assert seqs == list(range(sent)), "every transition the actor made is stored exactly once, in seq order"
    doomed_seqs = store_seqs(run, "doomed")
    assert doomed_seqs == list(range(len(doomed_seqs))) and doomed_seqs
    assert final["replay_size"] == final["env_steps"] == len(seqs) + len(doomed_seqs)
    assert final["duplicates_dropped"] == 0
    assert final["cut_episodes"] >= 1
    assert steady_status["param_version"] > 0, "the control-rate actor adopted the learner's parameters"
    # The control loop never stalled while the learner was gone or restarting. A stall on the learner (waiting for
    # a grant, a reconnect backoff, a blocking flush) lasts a second or more; two busy cores shared with the
    # learner and another actor delay a step by tens of ms (147 ms seen once under a concurrent training run).
    # So the bound is 5 control periods (250 ms), well under any stall and clear of scheduling noise.
    snapshots = {t: g for t, g in gaps if t is not None}
    assert len(snapshots) >= 3, gaps
    assert max(snapshots.values()) < 5 * 1000.0 / hz, sorted(snapshots.values())
    assert "resumed" in (logs / "learner-resumed.log").read_text()


@pytest.mark.slow
def test_a_learner_killed_in_the_rollouts_and_in_the_fit_resumes_and_the_same_actor_steps_again(tmp_path,
                                                                                              bc_checkpoint):
    """SIGKILL the learner once during the Q-Estimation rollouts and once during the fit, and resume it each time:
    the one actor, never restarted and held by the sim pacing, steps again within 15 s of the learner serving
    again; the second resume goes on with the fit's saved progress; every transition is stored exactly once."""
    from process_util import tiny_agent

    from q2rl.core.checkpoint import CheckpointError, read_metadata
    from q2rl.run_dir import FIT_CHECKPOINT_FILE

    port = free_port()
    fit_steps = {"value_updates": 300, "actor_updates": 300, "critic_updates": 2400}
    config = tiny_run_config(
        tmp_path, bc_checkpoint,
        agent={**tiny_agent(), "q_estimation": {"rollout_episodes": 4, "batch_size": 64, **fit_steps}},
        learner={"address": f"127.0.0.1:{port}", "run_name": "restarts", "checkpoint_every_s": 0.5},
        actor={"eval_every_episodes": 0}, session={"env_steps": 100000})
    run, logs = tmp_path / "runs" / "restarts", tmp_path / "logs"
    logs.mkdir()
    status = lambda: read_json(run / "status.json") or {}
    actor_steps = lambda: (read_json(run / "actors" / "paced.json") or {}).get("env_steps", 0)
    learner = start(q2rl("learner", "--config", str(config)), logs / "learner-1.log")
    actor = None
    procs = [learner]

    def held_still(seconds: float = 2.0) -> int:
        """The actor's step count once it has stayed put for `seconds` (its grant is used up)."""
        last, since = actor_steps(), time.monotonic()
        while time.monotonic() - since < seconds:
            time.sleep(0.2)
            if actor_steps() != last:
                last, since = actor_steps(), time.monotonic()
        return last

    def kill_and_resume(n: int, look=lambda: None) -> tuple[subprocess.Popen, object]:
        """Kill the learner, wait for the actor to hold, `look()` at the run, resume; what `look` returned."""
        learner.kill()
        learner.wait()
        held = held_still()
        seen = look()
        log = logs / f"learner-{n}.log"
        resumed = start(q2rl("learner", "--resume", str(run)), log)
        procs.append(resumed)
        wait_for(lambda: "serving on" in log.read_text(), 180, "the resumed learner to serve", (resumed, actor))
        wait_for(lambda: actor_steps() > held, 15, "the same actor to step again", (resumed, actor))
        return resumed, seen

    try:
        wait_for(lambda: (run / "learner.addr").is_file(), 180, "the learner to serve", (learner,))
        actor = start(q2rl("actor", "--config", str(run / "config.yaml"), "--learner", f"127.0.0.1:{port}",
                           "actor.actor_id=paced", f"actor.status_dir={run}",
                           f"actor.spool_dir={tmp_path / 'spool'}", "actor.console=none"), logs / "actor.log")
        procs.append(actor)

        # 1. In the rollouts (pi_BC episodes, before any parameter set exists).
        wait_for(lambda: status().get("phase") == "rollout" and status().get("env_steps", 0) >= 20, 120,
                 "rollout steps", (learner, actor))
        learner, _ = kill_and_resume(2)
        assert status().get("phase") in ("rollout", "q_estimation", "online")

        # 2. In the fit, once some of its progress is checkpointed (into the critic stage, the longest).
        def fit_steps_saved() -> int:
            try:
                meta = read_metadata(run / FIT_CHECKPOINT_FILE)
            except (FileNotFoundError, CheckpointError):
                return 0
            return sum(list(fit_steps.values())[:meta["stage"]]) + meta["done"]

        total = sum(fit_steps.values())
        wait_for(lambda: status().get("phase") == "q_estimation" and fit_steps_saved() > 700, 120,
                 "the fit under way", (learner, actor), poll_s=0.02)
        learner, saved = kill_and_resume(3, fit_steps_saved)
        resumed_log = (logs / "learner-3.log").read_text()
        assert "Q-Estimation goes on from" in resumed_log, resumed_log[-2000:]
        left = int(resumed_log.split("Q-Estimation goes on from")[1].split(" steps left")[0].rsplit(" ", 1)[1])
        assert saved > 700 and left == total - saved, "the fit went on from its checkpointed progress"
        wait_for(lambda: status().get("phase") == "online" and status().get("updates", 0) > 10, 120,
                 "online updates after the fit", (learner, actor))

        stop_in_order(actor, learner)
    finally:
        kill_left(procs)
    sent = read_json(run / "actors" / "paced.json")["env_steps"]
    assert store_seqs(run, "paced") == list(range(sent)), "every transition the actor made is stored exactly once"
    # A learner started alone keeps its log in the run directory too, across restarts, without JAX's backend noise.
    own_log = (run / "learner.log").read_text()
    assert own_log.count("serving on") == 3 and "Unable to initialize backend" not in own_log
    final = read_json(run / "status.json")
    assert final["replay_size"] == final["env_steps"] == sent and final["duplicates_dropped"] == 0


def test_the_actor_takes_random_steps_once_parameters_arrive_never_in_evaluation(tmp_path, bc_checkpoint):
    from q2rl.actor.actor import Actor
    from q2rl.core.checkpoint import load_bc_policy
    from q2rl.interfaces import policy_obs
    from q2rl.robot.envs import make_env

    cfg = run_config(tmp_path, bc_checkpoint, agent={"random_steps": 5})
    bc = load_bc_policy(bc_checkpoint)
    env = make_env(cfg.env)
    actor = Actor(cfg, env, bc, sink=None, source=None, first_seq=2)  # resumed: 2 of its steps were sent before
    obs = policy_obs(env.reset(seed=0)[0], actor.cameras)
    assert actor._decide(obs, evaluate=False, modes=False)[1][4] is False  # phase 1: pi_BC alone, no random steps yet
    actor.params = actor.template  # parameters have arrived
    assert actor._decide(obs, evaluate=True, modes=True)[1][2:] != (0.0, 0.0, True)  # evaluation: the gate, not a draw
    records = [actor._decide(obs, evaluate=False, modes=False)[1] for _ in range(4)]
    env.close()
    random_draws = [r for r in records if r[2:] == (0.0, 0.0, True)]  # recorded as RL without values
    assert len(random_draws) == 3  # 5 - the 2 already sent
    assert len({tuple(np.round(r[0], 6)) for r in random_draws}) == 3  # fresh draws
    assert records[3][2:] != (0.0, 0.0, True) and np.isfinite(records[3][3])  # then the gate again


def test_the_status_line_shows_the_step_within_the_episode_and_its_bc_share(tmp_path, bc_checkpoint):
    """The operator's line and actors/<id>.json count steps within the episode (they used to show the run's total,
    and the line always read `BC - RL -`)."""
    import io
    import os
    import pty

    from q2rl.actor.actor import Actor
    from q2rl.core.checkpoint import load_bc_policy
    from q2rl.local import LocalLink
    from q2rl.progress import read_actor_statuses
    from q2rl.robot.console import OperatorConsole
    from q2rl.robot.envs import make_env

    cfg = run_config(tmp_path, bc_checkpoint, actor={"pace": "control_rate", "eval_every_episodes": 0},
                     env={"sim": {"control_hz": 200.0}})
    link = LocalLink(lambda t: None, lambda r: None)
    out = io.StringIO()
    keys, terminal = pty.openpty()  # the terminal is the seam: keys come from a pty, the line goes to `out`
    env = make_env(cfg.env)
    actor = Actor(cfg, env, load_bc_policy(bc_checkpoint), sink=link, source=link, status_dir=tmp_path,
                  console=OperatorConsole(terminal, out))
    try:
        actor.run(max_episodes=3)  # flushes the status file as it ends
    finally:
        env.close()
        os.close(keys)
        os.close(terminal)
    assert actor.summary.env_steps > 30  # so a total would show past the first episode's steps
    # No learner parameters yet: pi_BC acts on every step.
    assert "ep 0 step 1 | BC 100% RL   0%" in out.getvalue(), out.getvalue()  # the episode under way
    status = read_actor_statuses(tmp_path)[0]
    assert 1 <= status.step <= 30 and status.env_steps == actor.summary.env_steps


def test_a_hold_shows_in_the_actor_status_while_it_lasts(tmp_path, bc_checkpoint):
    """An actor held by the learner's grants says so while it waits (it used to add the wait only once it ended,
    so a stuck actor looked idle-free for minutes)."""
    from q2rl.actor.actor import Actor
    from q2rl.core.checkpoint import load_bc_policy
    from q2rl.interfaces import Grants
    from q2rl.local import LocalLink
    from q2rl.progress import read_actor_statuses
    from q2rl.robot.envs import make_env

    cfg = run_config(tmp_path, bc_checkpoint)
    link = LocalLink(lambda t: None, lambda r: None)
    link.publish_grants(Grants({}, -1))  # nothing granted: the first step holds
    env = make_env(cfg.env)
    actor = Actor(cfg, env, load_bc_policy(bc_checkpoint), sink=link, source=link, status_dir=tmp_path)
    stop = threading.Event()
    thread = threading.Thread(target=actor.run, args=(stop,))
    thread.start()
    try:
        waited = wait_for(lambda: [s.waiting_for_learner_s for s in read_actor_statuses(tmp_path)
                                   if s.waiting_for_learner_s >= 1.5], 30, "a hold in the actor's status")
        assert actor.summary.paced_s == 0.0 and actor.summary.env_steps == 0  # still in its first hold
        assert waited[0] >= 1.5
    finally:
        stop.set()
        thread.join(10)
        env.close()


def test_the_status_line_counts_an_episode_as_soon_as_it_ends(tmp_path, bc_checkpoint):
    """q2rl deploy's last status line showed the success rate before its final episode: the actor refreshed the
    line only at the next episode's steps. An evaluation-only actor (deploy's) through a recording console."""
    from q2rl.actor.actor import Actor
    from q2rl.core.checkpoint import load_bc_policy
    from q2rl.robot.envs import make_env

    class RecordingConsole:  # the terminal seam: what the actor asks the operator's console to show
        interactive = False

        def __init__(self):
            self.lines = []

        def poll(self, timeout_s: float = 0.0):
            return []

        def print(self, text: str) -> None:
            pass

        def set_status(self, line) -> None:
            self.lines.append(line)

    cfg = run_config(tmp_path, bc_checkpoint)
    console, env = RecordingConsole(), make_env(cfg.env)
    actor = Actor(cfg, env, load_bc_policy(bc_checkpoint), sink=None, source=None, console=console)
    try:
        outcomes = []
        for seed in range(4):
            outcomes += [r.success for r in actor.evaluate(1, first_seed=seed)]
            assert console.lines[-1].success_rate == pytest.approx(np.mean(outcomes))
    finally:
        env.close()
