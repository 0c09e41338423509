"""Q-Gating: the rule and its ties, the recorded values against independent computations, the baselines."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from q2rl.config import from_dict
from q2rl.core.agent_config import AgentConfig
from q2rl.core.agents import make_agent
from q2rl.core.gating import gate_rule
from q2rl.core.normalization import ObsNormalizer
from q2rl.core.policies import BCPolicy, PolicyConfig, make_policy_net
from q2rl.core.sac import critic_values, value

STATE_DIM = 5
TINY = {"hidden_dims": [16, 16], "value_hidden_dims": [16], "ensemble_size": 3, "batch_size": 8, "utd": 1}


@functools.lru_cache(maxsize=None)
def setup(algo: str):
    cfg = from_dict(AgentConfig, {**TINY, "algo": algo})
    net = make_policy_net(from_dict(PolicyConfig, {"hidden_dims": [16]}), 7)
    bc = BCPolicy(net, net.init(jax.random.PRNGKey(0), {"state": jnp.zeros((1, STATE_DIM))}),
                  ObsNormalizer.identity(STATE_DIM))
    agent = make_agent(cfg)
    obs = {"state": np.linspace(-1, 1, STATE_DIM).astype(np.float32)}
    params = agent.init_params(jax.random.PRNGKey(1), obs, bc)
    return agent, params, obs, bc


def test_rule_ties_go_to_rl():
    q_bc = jnp.array([1.0, 1.0, 1.0])
    q_rl = jnp.array([1.0, 0.999, 1.001])
    np.testing.assert_array_equal(gate_rule(q_bc, q_rl), [True, False, True])


def test_q2rl_gate_values_and_choice():
    agent, params, obs, bc = setup("q2rl")
    key = jax.random.PRNGKey(7)
    action, info = agent.gate(params, obs, key)
    batched = {"state": obs["state"][None]}
    # q_rl = min over all heads of Q_RL at a_rl; q_bc = V + alpha (log pi_BC(a_bc) + H)
    q_heads = np.asarray(critic_values(agent.nets, params, batched, info.a_rl[None]))[:, 0]
    np.testing.assert_allclose(info.q_rl, q_heads.min(), rtol=1e-5, atol=1e-6)
    dist, _ = bc.distribution(batched)
    expected_q_bc = float(value(agent.nets, params, batched)[0]) + float(
        dist.log_prob(info.a_bc[None])[0] + dist.entropy()[0])
    np.testing.assert_allclose(info.q_bc, expected_q_bc, rtol=1e-4, atol=1e-4)
    chosen = info.a_rl if info.q_rl >= info.q_bc else info.a_bc
    np.testing.assert_array_equal(action, chosen)
    assert bool(info.use_rl) == bool(info.q_rl >= info.q_bc)
    # shift V so that q_bc sits just above / below q_rl: the same key gives the same candidate actions
    gap = float(info.q_rl - info.q_bc)
    for shift, expect_rl in ((gap + 0.05, False), (gap - 0.05, True)):
        shifted = params.replace(value_stats=params.value_stats.at[0].add(shift))
        a2, info2 = agent.gate(shifted, obs, key)
        np.testing.assert_array_equal(info2.a_bc, info.a_bc)
        assert bool(info2.use_rl) == expect_rl
        np.testing.assert_array_equal(a2, info.a_rl if expect_rl else info.a_bc)


def test_prior_weighted_gate_scores_both_actions_with_the_critic_and_the_prior():
    """q2rl_gate prior_weighted: score(a) = min-head Q_RL(s, a) + alpha max(log pi_BC(a|s), floor); V_phi has no say."""
    agent, params, obs, bc = setup("q2rl")
    weighted = make_agent(dataclasses.replace(agent.cfg, q2rl_gate="prior_weighted"))
    key = jax.random.PRNGKey(7)
    action, info = weighted.gate(params, obs, key)
    _, plain = agent.gate(params, obs, key)
    np.testing.assert_array_equal(info.a_bc, plain.a_bc)  # same candidates, scored differently
    np.testing.assert_array_equal(info.a_rl, plain.a_rl)
    batched = {"state": obs["state"][None]}
    dist, _ = bc.distribution(batched)
    alpha, floor = agent.cfg.q_estimation.alpha, agent.cfg.q_estimation.log_prob_floor

    def score(a):
        q = np.asarray(critic_values(agent.nets, params, batched, a[None])).min()
        return q + alpha * max(float(dist.log_prob(a[None])[0]), floor)

    np.testing.assert_allclose([info.q_bc, info.q_rl], [score(info.a_bc), score(info.a_rl)], rtol=1e-5, atol=1e-5)
    assert bool(info.use_rl) == (score(info.a_rl) >= score(info.a_bc))
    np.testing.assert_array_equal(action, info.a_rl if info.use_rl else info.a_bc)
    # V_phi cancels: shifting it by any amount changes neither the scores nor the choice
    shifted = params.replace(value_stats=params.value_stats.at[0].add(1e3))
    _, info2 = weighted.gate(shifted, obs, key)
    np.testing.assert_allclose([info2.q_bc, info2.q_rl], [info.q_bc, info.q_rl], rtol=1e-6)
    # and the prior decides where the critic is indifferent: a flat critic runs the likelier action under pi_BC
    flat = params.replace(critic=jax.tree_util.tree_map(jnp.zeros_like, params.critic))
    _, info3 = weighted.gate(flat, obs, key)
    lp = lambda a: max(float(dist.log_prob(a[None])[0]), floor)
    assert bool(info3.use_rl) == (lp(info.a_rl) >= lp(info.a_bc))


def test_eval_gate_uses_modes():
    agent, params, obs, bc = setup("q2rl")
    _, info1 = agent.eval_gate(params, obs, jax.random.PRNGKey(1))
    _, info2 = agent.eval_gate(params, obs, jax.random.PRNGKey(2))
    np.testing.assert_array_equal(info1.a_bc, info2.a_bc)
    np.testing.assert_array_equal(info1.a_rl, info2.a_rl)
    dist, _ = bc.distribution({"state": obs["state"][None]})
    np.testing.assert_allclose(info1.a_bc, np.clip(dist.mode()[0], -1, 1))


def test_bc_action_mode_proposes_the_bc_mode_in_training():
    agent, params, obs, bc = setup("q2rl")
    mode_agent = make_agent(dataclasses.replace(agent.cfg, bc_action="mode"))
    dist, _ = bc.distribution({"state": obs["state"][None]})
    infos = [mode_agent.gate(params, obs, jax.random.PRNGKey(k))[1] for k in (1, 2)]
    for info in infos:
        np.testing.assert_allclose(info.a_bc, np.clip(dist.mode()[0], -1, 1), rtol=1e-6)
    # the default samples: two keys give two different BC proposals
    sampled = [agent.gate(params, obs, jax.random.PRNGKey(k))[1].a_bc for k in (1, 2)]
    assert not np.allclose(sampled[0], sampled[1])


def test_baselines_choose_by_their_rules():
    for algo, expect in (("sac_bc", True), ("rlpd", True), ("q2rl_no_gate", True), ("bc", False)):
        agent, params, obs, _ = setup(algo)
        for seed in range(3):
            action, info = agent.gate(params, obs, jax.random.PRNGKey(seed))
            assert bool(info.use_rl) is expect, algo
            np.testing.assert_array_equal(action, info.a_rl if expect else info.a_bc)
    agent, params, obs, _ = setup("ibrl")
    action, info = agent.gate(params, obs, jax.random.PRNGKey(0))
    batched = {"state": obs["state"][None]}
    q = lambda a: np.asarray(critic_values(agent.nets, params, batched, a[None], target=True)).min()
    np.testing.assert_allclose([info.q_bc, info.q_rl], [q(info.a_bc), q(info.a_rl)], rtol=1e-5, atol=1e-6)
    assert bool(info.use_rl) == (q(info.a_rl) >= q(info.a_bc))


def test_ibrl_soft_follows_the_softmax_probability():
    agent, params, obs, _ = setup("ibrl_soft")
    picks, p_expected = [], None
    for seed in range(300):
        _, info = agent.gate(params, obs, jax.random.PRNGKey(seed))
        picks.append(bool(info.use_rl))
    # The candidate actions differ per key, so compare the mean pick rate with the mean softmax probability.
    probs = []
    for seed in range(300):
        _, info = agent.gate(params, obs, jax.random.PRNGKey(seed))
        probs.append(float(jax.nn.sigmoid(agent.cfg.ibrl_beta * (info.q_rl - info.q_bc))))
    p_expected = np.mean(probs)
    assert abs(np.mean(picks) - p_expected) < 4 * np.sqrt(0.25 / 300) + 1e-9
