"""Q-Estimation: MC returns and the failure convention by hand, Qhat_BC terms against scipy,
E_{a~pi_BC}[Qhat_BC] = V by Monte Carlo, the held-out split, the convergence rule and the precomputed critic
support by hand, and the three regressions on tiny problems (to convergence, and saved and restored mid-stage)."""

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
from q2rl.core.q_estimation import (STAGES, Convergence, CriticSupport, holdout_episodes, mc_returns, pick_support,
                                    qhat_bc, qhat_bc_from_terms, rollout_data, track)
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
    """On a tiny problem whose returns depend on the state, all three regressions get close. Every stage runs its
    configured steps (converge_patience 0): the states do not tell the step within an episode, so held-out episodes
    would (rightly) stop V_phi before it memorises the per-step returns this test asks it to fit."""
    cfg = tiny_cfg(discount=0.9, q_estimation={"value_updates": 400, "critic_updates": 400, "actor_updates": 300,
                                               "batch_size": 64, "learning_rate": 3e-3, "converge_patience": 0})
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
    assert report.heldout_episodes == 0 and report.stage_steps == (400, 300, 400)  # no held-out set: every step
    # targets copied: the online TD target starts from the regressed critic
    np.testing.assert_array_equal(jax.tree_util.tree_leaves(fitted.critic)[0],
                                  jax.tree_util.tree_leaves(fitted.critic_target)[0])


def test_holdout_episodes_counts_alternates_successes_and_failures_and_follows_the_key():
    key = jax.random.PRNGKey(0)
    mixed = [True, False] * 10
    # round(fraction * n), at least 1 and at most n - 1; none below two episodes or at fraction 0
    assert [len(holdout_episodes(mixed, f, key)) for f in (0.1, 0.12, 0.01, 0.95, 0.0)] == [2, 2, 1, 19, 0]
    assert holdout_episodes([True], 0.5, key) == [] and len(holdout_episodes([True, False], 0.1, key)) == 1
    assert len(holdout_episodes([False] * 4, 0.9, key)) == 3  # round(3.6) = 4, but one episode must stay to train on
    # successes and failures in turn: 4 of 20 -> 2 + 2, 5 -> 3 + 2 or 2 + 3, whatever the key
    for seed in range(5):
        held = holdout_episodes(mixed, 0.2, jax.random.PRNGKey(seed))
        assert sorted(mixed[i] for i in held) == [False, False, True, True]
        assert sum(mixed[i] for i in holdout_episodes(mixed, 0.25, jax.random.PRNGKey(seed))) in (2, 3)
    # one failure among ten: it is held out, with two successes, when three are
    lone = [True] * 9 + [False]
    held = holdout_episodes(lone, 0.3, key)
    assert len(held) == 3 and 9 in held and held == sorted(set(held)) and all(0 <= i < 10 for i in held)
    # deterministic per key; another key draws other episodes
    assert holdout_episodes(mixed, 0.2, key) == holdout_episodes(mixed, 0.2, jax.random.PRNGKey(0))
    assert len({tuple(holdout_episodes(mixed, 0.2, jax.random.PRNGKey(seed))) for seed in range(5)}) > 1


def test_track_counts_steps_without_an_improvement_beyond_tol():
    state = track(Convergence(), 1.0, 100, 0.01)
    assert state == Convergence(1.0, 0)  # the first loss is the best so far
    state = track(state, 0.995, 100, 0.01)  # 0.5 % better: within tol, noise
    assert state == Convergence(1.0, 100)
    state = track(state, 1.2, 50, 0.01)  # worse: the steps add up
    assert state == Convergence(1.0, 150)
    state = track(state, 0.98, 100, 0.01)  # 2 % better than the best: progress, the count starts over
    assert state == Convergence(0.98, 0)
    # relative to the size of the best, also below zero (an NLL can be): -2.01 is 0.5 % better than -2, -2.03 1.5 %
    assert track(Convergence(-2.0, 0), -2.01, 100, 0.01) == Convergence(-2.0, 100)
    assert track(Convergence(-2.0, 100), -2.03, 100, 0.01) == Convergence(-2.03, 0)
    assert track(Convergence(1.0, 0), float("nan"), 100, 0.01) == Convergence(1.0, 100)  # a NaN is no progress
    assert track(Convergence(1.0, 0), 0.999, 100, 0.0) == Convergence(0.999, 0)  # tol 0: any gain counts


