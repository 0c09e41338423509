"""The other two methods of the reference papers, each a config of the one actor and learner (issue #34):
batch online RL (IQL's expectile, best-of-N extraction, OU noise, pi_BC retrained by imitation, iterations) and
Simplified Q (no target network, the NTK regulariser, the weighted CQL term, offline pre-training), against numbers
worked out here."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from q2rl.config import ConfigError, from_dict
from q2rl.core import sac
from q2rl.core.agent_config import AgentConfig
from q2rl.core.agents import make_agent
from q2rl.core.distributions import GaussianMixture
from q2rl.core.gating import best_of_n, sample_candidates
from q2rl.core.noise import ou_stationary_std, ou_step
from q2rl.core.normalization import ObsNormalizer
from q2rl.core.parameters import apply_parameter_set, publishable
from q2rl.core.policies import BCPolicy, PolicyConfig, make_policy_net
from q2rl.core.replay import Batch

STATE_DIM = 4
B = 6
TINY = {"hidden_dims": [8, 8], "value_hidden_dims": [8], "ensemble_size": 3, "critic_subsample": 2,
        "batch_size": B, "utd": 1}


def setup(algo: str, **over):
    return _setup(algo, json.dumps(over, sort_keys=True))


@functools.lru_cache(maxsize=None)
def _setup(algo: str, over: str):
    cfg = from_dict(AgentConfig, {**TINY, "algo": algo, **json.loads(over)})
    net = make_policy_net(from_dict(PolicyConfig, {"kind": "gmm", "hidden_dims": [8], "num_modes": 3}), 7)
    bc = BCPolicy(net, net.init(jax.random.PRNGKey(0), {"state": jnp.zeros((1, STATE_DIM))}),
                  ObsNormalizer.identity(STATE_DIM))
    agent = make_agent(cfg)
    params = agent.init_params(jax.random.PRNGKey(1), {"state": np.zeros(STATE_DIM, np.float32)}, bc)
    return agent, params, bc


def batch(seed: int) -> Batch:
    rng = np.random.default_rng(seed)
    return Batch(obs={"state": rng.normal(size=(B, STATE_DIM)).astype(np.float32)},
                 actions=rng.uniform(-0.9, 0.9, (B, 7)).astype(np.float32),
                 rewards=rng.normal(size=B).astype(np.float32), discounts=np.full(B, 0.99, np.float32),
                 next_obs={"state": rng.normal(size=(B, STATE_DIM)).astype(np.float32)},
                 a_bc=rng.uniform(-0.9, 0.9, (B, 7)).astype(np.float32), is_demo=np.zeros(B, bool))


def leaves_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


# ------------------------------------------------------------------------------------------------ IQL
def test_expectile_loss_by_hand_and_its_minimiser():
    # |tau - 1(d < 0)| d^2 with tau 0.8: d = 2 -> 0.8 * 4, d = -2 -> 0.2 * 4, d = 0 -> 0
    np.testing.assert_allclose(sac.expectile_loss(jnp.array([2.0, -2.0, 0.0]), 0.8), [3.2, 0.8, 0.0], rtol=1e-6)
    # over the samples {0, 1} the 0.8-expectile v solves 0.8 (1 - v) = 0.2 v: v = 0.8, where the gradient is 0
    loss = lambda v: jnp.sum(sac.expectile_loss(jnp.array([0.0, 1.0]) - v, 0.8))
    assert float(jax.grad(loss)(0.8)) == pytest.approx(0.0, abs=1e-6)
    assert float(jax.grad(loss)(0.7)) < 0 < float(jax.grad(loss)(0.9))
    # tau 0.5 is half the squared error: its minimiser is the mean
    assert float(jax.grad(lambda v: jnp.sum(sac.expectile_loss(jnp.array([0.0, 1.0, 5.0]) - v, 0.5)))(2.0)) \
        == pytest.approx(0.0, abs=1e-6)


def test_iql_critic_step_targets_v_of_the_next_state_and_trains_v_toward_the_expectile():
    agent, params, _ = setup("batch_online")
    b = batch(1)
    # the TD target is r' + discount * V(s'), not a bootstrap through pi_RL
    target = sac.td_target(agent.nets, agent.cfg, params, b, jax.random.PRNGKey(0))
    v_next = np.asarray(sac.value(agent.nets, params, b.next_obs))
    np.testing.assert_allclose(target, b.rewards + b.discounts * v_next, rtol=1e-5, atol=1e-6)
    # V's loss is the expectile loss against the min-subset target critic at the data actions
    value_target = jnp.full(B, 3.0)
    _, metrics = sac.critic_loss(agent.nets, agent.cfg, params, sac.critic_trained(agent.cfg, params), b, target,
                                 value_target=value_target)
    v = np.asarray(sac.value(agent.nets, params, b.obs))
    expected = np.mean(np.where(3.0 - v < 0, 0.2, 0.8) * (3.0 - v) ** 2)
    assert float(metrics.value_loss) == pytest.approx(expected, rel=1e-5)
    # the critic optimizer trains V along with the critic; the actor step trains pi_BC, not pi_RL
    state = agent.init_state(params)
    after, _ = sac.critic_step(agent.nets, agent.cfg, agent.opts, state, b, jax.random.PRNGKey(1))
    assert not leaves_equal(state.params.value, after.params.value)
    assert leaves_equal(state.params.bc, after.params.bc) and leaves_equal(state.params.actor, after.params.actor)
    after_actor, metrics = sac.actor_step(agent.nets, agent.cfg, agent.opts, after, b, jax.random.PRNGKey(2))
    assert not leaves_equal(after.params.bc, after_actor.params.bc)
    assert leaves_equal(after.params.actor, after_actor.params.actor)
    dist, _ = after.params.bc.distribution(b.obs)
    assert float(metrics.bc_nll) == pytest.approx(-float(jnp.mean(dist.log_prob(b.actions))), rel=1e-5)


def test_imitation_raises_the_likelihood_of_the_stored_actions_and_leaves_the_image_encoder_alone():
    agent, params, _ = setup("batch_online")
    b = batch(2)
    nll = lambda p: -float(jnp.mean(p.bc.distribution(b.obs)[0].log_prob(b.actions)))
    state, before = agent.init_state(params), nll(params)
    for i in range(30):
        state, _ = sac.actor_step(agent.nets, agent.cfg, agent.opts, state, b, jax.random.PRNGKey(i))
    assert nll(state.params) < before - 0.5
    grads = {"params": {"encoder": {"conv": jnp.ones(3)}, "trunk": {"w": jnp.ones(2)}}}
    kept = sac.without_encoder_grads(grads)
    np.testing.assert_array_equal(kept["params"]["encoder"]["conv"], 0.0)
    np.testing.assert_array_equal(kept["params"]["trunk"]["w"], 1.0)


# ------------------------------------------------------------------------------------------------ best of N
def test_best_of_n_takes_the_first_of_equal_values():
    assert int(best_of_n(jnp.array([1.0, 3.0, 3.0, 2.0]))) == 1
    assert int(best_of_n(jnp.array([5.0]))) == 0


def test_one_candidate_is_plain_sampling_and_the_mode_can_be_the_first():
    dist = GaussianMixture(jnp.array([[0.0, 1.0]]), jnp.array([[[0.1, -0.2], [0.5, 0.3]]]),
                           jnp.array([[[-1.0, -1.0], [-2.0, -1.5]]]))
    key = jax.random.PRNGKey(3)
    np.testing.assert_array_equal(sample_candidates(dist, 1, key), dist.sample(key))
    many = sample_candidates(dist, 5, key, mode_first=True)
    assert many.shape == (5, 2)
    np.testing.assert_array_equal(many[0], dist.mode()[0])
    assert len({tuple(np.asarray(r)) for r in many}) == 5  # independent draws, not one repeated


def test_the_batch_online_gate_runs_the_best_candidate_under_the_min_head_critic():
    obs = {"state": np.linspace(-1, 1, STATE_DIM).astype(np.float32)}
    key = jax.random.PRNGKey(11)
    k_bc = jax.random.split(key, 4)[0]  # select_action's split: the BC key draws the candidates
    single, params, bc = setup("batch_online", batch_online={"best_of_n": 1})
    action, info = single.gate(params, obs, key)
    plain = jnp.clip(bc.distribution({"state": obs["state"][None]})[0].sample(k_bc)[0], -1, 1)
    np.testing.assert_allclose(action, plain, rtol=1e-6, atol=1e-6)  # N = 1: plain sampling (jit rounding apart)
    assert not bool(info.use_rl)
    agent, params, bc = setup("batch_online", batch_online={"best_of_n": 8})
    action, info = agent.gate(params, obs, key)
    dist, _ = bc.distribution({"state": obs["state"][None]})
    candidates = jnp.clip(sample_candidates(dist, 8, k_bc), -1, 1)
    q = np.min(np.asarray(sac.critic_values(agent.nets, params, {"state": np.repeat(obs["state"][None], 8, 0)},
                                            candidates)), axis=0)
    np.testing.assert_allclose(action, candidates[int(np.argmax(q))], rtol=1e-6)
    assert float(info.q_rl) == pytest.approx(q.max(), rel=1e-5) and float(info.q_bc) == pytest.approx(q[0], rel=1e-5)
    assert bool(info.use_rl) == (int(np.argmax(q)) != 0)


# ------------------------------------------------------------------------------------------------ OU noise
def test_ou_noise_mean_stationary_variance_and_autocorrelation():
    theta, sigma, dt = 5.0, 0.05, 0.1  # rho = 1 - theta dt = 0.5; variance sigma^2 dt / (1 - rho^2) = 1/3000
    assert ou_stationary_std(theta, sigma, dt) == pytest.approx(np.sqrt(0.0025 * 0.1 / 0.75))
    rng = np.random.default_rng(0)
    x, xs = np.zeros(2000), []
    for _ in range(400):  # 2000 independent chains: 400 steps, the first 50 to forget the start at 0
        x = ou_step(x, rng.standard_normal(2000), theta, sigma, dt)
        xs.append(x)
    xs = np.asarray(xs[50:])  # [350, 2000]
    std = np.sqrt(1 / 3000)
    assert abs(xs.mean()) < 0.02 * std * 10
    assert xs.var() == pytest.approx(1 / 3000, rel=0.02)
    for lag, rho in ((1, 0.5), (2, 0.25), (3, 0.125)):
        corr = np.mean(xs[lag:] * xs[:-lag]) / xs.var()
        assert corr == pytest.approx(rho, abs=0.01)


# ------------------------------------------------------------------------------------------------ Simplified Q
def test_the_ntk_regulariser_and_the_weighted_cql_term_by_hand():
    phi = jnp.array([[[1.0, 0.0], [0.0, 1.0]]])  # [E=1, B=2, H=2]
    other = jnp.array([[[1.0, 1.0], [2.0, 0.0]]])
    assert float(sac.ntk_regulariser(phi, other)) == pytest.approx((1.0 + 0.0) / 2)  # dots 1, 0; squared, mean
    assert float(sac.ntk_regulariser(2 * phi, other)) == pytest.approx(4 * 0.5)  # quadratic in the features
    q_uniform, q_data = jnp.array([[2.0, 4.0]]), jnp.array([[1.0, 3.0]])
    actions = jnp.zeros((2, 1))
    uniform = jnp.array([[0.0], [1.0]])  # the first equals the data's action: weight 0; the second 1 - e^-1
    expected = np.mean([0.0, (1 - np.exp(-1.0)) * 4.0]) - 2.0
    assert float(sac.weighted_cql_term(q_uniform, q_data, uniform, actions)) == pytest.approx(expected, rel=1e-6)


def test_penultimate_features_give_the_critics_own_values():
    agent, params, _ = setup("simplified_q")
    b = batch(4)
    feats = sac.features(agent.nets, params, b.obs)
    q, phi = sac.critic_heads_and_features(agent.nets.critic, params.critic, feats, b.actions)
    np.testing.assert_allclose(q, agent.nets.critic.apply(params.critic, feats, b.actions), rtol=1e-5, atol=1e-6)
    assert phi.shape == (3, B, 8)


def test_simplified_q_critic_step_bootstraps_from_the_live_critic_and_adds_its_terms():
    agent, params, _ = setup("simplified_q")
    cfg = agent.cfg
    assert (cfg.target_network, cfg.ntk_weight, cfg.cql_weight, cfg.n_step, cfg.use_demos) == (False, 0.1, 1.0, 3, True)
    # a target critic far from the live one changes nothing: the bootstrap reads the live critic
    b, key = batch(5), jax.random.PRNGKey(2)
    moved = params.replace(critic_target=jax.tree_util.tree_map(lambda x: x + 1.0, params.critic_target))
    np.testing.assert_array_equal(sac.td_target(agent.nets, cfg, params, b, key),
                                  sac.td_target(agent.nets, cfg, moved, b, key))
    state = agent.init_state(params)
    after, metrics = sac.critic_step(agent.nets, cfg, agent.opts, state, b, key)
    assert float(metrics.ntk_term) > 0 and float(metrics.cql_term) != 0
    assert leaves_equal(state.params.critic_target, after.params.critic_target)  # no Polyak: nothing reads it
    assert not leaves_equal(state.params.critic, after.params.critic)
    # the same step without the two terms moves the critic differently
    plain, _, _ = setup("simplified_q", ntk_weight=0.0, cql_weight=0.0)
    bare, bare_metrics = sac.critic_step(plain.nets, plain.cfg, plain.opts, plain.init_state(params), b, key)
    assert float(bare_metrics.ntk_term) == 0.0 and not leaves_equal(bare.params.critic, after.params.critic)


# ------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("over, message", [
    ({"algo": "sac_bc", "offline_updates": 10}, "offline_updates: 10 pre-train on the demo buffer"),
    ({"algo": "ibrl", "target_network": False}, "target_network: false, but ibrl scores actions"),
    ({"algo": "batch_online", "batch_online": {"expectile": 1.0}}, "expectile: 1.0 must be in"),
    ({"algo": "batch_online", "batch_online": {"ou_theta": 20.0}}, "ou_theta \\* ou_dt = 2 must be at most 1"),
    ({"algo": "batch_online", "batch_online": {"best_of_n": 0}}, "best_of_n: 0 must be >= 1"),
    ({"algo": "simplified_q", "ntk_weight": -0.1}, "ntk_weight: -0.1 must be >= 0"),
])
def test_bad_method_settings_are_config_errors(over, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(AgentConfig, {**TINY, **over})


def test_a_trained_pi_bc_reaches_the_actor_as_a_parameter_subset():
    agent, params, bc = setup("batch_online")
    state = agent.init_state(params)
    for i in range(3):
        state, _ = sac.actor_step(agent.nets, agent.cfg, agent.opts, state, batch(6), jax.random.PRNGKey(i))
    assert "bc" not in publishable(state.params)  # the other algorithms' pi_BC is loaded on both sides
    on_actor = apply_parameter_set(params, publishable(state.params, with_bc=True))
    assert leaves_equal(on_actor.bc.params, state.params.bc.params)
    assert not leaves_equal(on_actor.bc.params, params.bc.params)
