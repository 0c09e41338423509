"""The session's Actor and Learner run in one process (q2rl.local.LocalRun, what the benchmarks use), end to end
on the real simulator with tiny networks and budgets."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from q2rl.config import from_dict
from q2rl.core.normalization import ObsNormalizer
from q2rl.core.parameters import apply_parameter_set, publishable
from q2rl.core.policies import BCPolicy, PolicyConfig, make_policy_net
from q2rl.core.replay import SOURCE_CODES
from q2rl.local import LocalRun, LocalSchedule

TINY = {"hidden_dims": [16, 16], "value_hidden_dims": [16], "ensemble_size": 2, "batch_size": 8, "utd": 2,
        "q_estimation": {"rollout_episodes": 2, "value_updates": 20, "critic_updates": 20, "actor_updates": 20,
                         "batch_size": 16}}
EPISODE = 15  # steps of a truncated episode (an untrained BC never lifts the cube)


def run_config(algo: str, seed: int = 3, eval_deterministic: bool = True, **agent):
    from q2rl.run_config import RunConfig

    return from_dict(RunConfig, {
        "env": {"sim": {"task": "pick_cube", "max_episode_steps": EPISODE}},
        "agent": {**TINY, **agent, "algo": algo},
        "learner": {"seed": seed, "eval_window": 1, "learning_starts": 10, "ahead_steps": 1},
        "actor": {"seed": seed, "pace": "learner", "eval_every_episodes": 0, "eval_deterministic": eval_deterministic},
        "session": {"env_steps": 10**9}})


@pytest.fixture(scope="module")
def bc():
    os.environ.setdefault("MUJOCO_GL", "egl")
    from q2rl.robot.sim import make_sim_env
    from q2rl.robot.sim.config import SimEnvConfig

    state_dim = make_sim_env(SimEnvConfig(task="pick_cube")).reset(seed=0)[0]["state"].shape[0]
    net = make_policy_net(from_dict(PolicyConfig, {"hidden_dims": [16]}), 7)
    return BCPolicy(net, net.init(jax.random.PRNGKey(0), {"state": jnp.zeros((1, state_dim))}),
                    ObsNormalizer.identity(state_dim))


@pytest.mark.slow
def test_q2rl_phase1_then_online(bc, tmp_path):
    run = LocalRun(run_config("q2rl"), bc, tmp_path, log=lambda s: None)
    result = run.run(LocalSchedule(online_steps=40, eval_every=20))
    rollout = 2 * EPISODE
    # pi_BC first, after Q-Estimation, then at the first episode boundary past every 20 online steps, and at the end
    assert [p.env_steps for p in result.curve] == [0, rollout, rollout + 2 * EPISODE, rollout + 3 * EPISODE]
    assert result.q_estimation.num_episodes == 2 and result.q_estimation.num_steps == rollout
    # one update call per online env step, from the first (phase 1 filled the replay past learning_starts)
    assert result.curve[-1].updates == run.learner.book.updates == 3 * EPISODE
    assert [p.train_episodes_total for p in result.curve] == [0, 2, 4, 5]
    assert result.curve[-1].train_successes_total == 0
    assert result.curve[0].bc_share is None and result.curve[0].eval_bc_share == 1.0  # pi_BC alone
    for point in result.curve[2:]:
        assert 0.0 <= point.bc_share <= 1.0 and point.train_success == 0.0 and 0.0 <= point.eval_bc_share <= 1.0
        assert point.other_protocol_success is None  # not paired
    replay = run.learner.replay
    # phase-1 episodes are ordinary BC transitions in the replay
    first = replay.export_episode(*run.learner.book.rollout_keys[0])
    assert len(first) == EPISODE and np.all(first.source == SOURCE_CODES["bc"]) and not first.success
    np.testing.assert_array_equal(first.actions, first.a_bc)
    # V_phi was fitted on the MC returns: all failures -> r'_neg / (1 - gamma) = -100
    assert float(result.params.value_stats[0]) == pytest.approx(-100.0, abs=1e-3)
    # online steps record the gate's choice and the parameter version it used (published after every update)
    online = replay.export_episode(*replay.completed_episodes[-1])
    assert set(online.source) <= {SOURCE_CODES["bc"], SOURCE_CODES["rl"]}
    # the actor acts on the learner's latest parameters, as the named subsets the wire carries
    obs = {"state": first.obs["state"][0]}
    restored = apply_parameter_set(run.actor.template, publishable(result.params))
    a1, _ = run.learner.agent.eval_gate(result.params, obs, jax.random.PRNGKey(0))
    a2, _ = run.learner.agent.eval_gate(restored, obs, jax.random.PRNGKey(0))
    np.testing.assert_allclose(a1, a2)
    assert run.actor.version == run.learner.book.param_version


def test_bc_baseline_runs_without_updates(bc, tmp_path):
    lines = []
    run = LocalRun(run_config("bc"), bc, tmp_path, log=lines.append)
    result = run.run(LocalSchedule(online_steps=20, eval_every=10, paired_eval=True))
    assert [p.updates for p in result.curve] == [0, 0, 0]
    assert all(p.bc_share in (None, 1.0) for p in result.curve)
    # paired evaluation: each point is also evaluated with the other protocol (here sampled), all BC actions
    assert all(p.eval_bc_share == 1.0 and p.other_protocol_bc_share == 1.0 for p in result.curve)
    assert all(p.other_protocol_success in (0.0, 1.0) for p in result.curve)
    assert len(lines) == 3 and all("other_protocol_success=" in line for line in lines)


@pytest.mark.parametrize("bc_action", ["sample", "mode"])
def test_phase1_rollouts_act_as_bc_action_says(bc, tmp_path, bc_action):
    """agent.bc_action: mode makes pi_BC act with its mode in the Q-Estimation rollouts too (the returns are then
    those of the pi_BC the gate proposes); sample (the default) samples it."""
    run = LocalRun(run_config("q2rl", bc_action=bc_action), bc, tmp_path, log=lambda s: None)
    run.run(LocalSchedule(online_steps=1, eval_every=0))
    for key in run.learner.book.rollout_keys:
        episode = run.learner.replay.export_episode(*key)
        frames = jax.tree_util.tree_map(lambda x: x[:len(episode)], episode.obs)
        modes = np.clip(np.asarray(bc.at(frames).mode()), -1.0, 1.0)
        assert np.allclose(episode.actions, modes, atol=1e-5) == (bc_action == "mode")


def test_random_steps_take_uniform_actions_then_the_gate(bc, tmp_path):
    # sac_bc has no phase 1: it is online from the first step, learning from learning_starts transitions on
    run = LocalRun(run_config("sac_bc", seed=1, random_steps=30), bc, tmp_path, log=lambda s: None)
    run.run(LocalSchedule(online_steps=60, eval_every=0))
    assert run.learner.book.online_start_steps == 10 and run.learner.book.updates == 60 - 10
    replay = run.learner.replay
    episodes = [replay.export_episode(*k) for k in replay.completed_episodes[:4]]
    actions = np.concatenate([e.actions for e in episodes])
    random_part = actions[:30]
    # uniform on [-1, 1]^7: mean |a| = 0.5, spread over the whole box; recorded as RL steps without values
    assert np.mean(np.abs(random_part)) == pytest.approx(0.5, abs=0.1)
    assert random_part.min() < -0.8 and random_part.max() > 0.8
    assert np.all(np.concatenate([e.source for e in episodes])[:30] == SOURCE_CODES["rl"])
    assert np.all(np.concatenate([e.q_rl for e in episodes])[:30] == 0.0)
    # afterwards the gate runs pi_RL: its (untrained) samples are not the uniform draws, and q_rl is scored
    assert np.any(np.concatenate([e.q_rl for e in episodes])[30:] != 0.0)


@pytest.mark.parametrize("accounting, minibatch", [("minibatch", 8), ("update", 4)])
def test_each_update_call_reads_utd_minibatches_of_the_accounted_size(bc, tmp_path, accounting, minibatch):
    run = LocalRun(run_config("sac_bc", batch_accounting=accounting), bc, tmp_path, log=lambda s: None)
    shapes = []
    update = run.learner.update

    def watched(state, batches, key):
        shapes.append(batches.actions.shape)
        return update(state, batches, key)

    run.learner.update = watched
    run.run(LocalSchedule(online_steps=12, eval_every=0))
    assert shapes and set(shapes) == {(2, minibatch, 7)}  # utd 2, batch_size 8


@pytest.fixture(scope="module")
def demos_file(bc, tmp_path_factory):
    """Two short successful demos of pick_cube's state size (what a demo buffer reads)."""
    from q2rl.demos.hdf5 import Demo, write_demos

    dim = int(np.asarray(bc.normalizer.state_mean).shape[-1])
    rng = np.random.default_rng(0)
    episodes = [Demo(states=rng.normal(size=(10, dim)).astype(np.float32),
                     actions=rng.uniform(-1, 1, (10, 7)).astype(np.float32),
                     rewards=np.r_[np.zeros(9), 1.0].astype(np.float32), dones=np.r_[np.zeros(9), 1.0].astype(bool),
                     next_states=rng.normal(size=(10, dim)).astype(np.float32), success=True) for _ in range(2)]
    return str(write_demos(tmp_path_factory.mktemp("demos") / "demos.hdf5", episodes, {"task": "pick_cube"}))


