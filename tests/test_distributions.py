"""Action distributions against scipy and against their own definitions (docs/design.md#closed-forms)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from q2rl.core.distributions import DiagGaussian, GaussianMixture, TanhGaussian

RNG = np.random.default_rng(0)


def _gaussian_params(batch: int, dim: int):
    mean = RNG.normal(size=(batch, dim)).astype(np.float32)
    log_std = RNG.uniform(-1.5, 0.5, size=(batch, dim)).astype(np.float32)
    return mean, log_std


def test_diag_gaussian_log_prob_and_entropy_match_scipy():
    mean, log_std = _gaussian_params(4, 7)
    actions = RNG.normal(size=(4, 7)).astype(np.float32)
    dist = DiagGaussian(jnp.asarray(mean), jnp.asarray(log_std))
    for b in range(4):
        cov = np.diag(np.exp(2 * log_std[b]))
        ref = stats.multivariate_normal(mean[b], cov)
        np.testing.assert_allclose(dist.log_prob(actions)[b], ref.logpdf(actions[b]), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(dist.entropy()[b], ref.entropy(), rtol=1e-5, atol=1e-4)
    assert dist.log_prob(actions).shape == (4,)
    np.testing.assert_array_equal(dist.mode(), mean)


def test_diag_gaussian_sampling_statistics():
    mean, log_std = _gaussian_params(1, 3)
    dist = DiagGaussian(jnp.broadcast_to(mean, (20000, 3)), jnp.broadcast_to(log_std, (20000, 3)))
    samples = np.asarray(dist.sample(jax.random.PRNGKey(1)))
    np.testing.assert_allclose(samples.mean(0), mean[0], atol=0.03)
    np.testing.assert_allclose(samples.std(0), np.exp(log_std[0]), rtol=0.03)


def _mixture(batch: int, k: int, dim: int, estimator: str = "bound") -> tuple[GaussianMixture, tuple]:
    logits = RNG.normal(size=(batch, k)).astype(np.float32)
    means = RNG.normal(scale=1.5, size=(batch, k, dim)).astype(np.float32)
    log_stds = RNG.uniform(-1.0, 0.3, size=(batch, k, dim)).astype(np.float32)
    dist = GaussianMixture(jnp.asarray(logits), jnp.asarray(means), jnp.asarray(log_stds),
                           entropy_estimator=estimator, mc_samples=2000)
    return dist, (logits, means, log_stds)


def test_gmm_log_prob_is_weighted_sum_of_scipy_densities():
    dist, (logits, means, log_stds) = _mixture(3, 4, 5)
    actions = RNG.normal(size=(3, 5)).astype(np.float32)
    weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    for b in range(3):
        density = sum(
            weights[b, k] * stats.multivariate_normal(means[b, k], np.diag(np.exp(2 * log_stds[b, k]))).pdf(actions[b])
            for k in range(4)
        )
        np.testing.assert_allclose(dist.log_prob(actions)[b], np.log(density), rtol=1e-4, atol=1e-4)


def test_gmm_entropy_bound_formula_and_bound_exceeds_monte_carlo():
    dist, (logits, means, log_stds) = _mixture(3, 4, 2)
    weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    component_h = np.array([[stats.multivariate_normal(means[b, k], np.diag(np.exp(2 * log_stds[b, k]))).entropy()
                             for k in range(4)] for b in range(3)])
    expected = -(weights * np.log(weights)).sum(-1) + (weights * component_h).sum(-1)
    np.testing.assert_allclose(dist.entropy(), expected, rtol=1e-5)

    mc = dist.entropy_mc(jax.random.PRNGKey(0))
    assert np.all(np.asarray(dist.entropy_bound()) >= np.asarray(mc) - 0.05)
    # Monte Carlo against an independent scipy estimate: -E[log p(a)] with a ~ p drawn by numpy.
    b = 0
    comp = RNG.choice(4, size=10000, p=weights[b])
    draws = means[b, comp] + np.exp(log_stds[b, comp]) * RNG.normal(size=(10000, 2))
    dens = sum(weights[b, k] * stats.multivariate_normal(means[b, k], np.diag(np.exp(2 * log_stds[b, k]))).pdf(draws)
               for k in range(4))
    np.testing.assert_allclose(mc[b], -np.log(dens).mean(), atol=0.08)


def test_gmm_entropy_estimator_is_selectable_and_mc_needs_a_key():
    dist, _ = _mixture(2, 3, 2, estimator="mc")
    with pytest.raises(ValueError, match="key"):
        dist.entropy()
    np.testing.assert_allclose(dist.entropy(jax.random.PRNGKey(3)), dist.entropy_mc(jax.random.PRNGKey(3)))


def test_gmm_single_component_equals_gaussian():
    mean, log_std = _gaussian_params(2, 4)
    gmm = GaussianMixture(jnp.zeros((2, 1)), jnp.asarray(mean)[:, None], jnp.asarray(log_std)[:, None])
    gauss = DiagGaussian(jnp.asarray(mean), jnp.asarray(log_std))
    a = RNG.normal(size=(2, 4)).astype(np.float32)
    np.testing.assert_allclose(gmm.log_prob(a), gauss.log_prob(a), rtol=1e-5)
    np.testing.assert_allclose(gmm.entropy(), gauss.entropy(), rtol=1e-5)
    np.testing.assert_allclose(gmm.mode(), mean)


def test_gmm_sampling_statistics_match_mixture_moments():
    logits = np.log(np.array([0.2, 0.8], np.float32))
    means = np.array([[-2.0, 1.0], [1.0, 0.0]], np.float32)
    log_stds = np.log(np.array([[0.5, 0.2], [0.3, 1.0]], np.float32))
    n = 40000
    dist = GaussianMixture(jnp.broadcast_to(logits, (n, 2)), jnp.broadcast_to(means, (n, 2, 2)),
                           jnp.broadcast_to(log_stds, (n, 2, 2)))
    samples = np.asarray(dist.sample(jax.random.PRNGKey(2)))
    w = np.array([0.2, 0.8])[:, None]
    mix_mean = (w * means).sum(0)
    mix_var = (w * (np.exp(2 * log_stds) + means**2)).sum(0) - mix_mean**2
    np.testing.assert_allclose(samples.mean(0), mix_mean, atol=0.03)
    np.testing.assert_allclose(samples.var(0), mix_var, rtol=0.04)
    np.testing.assert_allclose(dist.mode()[0], means[1])  # the heavier component


def test_tanh_gaussian_log_prob_matches_change_of_variables():
    mean, log_std = _gaussian_params(5, 3)
    dist = TanhGaussian(jnp.asarray(mean), jnp.asarray(log_std))
    u = RNG.normal(size=(5, 3))
    a = np.tanh(u)
    # density of a = tanh(u): p_u(u) / prod |d tanh/du| = p_u(u) / prod (1 - tanh(u)^2)
    expected = stats.norm(mean, np.exp(log_std)).logpdf(u).sum(-1) - np.log(1 - a**2).sum(-1)
    np.testing.assert_allclose(dist.log_prob(jnp.asarray(a, jnp.float32)), expected, rtol=1e-3, atol=1e-3)


def test_tanh_gaussian_density_integrates_to_one_in_1d():
    dist = TanhGaussian(jnp.array([[0.7]]), jnp.array([[-0.3]]))
    grid = np.linspace(-1 + 1e-6, 1 - 1e-6, 200001, dtype=np.float64)
    dens = np.exp(np.asarray(jax.vmap(lambda x: dist.log_prob(jnp.full((1, 1), x))[0])(jnp.asarray(grid))))
    np.testing.assert_allclose(np.trapezoid(dens, grid), 1.0, atol=2e-3)


def test_tanh_gaussian_sample_log_prob_consistent_and_boundary_finite():
    mean, log_std = _gaussian_params(1000, 2)
    dist = TanhGaussian(jnp.asarray(mean * 0.3), jnp.asarray(log_std))
    a, logp = dist.sample_and_log_prob(jax.random.PRNGKey(4))
    assert np.all(np.abs(np.asarray(a)) <= 1.0)
    interior = np.all(np.abs(np.asarray(a)) < 0.99, axis=-1)
    np.testing.assert_allclose(np.asarray(dist.log_prob(a))[interior], np.asarray(logp)[interior], rtol=1e-3, atol=1e-3)
    boundary = dist.log_prob(jnp.array([[1.0, -1.0]] * 1000))
    assert np.all(np.isfinite(np.asarray(boundary)))
    np.testing.assert_allclose(dist.mode(), np.tanh(mean * 0.3), rtol=1e-6)
    with pytest.raises(ValueError, match="key"):
        dist.entropy()
    assert dist.entropy(jax.random.PRNGKey(0)).shape == (1000,)


def test_distributions_jit_and_gradients_are_finite():
    dist, _ = _mixture(2, 3, 4)

    def loss(means):
        d = GaussianMixture(dist.logits, means, dist.log_stds)
        return -d.log_prob(jnp.zeros((2, 4))).mean()

    grad = jax.jit(jax.grad(loss))(dist.means)
    assert grad.shape == dist.means.shape and np.all(np.isfinite(np.asarray(grad)))
    batched = jax.jit(lambda d, k: (d.sample(k), d.entropy()))(dist, jax.random.PRNGKey(0))
    assert batched[0].shape == (2, 4) and batched[1].shape == (2,)