def test_pick_support_takes_one_of_each_states_k_actions_with_its_target():
    batch, k, dim = 6, 4, 3
    # action j of state i, coordinate c: 100 i + 10 j + c (+ 0.5 for the uniform ones); its target 100 i + 10 j
    ids = 100 * np.arange(batch)[:, None] + 10 * np.arange(k)[None, :]
    policy = (ids[..., None] + np.arange(dim)).astype(np.float32)
    support = CriticSupport(policy, ids.astype(np.float32), policy + 0.5, ids.astype(np.float32) + 0.5)
    picks = set()
    for seed in range(8):
        actions, targets = pick_support(support, jax.random.PRNGKey(seed))
        actions, targets = np.asarray(actions), np.asarray(targets)
        assert actions.shape == (2 * batch, dim) and targets.shape == (2 * batch,)
        rows = np.r_[np.arange(batch), np.arange(batch)]
        np.testing.assert_array_equal(actions[:, 0] // 100, rows)  # row i (pi_RL, then uniform) is state i's
        j = (actions[:, 0] % 100) // 10
        assert np.all((0 <= j) & (j < k))
        np.testing.assert_array_equal(actions[:, 1:] - actions[:, :1], np.broadcast_to(np.arange(1, dim), (12, 2)))
        np.testing.assert_array_equal(actions[:batch] % 1, 0.0)  # pi_RL's first, then the uniform ones
        np.testing.assert_array_equal(actions[batch:] % 1, 0.5)
        np.testing.assert_array_equal(targets, actions[:, 0])  # each action's own Qhat_BC
        picks.update(j.tolist())
    assert picks == set(range(k))  # drawn from all K


def test_critic_support_holds_k_actions_per_state_each_with_its_qhat_bc():
    """Scored in chunks (the last one padded), each state's K pi_RL and K uniform actions carry Qhat_BC at that
    state and action: the rows and the K axis are not mixed up on the way."""
    cfg = tiny_cfg(q_estimation={"support_samples": 3})
    agent, params = _params(cfg, random_bc(), value_mean=-5.0, value_std=2.0)
    rng = np.random.default_rng(1)
    n = 13  # 4 chunks of 12 // 3 = 4 states, the last padded
    data = rollout_data([_episode(rng.normal(size=(n + 1, STATE_DIM)), rng.uniform(-1, 1, (n, 7)), True)], cfg)
    support = agent.q_estimation.critic_support(params, data, jax.random.PRNGKey(0), chunk=12)
    assert support.policy_actions.shape == support.uniform_actions.shape == (n, 3, 7)
    assert support.policy_targets.shape == support.uniform_targets.shape == (n, 3)
    assert np.all(np.abs(support.uniform_actions) <= 1.0) and np.all(np.abs(support.policy_actions) <= 1.0)
    assert len(np.unique(support.policy_actions[:, :, 0])) == 3 * n  # fresh draws, per state and per k
    obs = {"state": np.repeat(data.obs["state"], 3, axis=0)}  # state i, k = 0, 1, 2, then state i + 1 ...
    for actions, targets in ((support.policy_actions, support.policy_targets),
                             (support.uniform_actions, support.uniform_targets)):
        by_hand = qhat_bc(agent.nets, params, obs, jnp.asarray(actions.reshape(-1, 7)), cfg.q_estimation)
        np.testing.assert_allclose(targets.reshape(-1), np.asarray(by_hand), rtol=1e-4, atol=1e-3)
    # pi_RL's actions are its own at that state: likelier under pi_RL(s_i) than under another state's
    from q2rl.core.sac import actor_dist
    log_p = lambda states, a: np.asarray(actor_dist(agent.nets, params, {"state": jnp.asarray(states)}).log_prob(a))
    own = log_p(obs["state"], support.policy_actions.reshape(-1, 7))
    other = log_p(np.roll(obs["state"], 3, axis=0), support.policy_actions.reshape(-1, 7))
    assert own.mean() > other.mean() + 1.0  # -4.1 against -5.5 nats


def _noise_episodes(n: int, length: int = 5, seed: int = 0) -> list[Episode]:
    """Episodes of random states and actions, successes and failures in turn: nothing for V_phi to learn beyond
    the two kinds' mean returns, so its held-out loss soon stops improving."""
    rng = np.random.default_rng(seed)
    return [_episode(rng.normal(size=(length + 1, STATE_DIM)), rng.uniform(-1, 1, (length, 7)), i % 2 == 0)
            for i in range(n)]


def test_a_stage_stops_once_its_heldout_loss_stops_improving_and_keeps_its_best_params():
    patience, chunk = 200, 50
    cfg = tiny_cfg(discount=0.9, q_estimation={"value_updates": 3000, "critic_updates": 0, "actor_updates": 0,
                                               "batch_size": 16, "holdout_fraction": 0.25,
                                               "converge_patience": patience})
    agent, params = _params(cfg, random_bc())
    eps, key = _noise_episodes(8), jax.random.PRNGKey(3)
    fit = agent.q_estimation.start(params, eps, key)
    fit.chunk_steps = chunk
    while not fit.advance():
        pass
    report, losses = fit.report(), fit.heldout_losses["value"]
    # the last new best (1 % below the best before it, converge_tol's default) came `patience` steps before the stop
    best, at = np.inf, None
    for i, loss in enumerate(losses):
        if loss < best * (1 - 0.01):
            best, at = loss, i
    assert report.stage_steps == ((at + 1) * chunk + patience, 0, 0) and len(losses) == at + 1 + patience // chunk
    assert report.stage_steps[0] < 3000 and report.heldout_episodes == 2  # round(0.25 * 8)
    assert report.value_heldout == (losses[0], best)
    # the params kept are that best chunk's, not the last: their loss on the held-out episodes (by hand: squared
    # error of V_phi in units of the training returns' std) is the one recorded for it
    held = rollout_data([eps[i] for i in holdout_episodes([ep.success for ep in eps], 0.25,
                                                          jax.random.fold_in(key, len(STAGES)))], cfg)
    v = np.asarray(value(agent.nets, fit.params, held.obs))
    by_hand = float(np.mean(((v - held.returns) / float(fit.params.value_stats[1])) ** 2))
    assert by_hand == pytest.approx(best, rel=1e-4)
    assert by_hand != pytest.approx(losses[-1], rel=1e-4)
    assert report.num_steps == 40 and report.num_episodes == 8  # the held-out episodes count as seen


@pytest.mark.parametrize("setting, stop_after_chunks", [
    ("configured_steps", 3),  # between two stages
    ("configured_steps", 7),  # within the critic stage
    ("converging", 2),  # within V_phi's stage, a chunk past its best held-out loss
    ("converging", 12),  # within the critic stage, a chunk past its best
])
def test_a_fit_saved_mid_stage_and_restored_ends_where_the_uninterrupted_one_does(tmp_path, setting,
                                                                                 stop_after_chunks):
    """The fit's progress, checkpointed to a file and put back into a fit started afresh on the same episodes and
    key, goes on to the parameters the uninterrupted fit reaches (a learner killed during the fit loses nothing):
    with the held-out record too, so a stage stops where it would have and keeps the same best params."""
    from q2rl.core.checkpoint import load_checkpoint, read_metadata, save_checkpoint

    steps = {"configured_steps": 60, "converging": 400}[setting]
    converge = {"converge_patience": 40, "converge_tol": 0.2} if setting == "converging" else {}
    cfg = tiny_cfg(discount=0.9, q_estimation={"value_updates": steps, "critic_updates": steps,
                                               "actor_updates": steps, "batch_size": 16, **converge})
    agent, params = _params(cfg, random_bc())
    rng = np.random.default_rng(0)
    eps = [_episode(rng.normal(size=(4, STATE_DIM)), rng.uniform(-1, 1, (3, 7)), i % 2 == 0) for i in range(6)]
    start = lambda: agent.q_estimation.start(params, eps, jax.random.PRNGKey(3))

    whole = start()
    whole.chunk_steps = 20
    chunks = 0
    while not whole.advance():
        chunks += 1
    if setting == "configured_steps":
        assert chunks + 1 == 9  # three stages of three chunks
    else:
        assert all(n < steps for n in whole.report().stage_steps)  # every stage stopped early

    cut = start()
    cut.chunk_steps = 20
    for _ in range(stop_after_chunks):
        cut.advance()
    if setting == "converging":
        assert cut.done > 0 and cut.convergence.since_best > 0  # saved past its best: the best part must travel
    tree, meta = cut.progress()
    save_checkpoint(tmp_path / "fit.ckpt", tree, meta)
    left = cut.steps_left()
    del cut

    resumed = start()
    resumed.chunk_steps = 20
    meta = read_metadata(tmp_path / "fit.ckpt")
    resumed.restore(load_checkpoint(tmp_path / "fit.ckpt", target=resumed.progress_template(meta)).state, meta)
    assert resumed.steps_left() == left
    if setting == "configured_steps":
        assert left == 180 - 20 * stop_after_chunks
    while not resumed.advance():
        pass
    for a, b in zip(jax.tree_util.tree_leaves(whole.params), jax.tree_util.tree_leaves(resumed.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert resumed.report() == whole.report()
    assert whole.report().heldout_episodes == 1  # round(0.1 * 6) = 1: the held-out path, in both settings


def test_bagged_value_loss_by_hand():
    from q2rl.core.q_estimation import bagged_value_loss

    per_head = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    targets = jnp.array([1.0, 0.0, 1.0])
    weights = jnp.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])  # head 1 sits this minibatch out
    # head 0: (2 * 0^2 + 1 * 2^2 + 0 * 2^2) / 3 = 4/3; head 1: 0 / max(0, eps) = 0; mean over heads 2/3
    assert float(bagged_value_loss(per_head, targets, weights)) == pytest.approx(2 / 3)
    ones = jnp.ones((1, 3))
    assert float(bagged_value_loss(per_head[:1], targets, ones)) == pytest.approx((0 + 4 + 4) / 3)  # plain MSE


def test_bootstrap_weights_are_poisson_resamples_and_one_head_is_the_plain_fit():
    from q2rl.core.q_estimation import bootstrap_weights

    np.testing.assert_array_equal(bootstrap_weights(7, 1, jax.random.PRNGKey(0)), np.ones((1, 7)))
    w = bootstrap_weights(20_000, 5, jax.random.PRNGKey(1))
    assert w.shape == (5, 20_000) and np.all(w == np.round(w)) and w.min() == 0
    assert w.mean() == pytest.approx(1.0, abs=0.02) and w.var() == pytest.approx(1.0, abs=0.05)  # Poisson(1)
    assert (w == 0).mean() == pytest.approx(np.exp(-1), abs=0.01)  # about a third of the episodes sit out a head
    np.testing.assert_array_equal(w, bootstrap_weights(20_000, 5, jax.random.PRNGKey(1)))  # a restart redraws them


def test_a_bagged_v_phi_is_the_mean_of_heads_fitted_on_different_resamples():
    cfg = tiny_cfg(discount=0.9, q_estimation={"value_heads": 4, "value_updates": 300, "critic_updates": 0,
                                               "actor_updates": 0, "batch_size": 16, "holdout_fraction": 0.25,
                                               "converge_patience": 0})
    agent, params = _params(cfg, random_bc())
    assert set(params.value["params"]) == {"heads"}  # vmapped heads (a state-only encoder has no params)
    eps = _noise_episodes(8, seed=1)
    fit = agent.q_estimation.start(params, eps, jax.random.PRNGKey(5))
    while not fit.advance():
        pass
    data = rollout_data(eps, cfg)
    heads = np.asarray(agent.nets.value.apply(fit.params.value, fit.params.normalizer.normalize(data.obs)))
    assert heads.shape == (4, len(data.returns))
    assert heads.std(axis=0).mean() > 0.05
    mean, std = (float(x) for x in fit.params.value_stats)
    np.testing.assert_allclose(np.asarray(value(agent.nets, fit.params, data.obs)), mean + std * heads.mean(axis=0),
                               rtol=1e-5, atol=1e-4)
    # one head keeps the single network's parameter layout (checkpoints written before heads existed load)
    _, single = _params(tiny_cfg(), random_bc())
    assert set(single.value["params"]) == {"MLP_0", "Dense_0"}


def test_each_head_of_a_bagged_v_phi_learns_only_from_the_episodes_of_its_resample():
    """On noise episodes a head can only memorise: its error is small on the episodes its resample holds and
    large on those it left out (weight 0), which it never saw."""
    cfg = tiny_cfg(discount=0.9, value_hidden_dims=[64, 64],
                   q_estimation={"value_heads": 3, "batch_size": 32, "learning_rate": 3e-3})
    agent, params = _params(cfg, random_bc())
    data = rollout_data(_noise_episodes(12, seed=2), cfg)
    params, regression, get, put = agent.q_estimation.regression("value", params, data, jax.random.PRNGKey(7))
    part, opt_state = get(params), regression.init(get(params))
    for i in range(6):
        part, opt_state, _ = regression.chunk(part, opt_state, jax.random.PRNGKey(i), 250)
    weights = np.asarray(regression.data[2]).T  # [heads, rows]
    assert (weights == 0).any(axis=1).all() and (weights > 0).any(axis=1).all()
    params = put(params, part)
    heads = np.asarray(agent.nets.value.apply(params.value, params.normalizer.normalize(data.obs)))
    target = (data.returns - float(params.value_stats[0])) / float(params.value_stats[1])
    for h in range(3):
        err = (heads[h] - target) ** 2
        seen, unseen = err[weights[h] > 0].mean(), err[weights[h] == 0].mean()
        assert seen < 0.3 * unseen, (h, seen, unseen)
