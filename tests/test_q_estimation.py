"""Q-Estimation: MC returns and the failure convention by hand, Qhat_BC terms against scipy,
E_{a~pi_BC}[Qhat_BC] = V by Monte Carlo, and the three regressions on tiny problems."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from q2rl.config import from_dict
from q2rl.core.agent_config import AgentConfig
from q2rl.core.agents import make_agent
from q2rl.core.normalization import ObsNormalizer
from q2rl.core.policies import BCPolicy, PolicyConfig, make_policy_net
from q2rl.core.q_estimation import mc_returns, qhat_bc, qhat_bc_from_terms, rollout_data
from q2rl.core.replay import Episode
from q2rl.core.sac import value

STATE_DIM = 5

TINY = {"hidden_dims": [16, 16], "value_hidden_dims": [16, 16], "ensemble_size": 2, "batch_size": 16, "utd": 2}


def tiny_cfg(**over) -> AgentConfig:
    data = {**TINY, **over}
    return from_dict(AgentConfig, data)


def random_bc(kind: str = "gaussian", seed: int = 0) -> BCPolicy:
    net = make_policy_net(from_dict(PolicyConfig, {"kind": kind, "hidden_dims": [16], "num_modes": 3}), 7)
    params = net.init(jax.random.PRNGKey(seed), {"state": jnp.zeros((1, STATE_DIM))})
    return BCPolicy(net, params, ObsNormalizer.identity(STATE_DIM))


def test_mc_returns_success_by_hand():
    # r = [0, 0, 1], r' = 5 r - 1 = [-1, -1, 4], gamma 0.9
    g = mc_returns(np.array([0.0, 0.0, 1.0]), success=True, discount=0.9)
    np.testing.assert_allclose(g, [-1 + 0.9 * (-1 + 0.9 * 4), -1 + 0.9 * 4, 4.0])


def test_mc_returns_failure_conventions():
    rewards = np.zeros(3)
    np.testing.assert_allclose(mc_returns(rewards, False, 0.9, failure_return="infinite_horizon"), [-10.0] * 3)
    np.testing.assert_allclose(mc_returns(rewards, False, 0.9, failure_return="discounted"),
                               [-1 - 0.9 - 0.81, -1 - 0.9, -1.0])
    # a success is never treated as a failure
    np.testing.assert_allclose(mc_returns(np.array([1.0]), True, 0.9, failure_return="infinite_horizon"), [4.0])
    with pytest.raises(ValueError, match="failure_return"):
        mc_returns(rewards, True, 0.9, failure_return="bogus")


def test_qhat_terms_and_floor():
    q = qhat_bc_from_terms(jnp.array([2.0, 2.0]), jnp.array([-1.5, -500.0]), jnp.array([3.0, 3.0]), 0.5, -100.0)
    np.testing.assert_allclose(q, [2 + 0.5 * (-1.5 + 3), 2 + 0.5 * (-100 + 3)])


@functools.lru_cache(maxsize=None)
def _agent(cfg):
    return make_agent(cfg)


def _params(cfg, bc, value_mean=0.0, value_std=1.0):
    agent = _agent(cfg)
    params = agent.init_params(jax.random.PRNGKey(1), {"state": np.zeros(STATE_DIM, np.float32)}, bc)
    return agent, params.replace(value_stats=jnp.array([value_mean, value_std], jnp.float32))


def test_qhat_matches_scipy_for_a_gaussian_bc():
    cfg = tiny_cfg(q_estimation={"alpha": 0.7})
    bc = random_bc()
    agent, params = _params(cfg, bc)
    obs = {"state": jnp.asarray(np.random.default_rng(0).normal(size=(4, STATE_DIM)), jnp.float32)}
    dist, _ = bc.distribution(obs)
    actions = dist.sample(jax.random.PRNGKey(2))
    q = qhat_bc(agent.nets, params, obs, actions, cfg.q_estimation)
    mean, std = np.asarray(dist.mean), np.asarray(dist.std)
    logp = stats.norm(mean, std).logpdf(np.asarray(actions)).sum(-1)
    entropy = stats.norm(mean, std).entropy().sum(-1)
    expected = np.asarray(value(agent.nets, params, obs)) + 0.7 * (logp + entropy)
    np.testing.assert_allclose(np.asarray(q), expected, rtol=1e-4, atol=1e-4)


def test_expected_qhat_under_bc_equals_v_monte_carlo():
    """E_{a~pi_BC}[Qhat_BC(s,a)] = V(s) because E[log pi] = -H (Gaussian, exact entropy)."""
    cfg = tiny_cfg()
    bc = random_bc()
    agent, params = _params(cfg, bc, value_mean=-3.0, value_std=2.0)
    obs = {"state": jnp.ones((1, STATE_DIM), jnp.float32)}
    n = 40_000
    dist, _ = bc.distribution(obs)
    actions = jax.vmap(dist.sample)(jax.random.split(jax.random.PRNGKey(3), n))[:, 0]
    obs_n = {"state": jnp.ones((n, STATE_DIM), jnp.float32)}
    q = np.asarray(qhat_bc(agent.nets, params, obs_n, actions, cfg.q_estimation))
    v = float(value(agent.nets, params, obs)[0])
    # log pi + H of a d-dim Gaussian sample is -1/2 (chi2_d - d): std sqrt(d/2); 5 standard errors
    tolerance = 5 * np.sqrt(7 / 2) / np.sqrt(n)
    assert abs(q.mean() - v) < tolerance
    assert q.std() == pytest.approx(np.sqrt(7 / 2), rel=0.05)


def test_expected_qhat_under_gmm_bc_exceeds_v_by_the_entropy_bound_gap():
    """With the GMM entropy upper bound, E[Qhat] - V = alpha (H_bound - H) >= 0."""
    cfg = tiny_cfg()
    bc = random_bc("gmm", seed=4)
    agent, params = _params(cfg, bc)
    n = 40_000
    obs_n = {"state": jnp.full((n, STATE_DIM), 0.3, jnp.float32)}
    dist, _ = bc.distribution(obs_n)
    actions = dist.sample(jax.random.PRNGKey(5))
    logp = np.asarray(dist.log_prob(actions))
    q = np.asarray(qhat_bc(agent.nets, params, obs_n, actions, cfg.q_estimation))
    v = np.asarray(value(agent.nets, params, obs_n))
    gap = float(dist.entropy()[0]) - (-logp.mean())  # H_bound - H_mc
    assert gap >= -0.05
    assert (q - v).mean() == pytest.approx(gap, abs=5 * logp.std() / np.sqrt(n) + 1e-3)


def _episode(states: np.ndarray, actions: np.ndarray, success: bool) -> Episode:
    n = len(actions)
    return Episode(obs={"state": states.astype(np.float32)}, actions=actions.astype(np.float32),
                   rewards=np.r_[np.zeros(n - 1), float(success)].astype(np.float32),
                   terminated=np.r_[np.zeros(n - 1, bool), success], truncated=np.r_[np.zeros(n - 1, bool), not success],
                   a_bc=actions, a_rl=actions, q_bc=np.zeros(n), q_rl=np.zeros(n), source=np.zeros(n, np.int8),
                   param_version=np.zeros(n, np.int64))


def test_rollout_data_stacks_returns_per_episode():
    cfg = tiny_cfg(discount=0.9)
    eps = [_episode(np.zeros((3, STATE_DIM)), np.zeros((2, 7)), True),
           _episode(np.zeros((4, STATE_DIM)), np.zeros((3, 7)), False)]
    data = rollout_data(eps, cfg)
    np.testing.assert_allclose(data.returns, [-1 + 0.9 * 4, 4, -10, -10, -10], rtol=1e-6)
    assert data.obs["state"].shape == (5, STATE_DIM)


@pytest.mark.slow
def test_fit_regresses_value_critic_and_actor():
    """On a tiny problem whose returns depend on the state, all three regressions get close."""
    cfg = tiny_cfg(discount=0.9, q_estimation={"value_updates": 400, "critic_updates": 400, "actor_updates": 300,
                                               "batch_size": 64, "learning_rate": 3e-3})
    bc = random_bc()
    agent, params = _params(cfg, bc)
    rng = np.random.default_rng(0)
    eps = []
    for i in range(16):
        success = i % 2 == 0
        states = rng.normal(size=(4, STATE_DIM)) + (2.0 if success else -2.0)
        dist, _ = bc.distribution({"state": jnp.asarray(states[:3], jnp.float32)})
        eps.append(_episode(states, np.clip(np.asarray(dist.sample(jax.random.PRNGKey(i))), -1, 1), success))
    fitted, report = agent.q_estimation.fit(params, eps, jax.random.PRNGKey(0))
    data = rollout_data(eps, cfg)
    v = np.asarray(value(agent.nets, fitted, data.obs))
    assert np.sqrt(np.mean((v - data.returns) ** 2)) < 0.1 * data.returns.std()
    targets = agent.q_estimation.critic_targets(fitted, data, jax.random.PRNGKey(1))
    from q2rl.core.sac import critic_values
    q = np.asarray(critic_values(agent.nets, fitted, data.obs, jnp.asarray(data.actions)))
    assert np.mean((q - targets[None]) ** 2) < 0.2 * np.var(targets)
    # regressed at uniform actions too: Q_RL knows that off-BC actions are worse (Qhat_BC's log-prob term)
    uniform = jax.random.uniform(jax.random.PRNGKey(4), data.actions.shape, minval=-1, maxval=1)
    q_uniform = np.asarray(critic_values(agent.nets, fitted, data.obs, uniform))
    qhat_uniform = np.asarray(qhat_bc(agent.nets, fitted, data.obs, uniform, cfg.q_estimation, jax.random.PRNGKey(5)))
    true_gap = targets.mean() - qhat_uniform.mean()
    assert true_gap > 5.0  # the BC log-prob makes off-BC actions much worse under Qhat_BC
    assert q.mean() - q_uniform.mean() > 0.5 * true_gap, (q.mean(), q_uniform.mean(), true_gap)
    from q2rl.core.sac import actor_dist
    nll = lambda p: -float(jnp.mean(actor_dist(agent.nets, p, data.obs).log_prob(jnp.asarray(data.actions))))
    assert nll(fitted) < nll(params) - 1.0
    assert report.num_steps == 48 and report.success_rate == 0.5
    # targets copied: the online TD target starts from the regressed critic
    np.testing.assert_array_equal(jax.tree_util.tree_leaves(fitted.critic)[0],
                                  jax.tree_util.tree_leaves(fitted.critic_target)[0])


@pytest.mark.parametrize("stop_after_chunks", [3, 7])  # between two stages; within the critic stage
def test_a_fit_saved_mid_stage_and_restored_ends_where_the_uninterrupted_one_does(tmp_path, stop_after_chunks):
    """The fit's progress, checkpointed to a file and put back into a fit started afresh on the same episodes and
    key, goes on to the parameters the uninterrupted fit reaches (a learner killed during the fit loses nothing)."""
    from q2rl.core.checkpoint import load_checkpoint, read_metadata, save_checkpoint

    cfg = tiny_cfg(discount=0.9, q_estimation={"value_updates": 60, "critic_updates": 60, "actor_updates": 60,
                                               "batch_size": 16})
    agent, params = _params(cfg, random_bc())
    rng = np.random.default_rng(0)
    eps = [_episode(rng.normal(size=(4, STATE_DIM)), rng.uniform(-1, 1, (3, 7)), i % 2 == 0) for i in range(6)]
    start = lambda: agent.q_estimation.start(params, eps, jax.random.PRNGKey(3))

    whole = start()
    whole.chunk_steps = 20
    chunks = 0
    while not whole.advance():
        chunks += 1
    assert chunks + 1 == 9  # three stages of three chunks

    cut = start()
    cut.chunk_steps = 20
    for _ in range(stop_after_chunks):
        cut.advance()
    tree, meta = cut.progress()
    save_checkpoint(tmp_path / "fit.ckpt", tree, meta)
    del cut

    resumed = start()
    resumed.chunk_steps = 20
    meta = read_metadata(tmp_path / "fit.ckpt")
    resumed.restore(load_checkpoint(tmp_path / "fit.ckpt", target=resumed.progress_template(meta)).state, meta)
    assert resumed.steps_left() == 180 - 20 * stop_after_chunks
    while not resumed.advance():
        pass
    for a, b in zip(jax.tree_util.tree_leaves(whole.params), jax.tree_util.tree_leaves(resumed.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert resumed.report() == whole.report()
