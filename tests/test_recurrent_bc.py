"""The recurrent pi_BC (gmm_rnn, the Q2RL paper's real-robot class): its log-prob against a computation by hand,
its training on windows, and the learner scoring it with the memory the actor had (docs/design.md#recurrent-bc)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from q2rl.bc.train import BCBatch, episode_ends, log_likelihoods, rollout_window_starts, take_windows
from q2rl.config import ConfigError, from_dict
from q2rl.core.normalization import ObsNormalizer
from q2rl.core.policies import BC_CARRY, BCPolicy, PolicyConfig, make_policy_net
from q2rl.core.replay import Episode, ReplayBuffer
from q2rl.local import LocalRun, LocalSchedule

STATE, ACTIONS, HIDDEN, MODES, HORIZON = 5, 3, 4, 2, 3
RNN = {"kind": "gmm_rnn", "hidden_dims": [8], "rnn_hidden_dim": HIDDEN, "num_modes": MODES, "rnn_horizon": HORIZON,
       "dropout_rate": 0.0}


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _by_hand_log_probs(params, states, actions, log_std_min=-2.0, log_std_max=1.0):
    """log pi(a_t | s_0..s_t) step by step in numpy: LSTM memory zeroed at t = 0, HORIZON, ...; relu MLP; mixture."""
    p = jax.tree_util.tree_map(np.asarray, params["params"])
    lstm, h, c, out = p["lstm"], np.zeros(HIDDEN), np.zeros(HIDDEN), []
    for t, (s, a) in enumerate(zip(states, actions)):
        if t % HORIZON == 0:
            h, c = np.zeros(HIDDEN), np.zeros(HIDDEN)
        gate = lambda g, act: act(s @ lstm[f"i{g}"]["kernel"] + h @ lstm[f"h{g}"]["kernel"] + lstm[f"h{g}"]["bias"])
        i, f, g, o = gate("i", _sigmoid), gate("f", _sigmoid), gate("g", np.tanh), gate("o", _sigmoid)
        c = f * c + i * g
        h = o * np.tanh(c)
        z = np.maximum(h @ p["trunk"]["Dense_0"]["kernel"] + p["trunk"]["Dense_0"]["bias"], 0.0)
        logits = z @ p["logits"]["kernel"] + p["logits"]["bias"]
        means = np.tanh(z @ p["means"]["kernel"] + p["means"]["bias"] - 1.0).reshape(MODES, ACTIONS)
        raw = (z @ p["log_stds"]["kernel"] + p["log_stds"]["bias"]).reshape(MODES, ACTIONS)
        log_stds = log_std_min + 0.5 * (log_std_max - log_std_min) * (np.tanh(raw) + 1.0)
        log_w = logits - np.log(np.sum(np.exp(logits)))
        per_mode = [-0.5 * np.sum(((a - means[k]) / np.exp(log_stds[k])) ** 2 + 2 * log_stds[k] + np.log(2 * np.pi))
                    for k in range(MODES)]
        out.append(np.log(np.sum(np.exp(log_w + np.array(per_mode)))))
    return np.array(out)


@pytest.fixture(scope="module")
def rnn_policy():
    net = make_policy_net(from_dict(PolicyConfig, RNN), ACTIONS)
    params = net.init(jax.random.PRNGKey(1), {"state": jnp.zeros((1, STATE))}, net.initial_carry(1))
    return BCPolicy(net, params, ObsNormalizer.identity(STATE))


def test_log_prob_equals_a_step_by_step_computation(rnn_policy):
    rng = np.random.default_rng(0)
    states = rng.normal(size=(8, STATE)).astype(np.float32)  # 8 steps: the memory restarts at 3 and 6
    actions = rng.uniform(-1, 1, size=(8, ACTIONS)).astype(np.float32)
    expected = _by_hand_log_probs(rnn_policy.params, states, actions)
    # the acting path: one observation at a time, the carry passed on, the score from the distribution that samples
    carry, acting = rnn_policy.initial_carry(), []
    for s, a in zip(states, actions):
        dist, carry = rnn_policy.distribution({"state": s}, carry)
        acting.append(float(dist.log_prob(a)))
    np.testing.assert_allclose(acting, expected, rtol=1e-5, atol=1e-5)
    # the training path: one window of 8 steps scanned from a zero memory (the counter restarts it inside)
    window = BCBatch({"state": states[None]}, actions[None], np.ones((1, 8), bool))
    scanned = log_likelihoods(rnn_policy.module, rnn_policy.params, rnn_policy.normalizer, window)[0]
    np.testing.assert_allclose(scanned, expected, rtol=1e-5, atol=1e-5)
    # the memory matters: the same state scored with a fresh memory gives another value at step 1
    fresh = float(rnn_policy.distribution({"state": states[1]}, rnn_policy.initial_carry())[0].log_prob(actions[1]))
    assert abs(fresh - expected[1]) > 1e-4
    with pytest.raises(ValueError, match="needs its carry"):
        rnn_policy.distribution({"state": states[0]})


def test_windows_stay_inside_their_episode():
    ends = episode_ends([Episode_like(4), Episode_like(7)])  # flat steps 0-3 and 4-10
    np.testing.assert_array_equal(ends, [4] * 4 + [11] * 7)
    data = BCBatch({"state": np.arange(11, dtype=np.float32)[:, None]}, np.zeros((11, 1), np.float32))
    batch = take_windows(data, ends, np.array([2, 9]), 3)
    np.testing.assert_array_equal(batch.mask, [[True, True, False], [True, True, False]])
    np.testing.assert_array_equal(batch.obs["state"][..., 0], [[2, 3, 2], [9, 10, 9]])  # padded with the start
    # what a rollout's memory sees: each episode cut at 0, 3, 6, ...
    np.testing.assert_array_equal(rollout_window_starts(ends, 3), [0, 3, 4, 7, 10])


class Episode_like:
    def __init__(self, length):
        self.actions = np.zeros((length, 1))


def _episode(states, actions):
    n = len(actions)
    return Episode(obs={"state": states}, actions=actions, rewards=np.zeros(n, np.float32),
                   terminated=np.eye(n, dtype=bool)[-1], truncated=np.zeros(n, bool), a_bc=actions, a_rl=actions,
                   q_bc=np.zeros(n, np.float32), q_rl=np.zeros(n, np.float32), source=np.zeros(n, np.int8),
                   param_version=np.zeros(n, np.int64), actor_id="a", episode_id=0)


def test_replay_stores_the_memory_with_every_frame(rnn_policy):
    from q2rl.core.agents import make_agent
    from q2rl.core.agent_config import AgentConfig

    agent = make_agent(AgentConfig(), ACTIONS)
    rng = np.random.default_rng(2)
    states = rng.normal(size=(8, STATE)).astype(np.float32)
    actions = rng.uniform(-1, 1, size=(7, ACTIONS)).astype(np.float32)
    expected = _by_hand_log_probs(rnn_policy.params, states[:7], actions)
    replay = ReplayBuffer(64, action_dim=ACTIONS, frame_carry=agent.frame_carry(rnn_policy))
    replay.add_episode(_episode(states, actions))
    stored = replay.export_episode("a", 0)
    scored = [float(rnn_policy.at(jax.tree_util.tree_map(lambda x: x[t], stored.obs)).log_prob(actions[t]))
              for t in range(7)]
    np.testing.assert_allclose(scored, expected, rtol=1e-5, atol=1e-5)
    assert stored.obs[BC_CARRY]["t"].tolist() == list(range(8))
    # a minibatch carries each frame's memory to pi_BC: next_obs of step t is frame t + 1
    batch = replay.gather(np.arange(7), n_step=1)
    np.testing.assert_array_equal(batch.next_obs[BC_CARRY]["h"], stored.obs[BC_CARRY]["h"][1:])


def test_batch_online_refuses_a_recurrent_pi_bc(rnn_policy):
    from q2rl.core.agents import make_agent
    from q2rl.core.agent_config import AgentConfig

    agent = make_agent(from_dict(AgentConfig, {"algo": "batch_online"}), ACTIONS)
    with pytest.raises(ConfigError, match="recurrent"):
        agent.init_params(jax.random.PRNGKey(0), {"state": np.zeros(STATE, np.float32)}, bc=rnn_policy)


@pytest.mark.slow
def test_learner_scores_pi_bc_with_the_memory_the_actor_had(tmp_path):
    """A session in one process (the session's Actor and Learner): at every training step, log pi_BC(a_bc|s) the
    learner computes from its replay equals the one the actor's pi_BC had when it chose, in phase 1 and online."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    from tests.test_local import EPISODE, run_config
    from q2rl.robot.sim import make_sim_env
    from q2rl.robot.sim.config import SimEnvConfig

    state_dim = make_sim_env(SimEnvConfig(task="pick_cube")).reset(seed=0)[0]["state"].shape[0]
    net = make_policy_net(from_dict(PolicyConfig, {**RNN, "hidden_dims": [16], "rnn_horizon": 4}), 7)
    bc = BCPolicy(net, net.init(jax.random.PRNGKey(0), {"state": jnp.zeros((1, state_dim))}, net.initial_carry(1)),
                  ObsNormalizer.identity(state_dim))
    run = LocalRun(run_config("q2rl"), bc, tmp_path, log=lambda s: None)
    seen = []
    decide = run.actor._decide

    def spy(obs, evaluate, modes):
        action, record = decide(obs, evaluate, modes)
        if not evaluate:
            seen.append((run.actor._running_episode, run.actor._step, obs, record[0]))
        return action, record

    run.actor._decide = spy
    run.run(LocalSchedule(online_steps=2 * EPISODE, eval_every=0))
    replay = run.learner.replay
    episodes = {e for e, *_ in seen}
    assert len(episodes) >= 4 and len(seen) >= 4 * EPISODE  # 2 rollouts (pi_BC alone), 2+ online (gated)
    for episode_id, step, obs, a_bc in seen:
        stored = replay.export_episode(run.actor.actor_id, episode_id)
        frame = jax.tree_util.tree_map(lambda x: x[step], stored.obs)
        actor = float(bc.at(obs).log_prob(a_bc))
        learner = float(bc.at(frame).log_prob(stored.a_bc[step]))
        assert learner == pytest.approx(actor, rel=1e-5, abs=1e-5), (episode_id, step)
        assert int(frame[BC_CARRY]["t"]) == step


@pytest.mark.parametrize("read", [True, False])
def test_agent_networks_read_the_memory_when_asked(rnn_policy, read):
    """With read_bc_memory, pi_RL, the critic and V_phi see pi_BC's memory (h, c) with the state: the same state
    with two memories gets two values; without it, one."""
    from q2rl.core.agents import make_agent
    from q2rl.core.agent_config import AgentConfig
    from q2rl.core.sac import actor_dist, critic_values, value

    agent = make_agent(from_dict(AgentConfig, {"read_bc_memory": read, "hidden_dims": [8]}), ACTIONS)
    state = np.random.default_rng(3).normal(size=STATE).astype(np.float32)
    params = agent.init_params(jax.random.PRNGKey(0), {"state": state}, bc=rnn_policy)
    fresh = rnn_policy.initial_carry()
    later = rnn_policy.next_carry({"state": state, BC_CARRY: fresh})
    one = lambda memory: {"state": state[None], BC_CARRY: jax.tree_util.tree_map(lambda x: x[None], memory)}
    action = jnp.zeros((1, ACTIONS))
    outputs = [(critic_values(agent.nets, params, one(m), action), value(agent.nets, params, one(m)),
                actor_dist(agent.nets, params, one(m)).mean) for m in (fresh, later)]
    for a, b in zip(*outputs):
        assert np.allclose(a, b) != read