def with_demos(cfg, demos: str):
    import dataclasses

    return dataclasses.replace(cfg, bc=dataclasses.replace(cfg.bc, demos=demos))


def test_simplified_q_pretrains_on_the_demos_alone_then_goes_online(bc, demos_file, tmp_path):
    run = LocalRun(with_demos(run_config("simplified_q", offline_updates=6), demos_file), bc, tmp_path,
                   log=lambda s: None)
    batches = []
    update = run.learner.update
    run.learner.update = lambda state, b, key: (batches.append((run.learner.book.phase, b)), update(state, b, key))[1]
    phases = []
    on_phase = run.learner.on_phase_change
    run.learner.on_phase_change = lambda phase: (phases.append(phase), on_phase(phase))
    run.run(LocalSchedule(online_steps=30, eval_every=0))
    assert phases == ["offline", "online"]
    offline = [b for phase, b in batches if phase == "offline"]
    assert len(offline) == 6 and all(np.all(np.asarray(b.is_demo)) for b in offline)  # the demos alone
    online = [b for phase, b in batches if phase == "online"]
    # online: one update call per env step from learning_starts (10) on, half of each minibatch from the demos
    book = run.learner.book
    assert book.online_start_updates == 6 and len(online) == book.updates - 6 == book.env_steps - 10
    assert all(np.asarray(b.is_demo).mean() == 0.5 for b in online)
    # the actor acted with the pre-trained pi_RL from its first step (published when the online phase began)
    first = run.learner.replay.export_episode(*run.learner.replay.completed_episodes[0])
    assert np.all(first.param_version >= 1) and np.all(first.source == SOURCE_CODES["rl"])


