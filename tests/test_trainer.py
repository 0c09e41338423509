"""In-process trainer end to end on the real simulator, with tiny networks and budgets."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from q2rl.config import from_dict
from q2rl.core.agent_config import AgentConfig
from q2rl.core.agents import make_agent, publishable, with_subsets
from q2rl.core.normalization import ObsNormalizer
from q2rl.core.policies import BCPolicy, PolicyConfig, make_policy_net
from q2rl.core.replay import SOURCE_CODES
from q2rl.core.trainer import Trainer, TrainerConfig

TINY = {"hidden_dims": [16, 16], "value_hidden_dims": [16], "ensemble_size": 2, "batch_size": 8, "utd": 2,
        "q_estimation": {"rollout_episodes": 2, "value_updates": 20, "critic_updates": 20, "actor_updates": 20,
                         "batch_size": 16}}


@pytest.fixture(scope="module")
def sim():
    os.environ.setdefault("MUJOCO_GL", "egl")
    from q2rl.robot.sim import make_sim_env
    from q2rl.robot.sim.config import SimEnvConfig

    make_env = lambda: make_sim_env(SimEnvConfig(task="pick_cube", max_episode_steps=15))
    state_dim = make_env().reset(seed=0)[0]["state"].shape[0]
    net = make_policy_net(from_dict(PolicyConfig, {"hidden_dims": [16]}), 7)
    bc = BCPolicy(net, net.init(jax.random.PRNGKey(0), {"state": jnp.zeros((1, state_dim))}),
                  ObsNormalizer.identity(state_dim))
    return make_env, bc


@pytest.mark.slow
def test_q2rl_phase1_then_online(sim):
    make_env, bc = sim
    agent = make_agent(from_dict(AgentConfig, {**TINY, "algo": "q2rl"}))
    cfg = TrainerConfig(online_steps=40, eval_every=20, eval_episodes=1, learning_starts=10, seed=3)
    trainer = Trainer(agent, make_env, bc, cfg, log=lambda s: None)
    result = trainer.run()
    rollout_steps = 2 * 15  # two truncated phase-1 episodes (an untrained BC never lifts the cube)
    assert trainer.env_steps == rollout_steps + 40
    assert [p.env_steps for p in result.curve] == [0, rollout_steps, rollout_steps + 20, rollout_steps + 40]
    assert result.q_estimation.num_episodes == 2 and result.q_estimation.num_steps == rollout_steps
    assert result.curve[-1].updates == 40  # learning started at once: phase 1 filled the replay
    # training episodes finished so far, phase 1's included: 2 rollouts, then one more every 15 online steps
    assert [p.train_episodes_total for p in result.curve] == [0, 2, 2 + 20 // 15, 2 + 40 // 15]
    finished = range(result.curve[-1].train_episodes_total)
    successes = sum(trainer.replay.export_episode("local", i).success for i in finished)
    assert result.curve[-1].train_successes_total == successes
    for point in result.curve:
        assert 0.0 <= point.bc_share <= 1.0 and 0.0 <= point.success_rate <= 1.0
        assert 0.0 <= point.eval_bc_share <= 1.0
        assert np.isnan(point.other_protocol_success) and np.isnan(point.other_protocol_bc_share)  # not paired
    # phase-1 episodes are ordinary BC transitions in the replay, exportable for the episode store
    first = trainer.replay.export_episode("local", 0)
    assert len(first) == 15 and np.all(first.source == SOURCE_CODES["bc"]) and not first.success
    np.testing.assert_array_equal(first.actions, first.a_bc)
    # V_phi was fitted on the MC returns: all failures -> r'_neg / (1 - gamma) = -100
    assert float(result.params.value_stats[0]) == pytest.approx(-100.0, abs=1e-3)
    # online steps record the gate's choice
    online = trainer.replay.export_episode("local", 3)
    assert set(online.source) <= {SOURCE_CODES["bc"], SOURCE_CODES["rl"]}
    # named subsets round-trip onto fresh params (what the actor does with published parameters)
    fresh = agent.init_params(jax.random.PRNGKey(5), {"state": first.obs["state"][0]}, bc)
    restored = with_subsets(fresh, publishable(result.params))
    a1, _ = agent.eval_gate(result.params, {"state": first.obs["state"][0]}, jax.random.PRNGKey(0))
    a2, _ = agent.eval_gate(restored, {"state": first.obs["state"][0]}, jax.random.PRNGKey(0))
    np.testing.assert_allclose(a1, a2)


def test_bc_baseline_runs_without_updates(sim):
    make_env, bc = sim
    agent = make_agent(from_dict(AgentConfig, {**TINY, "algo": "bc"}))
    lines = []
    cfg = TrainerConfig(online_steps=20, eval_every=10, eval_episodes=1, eval_deterministic=True, paired_eval=True)
    result = Trainer(agent, make_env, bc, cfg, log=lines.append).run()
    assert [p.updates for p in result.curve] == [0, 0, 0]
    assert all(p.bc_share == 1.0 for p in result.curve)
    # paired evaluation: each point is also evaluated with the other protocol (here sampled), all BC actions
    assert all(p.eval_bc_share == 1.0 and p.other_protocol_bc_share == 1.0 for p in result.curve)
    assert all(p.other_protocol_success in (0.0, 1.0) for p in result.curve)
    assert all("other_protocol_success=" in line for line in lines if "env_steps=" in line)


def test_random_steps_take_uniform_actions_then_the_gate(sim):
    make_env, bc = sim
    agent = make_agent(from_dict(AgentConfig, {**TINY, "algo": "rlpd", "random_steps": 30}))
    cfg = TrainerConfig(online_steps=60, eval_every=60, eval_episodes=0, learning_starts=1000, seed=1)
    trainer = Trainer(agent, make_env, None, cfg, log=lambda s: None)
    trainer.run()
    episodes = [trainer.replay.export_episode("local", i) for i in range(4)]  # 15-step episodes
    actions = np.concatenate([e.actions for e in episodes])
    random_part = actions[:30]
    # uniform on [-1, 1]^7: mean |a| = 0.5, spread over the whole box; recorded as RL steps without values
    assert np.mean(np.abs(random_part)) == pytest.approx(0.5, abs=0.1)
    assert random_part.min() < -0.8 and random_part.max() > 0.8
    assert np.all(np.concatenate([e.source for e in episodes])[:30] == SOURCE_CODES["rl"])
    assert np.all(np.concatenate([e.q_rl for e in episodes])[:30] == 0.0)
    # afterwards the gate runs pi_RL: its (untrained) samples are not the uniform draws, and q_rl is scored
    assert np.any(np.concatenate([e.q_rl for e in episodes])[30:] != 0.0)