def test_batch_online_iterations_hold_the_parameters_while_collecting(bc, demos_file, tmp_path):
    run = LocalRun(with_demos(run_config("batch_online", batch_online={"iteration_episodes": 2,
                                                                       "iteration_updates": 4}), demos_file),
                   bc, tmp_path, log=lambda s: None)
    run.run(LocalSchedule(online_steps=6 * EPISODE, eval_every=0))
    book, replay = run.learner.book, run.learner.replay
    assert book.iterations == 3 and book.updates == 3 * 4  # 6 episodes: 3 iterations of 2, 4 update calls each
    versions = [set(replay.export_episode(*k).param_version) for k in replay.completed_episodes]
    # every episode ran on one parameter set, the same for both episodes of an iteration, a newer one after
    assert all(len(v) == 1 for v in versions)
    versions = [v.pop() for v in versions]
    assert versions[0] == versions[1] < versions[2] == versions[3] < versions[4] == versions[5]
    # the actor acts with the retrained pi_BC the learner published, and adds the OU noise to what it runs
    run.actor.refresh()  # the last iteration's set, published after the actor's last step
    assert run.actor.version == book.param_version
    assert leaves_equal(run.actor.params.bc.params, run.learner.state.params.bc.params)
    assert not leaves_equal(run.actor.params.bc.params, bc.params)
    episode = replay.export_episode(*replay.completed_episodes[-1])
    assert not np.allclose(episode.actions, episode.a_rl)  # executed = the chosen candidate + OU noise
    np.testing.assert_allclose(episode.actions, np.clip(episode.actions, -1, 1))


def leaves_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
