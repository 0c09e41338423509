"""SAC pieces against numpy: TD target and masks, critic/actor/temperature losses, Polyak, subtree-only
optimizers, UTD scan == sequential updates, and one compilation per update function."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from q2rl.config import ConfigError, from_dict, to_dict
from q2rl.core import sac
from q2rl.core.agent_config import AgentConfig
from q2rl.core.agents import make_agent
from q2rl.core.normalization import ObsNormalizer
from q2rl.core.policies import BCPolicy, PolicyConfig, make_policy_net
from q2rl.core.replay import Batch, stack_batches

STATE_DIM = 4
B = 6


def agent_and_params(**over):
    return _agent_and_params(tuple(sorted(over.items())))


@functools.lru_cache(maxsize=None)
def _agent_and_params(over: tuple):
    over = dict(over)
    cfg = from_dict(AgentConfig, {"hidden_dims": [8, 8], "value_hidden_dims": [8], "ensemble_size": 3,
                                  "critic_subsample": 2, "batch_size": B, "utd": 3, **over})
    net = make_policy_net(from_dict(PolicyConfig, {"hidden_dims": [8]}), 7)
    bc = BCPolicy(net, net.init(jax.random.PRNGKey(0), {"state": jnp.zeros((1, STATE_DIM))}),
                  ObsNormalizer.identity(STATE_DIM))
    agent = make_agent(cfg)
    params = agent.init_params(jax.random.PRNGKey(1), {"state": np.zeros(STATE_DIM, np.float32)}, bc)
    return agent, params


def batch(seed: int, discounts=None) -> Batch:
    rng = np.random.default_rng(seed)
    return Batch(obs={"state": rng.normal(size=(B, STATE_DIM)).astype(np.float32)},
                 actions=rng.uniform(-1, 1, (B, 7)).astype(np.float32),
                 rewards=rng.normal(size=B).astype(np.float32),
                 discounts=np.full(B, 0.99, np.float32) if discounts is None else np.asarray(discounts, np.float32),
                 next_obs={"state": rng.normal(size=(B, STATE_DIM)).astype(np.float32)},
                 a_bc=rng.uniform(-0.9, 0.9, (B, 7)).astype(np.float32), is_demo=np.zeros(B, bool))


def test_subsample_min_takes_min_over_distinct_heads():
    q = jnp.array([[1.0, 5.0], [2.0, 0.0], [3.0, 3.0]])
    assert np.allclose(sac.subsample_min(jax.random.PRNGKey(0), q, 3), [1.0, 0.0])
    for seed in range(20):
        out = np.asarray(sac.subsample_min(jax.random.PRNGKey(seed), q, 2))
        candidates = [np.minimum(q[i], q[j]) for i in range(3) for j in range(3) if i != j]
        assert any(np.allclose(out, c) for c in candidates)


def test_td_target_and_masks_by_hand():
    agent, params = agent_and_params()
    b = batch(0, discounts=[0.99, 0.0, 0.99, 0.0, 0.5, 0.99])  # 0 = terminated, never truncated
    key = jax.random.PRNGKey(3)
    target = np.asarray(sac.td_target(agent.nets, agent.cfg, params, b, key))
    k_action, k_heads = jax.random.split(key)
    dist = sac.actor_dist(agent.nets, params, b.next_obs)
    a_next, _ = dist.sample_and_log_prob(k_action)
    q_next = np.asarray(sac.critic_values(agent.nets, params, b.next_obs, a_next, target=True))
    heads = np.asarray(jax.random.choice(k_heads, 3, (2,), replace=False))
    expected = b.rewards + b.discounts * q_next[heads].min(axis=0)
    np.testing.assert_allclose(target, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(target[[1, 3]], b.rewards[[1, 3]])  # terminal: no bootstrap


@pytest.mark.parametrize("algo, bootstrap, uses_bc", [("ibrl", "auto", True), ("q2rl", "auto", False),
                                                     ("q2rl", "max_rl_bc", True), ("ibrl", "rl", False)])
def test_td_target_bootstrap_rule_by_hand(algo, bootstrap, uses_bc):
    """max_rl_bc (IBRL's rule, ibrl's default): the better of Q_target(s', a'_rl) and Q_target(s', pi_BC's mode)."""
    agent, params = agent_and_params(algo=algo, bootstrap=bootstrap)
    b = batch(0, discounts=[0.99, 0.0, 0.99, 0.99, 0.5, 0.99])
    key = jax.random.PRNGKey(3)
    k_action, k_heads = jax.random.split(key)
    a_next, _ = sac.actor_dist(agent.nets, params, b.next_obs).sample_and_log_prob(k_action)
    heads = np.asarray(jax.random.choice(k_heads, 3, (2,), replace=False))
    q_rl = np.asarray(sac.critic_values(agent.nets, params, b.next_obs, a_next, target=True))[heads].min(axis=0)
    a_bc = np.clip(np.asarray(sac.bc_dist(params, b.next_obs).mode()), -1, 1)
    q_bc = np.asarray(sac.critic_values(agent.nets, params, b.next_obs, a_bc, target=True))[heads].min(axis=0)
    assert np.any(q_bc > q_rl) and np.any(q_bc < q_rl)  # both branches are taken somewhere
    target = np.asarray(sac.td_target(agent.nets, agent.cfg, params, b, key))
    expected = b.rewards + b.discounts * (np.maximum(q_rl, q_bc) if uses_bc else q_rl)
    np.testing.assert_allclose(target, expected, rtol=1e-5, atol=1e-5)


def test_critic_loss_by_numpy():
    agent, params = agent_and_params()
    b = batch(1)
    target = jnp.asarray(np.arange(B, dtype=np.float32))
    loss, metrics = sac.critic_loss(agent.nets, agent.cfg, params, (params.critic, params.encoder), b, target)
    q = np.asarray(sac.critic_values(agent.nets, params, b.obs, b.actions))  # [E, B]
    assert float(loss) == pytest.approx(np.mean((q - np.arange(B)[None]) ** 2), rel=1e-5)
    assert float(metrics.q_mean) == pytest.approx(q.mean(), rel=1e-5, abs=1e-6)
    assert float(metrics.conservative_term) == 0.0  # the plain critic: no conservative term
    assert float(metrics.q_head_std) == pytest.approx(q.std(axis=0).mean(), rel=1e-4)
    assert float(metrics.q_head_std) > 0  # heads initialised apart disagree


def test_calibrated_conservative_term_by_numpy():
    """max(Q_i(s, a_pi), V(s)) - Q_i(s, a_data), averaged: the reference caps how far down a_pi's Q is pulled."""
    agent, params = agent_and_params()
    b = batch(2)
    a_pi = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (B, 7)).astype(np.float32))
    q_pi = np.asarray(sac.critic_values(agent.nets, params, b.obs, a_pi))  # [E, B]
    q_data = np.asarray(sac.critic_values(agent.nets, params, b.obs, b.actions))
    reference = np.median(q_pi, axis=0) + np.linspace(-1, 1, B)  # some states above, some below
    term = sac.calibrated_conservative_term(jnp.asarray(q_pi), jnp.asarray(q_data), jnp.asarray(reference))
    assert float(term) == pytest.approx(np.mean(np.maximum(q_pi, reference[None]) - q_data), rel=1e-5, abs=1e-5)
    # under the reference everywhere, a_pi's Q gets no gradient: only the data actions are pushed up
    grad_pi, grad_data = jax.grad(sac.calibrated_conservative_term, argnums=(0, 1))(
        jnp.asarray(q_pi), jnp.asarray(q_data), jnp.full(B, 1e6))
    assert float(jnp.abs(grad_pi).max()) == 0.0
    np.testing.assert_allclose(grad_data, -1.0 / q_data.size)
    # inside the critic loss: TD + w * term, with the metrics still reporting the TD part
    target = jnp.zeros(B)
    td, _ = sac.critic_loss(agent.nets, agent.cfg, params, (params.critic, params.encoder), b, target)
    loss, metrics = sac.critic_loss(agent.nets, agent.cfg, params, (params.critic, params.encoder), b, target,
                                    (2.0, a_pi, jnp.asarray(reference, jnp.float32)))
    assert float(loss) == pytest.approx(float(td) + 2.0 * float(term), rel=1e-5)
    assert float(metrics.critic_loss) == pytest.approx(float(td), rel=1e-6)
    assert float(metrics.conservative_term) == pytest.approx(float(term), rel=1e-5)


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_critic_step_adds_the_weighted_conservative_term(fraction):
    """With weight w the critic's gradient is that of TD + w * term, the term taken over the minibatch's first k
    states (calibrated_fraction); w = 0 leaves the plain critic's step."""
    agent, params = agent_and_params(calibrated_conservatism=2.0, calibrated_fraction=fraction)
    state = agent.init_state(params)
    b, key = batch(4), jax.random.PRNGKey(11)
    k = round(fraction * B)
    stepped, _ = sac.critic_step(agent.nets, agent.cfg, agent.opts, state, b, key)
    key_td, k_pi = jax.random.split(key)
    first = jax.tree_util.tree_map(lambda x: x[:k], b.obs)
    a_pi = sac.actor_dist(agent.nets, params, first).sample(k_pi)
    reference = sac.value(agent.nets, params, first)
    target = sac.td_target(agent.nets, agent.cfg, params, b, key_td)

    def by_hand(ce):
        at = params.replace(critic=ce[0], encoder=ce[1])
        q_data = sac.critic_values(agent.nets, at, b.obs, b.actions)
        q_pi = sac.critic_values(agent.nets, at, first, a_pi)
        return (jnp.mean((q_data - target[None]) ** 2)
                + 2.0 * sac.calibrated_conservative_term(q_pi, q_data[:, :k], reference))

    grads = jax.grad(by_hand)((params.critic, params.encoder))
    updates, _ = agent.opts.critic.update(grads, state.critic_opt, (params.critic, params.encoder))
    expected_critic, _ = optax.apply_updates((params.critic, params.encoder), updates)
    for x, y in zip(jax.tree_util.tree_leaves(stepped.params.critic), jax.tree_util.tree_leaves(expected_critic)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_conservative_weight_decays_linearly_with_the_update_count():
    """w = 2 over 1000 updates: 2 at update 0, 1 at 500, 0 from 1000 on; without a decay it stays 2."""
    decaying = from_dict(AgentConfig, {"calibrated_conservatism": 2.0, "calibrated_conservatism_decay_updates": 1000})
    weights = [float(sac.conservatism_weight(decaying, jnp.asarray(s, jnp.int32))) for s in (0, 250, 500, 1000, 5000)]
    assert weights == pytest.approx([2.0, 1.5, 1.0, 0.0, 0.0])
    constant = from_dict(AgentConfig, {"calibrated_conservatism": 2.0})
    assert float(sac.conservatism_weight(constant, jnp.asarray(10**6, jnp.int32))) == 2.0
    to_one = from_dict(AgentConfig, {"calibrated_conservatism": 2.0, "calibrated_conservatism_decay_updates": 8000,
                                     "calibrated_conservatism_final": 1.0})
    weights = [float(sac.conservatism_weight(to_one, jnp.asarray(s, jnp.int32))) for s in (0, 2000, 4000, 8000, 10**6)]
    assert weights == pytest.approx([2.0, 1.75, 1.5, 1.0, 1.0])


def test_critic_step_reads_the_decayed_weight_from_the_state_step():
    """Once the weight has decayed to 0 the critic step is the plain TD step (same key use, term computed but
    weighted 0); halfway it equals a constant weight of half the size."""
    decaying, params = agent_and_params(calibrated_conservatism=2.0, calibrated_conservatism_decay_updates=100)
    half, _ = agent_and_params(calibrated_conservatism=1.0)
    b, key = batch(4), jax.random.PRNGKey(11)
    state = decaying.init_state(params)
    halfway, _ = sac.critic_step(decaying.nets, decaying.cfg, decaying.opts, state.replace(step=jnp.asarray(50)),
                                 b, key)
    by_half, _ = sac.critic_step(half.nets, half.cfg, half.opts, half.init_state(params), b, key)
    done, metrics = sac.critic_step(decaying.nets, decaying.cfg, decaying.opts, state.replace(step=jnp.asarray(100)),
                                    b, key)
    # the plain TD gradient, from the same TD key the calibrated step uses
    key_td, _ = jax.random.split(key)
    target = sac.td_target(decaying.nets, decaying.cfg, params, b, key_td)
    td_grads = jax.grad(lambda ce: sac.critic_loss(decaying.nets, decaying.cfg, params, ce, b, target)[0])(
        (params.critic, params.encoder))
    updates, _ = decaying.opts.critic.update(td_grads, state.critic_opt, (params.critic, params.encoder))
    expected_critic, _ = optax.apply_updates((params.critic, params.encoder), updates)
    for x, y in zip(jax.tree_util.tree_leaves(done.params.critic), jax.tree_util.tree_leaves(expected_critic)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    assert float(metrics.conservative_term) != 0.0  # still reported, unweighted
    for x, y in zip(jax.tree_util.tree_leaves(halfway.params.critic), jax.tree_util.tree_leaves(by_half.params.critic)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_calibrated_conservatism_defaults_to_one_for_the_q2rl_family_only():
    """Left empty, the weight is 1 where Q-Estimation fits V_phi and 0 elsewhere; an explicit 0 (the plain
    critic) stays 0; the resolved value is what a dumped config carries, so a resumed run keeps its weight."""
    for algo in ("q2rl", "q2rl_no_qinit", "q2rl_no_gate"):
        assert from_dict(AgentConfig, {"algo": algo}).calibrated_conservatism == 1.0
    for algo in ("ibrl", "ibrl_soft", "sac_bc", "rlpd", "bc"):
        assert from_dict(AgentConfig, {"algo": algo}).calibrated_conservatism == 0.0
    assert from_dict(AgentConfig, {"calibrated_conservatism": 0.0}).calibrated_conservatism == 0.0
    dumped = to_dict(from_dict(AgentConfig, {}))
    assert dumped["calibrated_conservatism"] == 1.0
    assert from_dict(AgentConfig, dumped) == from_dict(AgentConfig, {})


@pytest.mark.parametrize("algo, w", [("q2rl", 0.3), ("sac_bc", 0.3), ("ibrl", 0.0), ("rlpd", 0.0)])
def test_a_dumped_config_carries_the_bc_weight_it_ran_with(algo, w):
    """Left empty, bc_weight is resolved when the config is built, so config.yaml names the weight the run used
    and a resume reads that value back, not whatever the default is by then."""
    dumped = to_dict(from_dict(AgentConfig, {"algo": algo}))
    assert dumped["bc_weight"] == w
    assert from_dict(AgentConfig, dumped) == from_dict(AgentConfig, {"algo": algo})


def test_a_bc_weight_that_rlpd_would_ignore_is_a_config_error():
    with pytest.raises(ConfigError, match="rlpd's actor has no BC term"):
        from_dict(AgentConfig, {"algo": "rlpd", "bc_weight": 0.3})
    assert from_dict(AgentConfig, {"algo": "rlpd", "bc_weight": 0.0}).bc_weight == 0.0  # an explicit 0 is what runs


def test_calibrated_conservatism_is_validated():
    with pytest.raises(ConfigError, match="calibrated_conservatism"):
        from_dict(AgentConfig, {"calibrated_conservatism": -1.0})
    with pytest.raises(ConfigError, match="must be >= 0"):
        from_dict(AgentConfig, {"calibrated_conservatism": 1.0, "calibrated_conservatism_decay_updates": -5})
    with pytest.raises(ConfigError, match="no weight to decay"):
        from_dict(AgentConfig, {"calibrated_conservatism": 0.0, "calibrated_conservatism_decay_updates": 5000})
    with pytest.raises(ConfigError, match="never decays"):
        from_dict(AgentConfig, {"calibrated_conservatism": 2.0, "calibrated_conservatism_final": 1.0})
    with pytest.raises(ConfigError, match=r"must be in \[0, calibrated_conservatism=1.0\]"):
        from_dict(AgentConfig, {"calibrated_conservatism": 1.0, "calibrated_conservatism_decay_updates": 100,
                                "calibrated_conservatism_final": 2.0})
    with pytest.raises(ConfigError, match="V_phi from Q-Estimation"):
        from_dict(AgentConfig, {"algo": "sac_bc", "calibrated_conservatism": 1.0})


def expected_actor_loss(agent, params, b, key, w):
    dist = sac.actor_dist(agent.nets, params, b.obs)
    a, logp = dist.sample_and_log_prob(key)
    q_heads = np.asarray(sac.critic_values(agent.nets, params, b.obs, a))
    nll = -np.asarray(dist.log_prob(b.a_bc)).mean()
    expected = (1 - w) * -q_heads.mean(axis=0).mean() + w * nll
    if agent.cfg.entropy:
        expected += agent.cfg.init_temperature * np.asarray(logp).mean()
    return expected, nll, q_heads.std(axis=0).mean()


@pytest.mark.parametrize("entropy", [False, True])
def test_actor_loss_by_numpy(entropy):
    agent, params = agent_and_params(entropy=entropy, bc_weight=0.3)
    b = batch(2)
    key = jax.random.PRNGKey(5)
    loss, m = sac.actor_loss(agent.nets, agent.cfg, params, params.actor, b, key)
    expected, nll, head_std = expected_actor_loss(agent, params, b, key, 0.3)
    assert float(loss) == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert float(m.bc_nll) == pytest.approx(nll, rel=1e-5)
    assert float(m.q_head_std) == pytest.approx(head_std, rel=1e-4)  # disagreement at pi_RL's actions


@pytest.mark.parametrize("over, w", [({"algo": "q2rl"}, 0.3), ({"algo": "sac_bc"}, 0.3), ({"algo": "ibrl"}, 0.0),
                                     ({"algo": "ibrl_soft"}, 0.0), ({"algo": "ibrl", "bc_weight": 0.3}, 0.3),
                                     ({"algo": "q2rl", "bc_weight": 0.0}, 0.0)])
def test_actor_bc_weight_defaults_by_algorithm(over, w):
    """IBRL's actor maximises Q alone, as published; the Q2RL family and sac_bc keep the 0.3 BC term; an
    explicit bc_weight wins."""
    agent, params = agent_and_params(**over)
    assert agent.cfg.bc_weight == w
    b = batch(2)
    key = jax.random.PRNGKey(5)
    loss, _ = sac.actor_loss(agent.nets, agent.cfg, params, params.actor, b, key)
    assert float(loss) == pytest.approx(expected_actor_loss(agent, params, b, key, w)[0], rel=1e-4, abs=1e-5)


def test_actor_step_reads_the_decayed_bc_weight_from_the_state_step():
    """bc_weight 0.3 falling to 0.1 over 100 updates: the actor step at update 50 equals a constant 0.2, and from
    update 100 on a constant 0.1; at update 0 it is the constant 0.3 step."""
    decaying, params = agent_and_params(bc_weight=0.3, bc_weight_decay_updates=100, bc_weight_final=0.1)
    b, key = batch(6), jax.random.PRNGKey(3)
    state = decaying.init_state(params)
    for step, w in ((0, 0.3), (50, 0.2), (100, 0.1), (10**5, 0.1)):
        assert float(sac.bc_weight_at(decaying.cfg, jnp.asarray(step))) == pytest.approx(w)
        constant, _ = agent_and_params(bc_weight=w)
        got, _ = sac.actor_step(decaying.nets, decaying.cfg, decaying.opts, state.replace(step=jnp.asarray(step)),
                                b, key)
        want, _ = sac.actor_step(constant.nets, constant.cfg, constant.opts, constant.init_state(params), b, key)
        for x, y in zip(jax.tree_util.tree_leaves(got.params.actor), jax.tree_util.tree_leaves(want.params.actor)):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    # and the step does move the actor by a w-dependent amount (the comparison above is not vacuous)
    far, _ = sac.actor_step(decaying.nets, decaying.cfg, decaying.opts, state, b, key)
    near, _ = sac.actor_step(decaying.nets, decaying.cfg, decaying.opts, state.replace(step=jnp.asarray(100)), b, key)
    assert any(not np.allclose(x, y) for x, y in zip(jax.tree_util.tree_leaves(far.params.actor),
                                                     jax.tree_util.tree_leaves(near.params.actor)))


def test_bc_weight_decay_is_validated():
    with pytest.raises(ConfigError, match="bc_weight_decay_updates: -1 must be >= 0"):
        from_dict(AgentConfig, {"bc_weight_decay_updates": -1})
    with pytest.raises(ConfigError, match="ibrl's bc_weight is 0, so there is no weight to decay"):
        from_dict(AgentConfig, {"algo": "ibrl", "bc_weight_decay_updates": 1000})
    with pytest.raises(ConfigError, match=r"bc_weight_final: 0.5 must be in \[0, bc_weight=0.3\]"):
        from_dict(AgentConfig, {"bc_weight_decay_updates": 1000, "bc_weight_final": 0.5})
    with pytest.raises(ConfigError, match="never decays"):
        from_dict(AgentConfig, {"bc_weight_final": 0.1})
    cfg = from_dict(AgentConfig, {"bc_weight_decay_updates": 8000, "bc_weight_final": 0.1})
    assert cfg.bc_weight == 0.3 and make_agent(cfg).cfg.bc_weight == 0.3  # decays from the default, resolved at build


def test_temperature_loss_direction():
    # entropy below target -> gradient on log alpha negative -> temperature grows under descent
    g = jax.grad(sac.temperature_loss)(jnp.log(0.1), jnp.asarray(-5.0), -3.5)
    assert float(g) == pytest.approx(0.1 * (-5.0 + 3.5), rel=1e-5)


def test_polyak_by_hand():
    out = sac.polyak({"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, 6.0])}, 0.25)
    np.testing.assert_allclose(out["w"], [1.5, 3.0])


def leaves_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_each_optimizer_touches_only_its_subtree():
    agent, params = agent_and_params(entropy=True)
    state = agent.init_state(params)
    b = batch(3)
    after_critic, _ = sac.critic_step(agent.nets, agent.cfg, agent.opts, state, b, jax.random.PRNGKey(0))
    p0, p1 = state.params, after_critic.params
    assert leaves_equal(p0.actor, p1.actor) and leaves_equal(p0.value, p1.value) and leaves_equal(p0.bc, p1.bc)
    assert not leaves_equal(p0.critic, p1.critic) and not leaves_equal(p0.critic_target, p1.critic_target)
    # target moved by exactly tau toward the new critic
    w0 = jax.tree_util.tree_leaves(p0.critic_target)[-1]
    w1 = jax.tree_util.tree_leaves(p1.critic)[-1]
    np.testing.assert_allclose(jax.tree_util.tree_leaves(p1.critic_target)[-1], 0.995 * w0 + 0.005 * w1, rtol=1e-6)
    after_actor, _ = sac.actor_step(agent.nets, agent.cfg, agent.opts, after_critic, b, jax.random.PRNGKey(1))
    p2 = after_actor.params
    assert leaves_equal(p1.critic, p2.critic) and leaves_equal(p1.value, p2.value)
    assert not leaves_equal(p1.actor, p2.actor)
    assert float(p2.log_temperature) != float(p1.log_temperature)


def test_utd_scan_equals_sequential_updates_and_compiles_once():
    agent, params = agent_and_params()
    state = agent.init_state(params)
    batches = [batch(10 + i) for i in range(3)]
    key = jax.random.PRNGKey(9)
    scanned, metrics = agent.update(state, stack_batches(batches), key)
    # the same steps one by one, with the keys update_step derives
    k_critic, k_actor = jax.random.split(key)
    seq = state
    for b, k in zip(batches, jax.random.split(k_critic, 3)):
        seq, _ = sac.critic_step(agent.nets, agent.cfg, agent.opts, seq, b, k)
    seq, _ = sac.actor_step(agent.nets, agent.cfg, agent.opts, seq, batches[-1], k_actor)
    for x, y in zip(jax.tree_util.tree_leaves(scanned.params), jax.tree_util.tree_leaves(seq.params)):
        np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5)
    assert int(scanned.step) == 1
    again, _ = agent.update(scanned, stack_batches(batches), key)
    assert agent.update._cache_size() == 1  # no second compile (no weakly typed leaves in the state)
    assert np.isfinite(float(metrics.critic.critic_loss))


def test_the_donating_update_equals_the_pure_one_reuses_the_replaced_buffers_and_keeps_the_frozen_ones():
    agent, cached = agent_and_params()
    # fresh params (the donation must not consume the cache's), whose targets are their networks' very arrays
    params = agent.init_params(jax.random.PRNGKey(1), {"state": np.zeros(STATE_DIM, np.float32)}, cached.bc)
    assert params.critic_target is params.critic
    batches, key = stack_batches([batch(30 + i) for i in range(3)]), jax.random.PRNGKey(5)
    pure, pure_metrics = agent.update(agent.init_state(params), batches, key)
    state = agent.init_state(params)
    donated, metrics = agent.update_donating(state, batches, key)
    for x, y in zip(jax.tree_util.tree_leaves(pure), jax.tree_util.tree_leaves(donated)):
        np.testing.assert_array_equal(x, y)
    assert float(metrics.critic.critic_loss) == float(pure_metrics.critic.critic_loss)
    # the replaced parts were written in place: the old state's buffers are gone ...
    assert all(x.is_deleted() for x in jax.tree_util.tree_leaves((state.params.critic, state.critic_opt, state.step)))
    # ... while the frozen params, which the gate and Q-Estimation share, are the same arrays, intact
    frozen = [getattr(state.params, name) for name in sac.FROZEN_PARAMS]
    assert jax.tree_util.tree_leaves(frozen) and not any(x.is_deleted() for x in jax.tree_util.tree_leaves(frozen))
    assert all(a is b for a, b in zip(jax.tree_util.tree_leaves(frozen), jax.tree_util.tree_leaves(
        [getattr(donated.params, name) for name in sac.FROZEN_PARAMS])))
    again, _ = agent.update_donating(donated, batches, key)
    assert int(again.step) == 2


@pytest.mark.parametrize("actor_utd", [3, 1])
def test_actor_utd_spreads_actor_steps_evenly_over_the_critic_steps(actor_utd):
    """actor_utd = utd: critic, actor, critic, actor, ... on the same minibatches, i.e. plain SAC repeated; the
    metrics are the means over the steps. actor_utd 1 is the default schedule of the test above."""
    agent, params = agent_and_params(utd=6, actor_utd=actor_utd)
    state = agent.init_state(params)
    batches = [batch(20 + i) for i in range(6)]
    key = jax.random.PRNGKey(4)
    scanned, metrics = agent.update(state, stack_batches(batches), key)
    k_critic, k_actor = jax.random.split(key)
    actor_keys = [k_actor] if actor_utd == 1 else list(jax.random.split(k_actor, actor_utd))
    seq, critic_losses, bc_nlls = state, [], []
    for i, (b, k) in enumerate(zip(batches, jax.random.split(k_critic, 6))):
        seq, m = sac.critic_step(agent.nets, agent.cfg, agent.opts, seq, b, k)
        critic_losses.append(float(m.critic_loss))
        if (i + 1) % (6 // actor_utd) == 0:  # after critic steps 2, 4, 6 (actor_utd 3) or 6 only (1)
            seq, m = sac.actor_step(agent.nets, agent.cfg, agent.opts, seq, b, actor_keys.pop(0))
            bc_nlls.append(float(m.bc_nll))
    assert not actor_keys and len(bc_nlls) == actor_utd
    for x, y in zip(jax.tree_util.tree_leaves(scanned.params), jax.tree_util.tree_leaves(seq.params)):
        np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5)
    assert float(metrics.critic.critic_loss) == pytest.approx(np.mean(critic_losses), rel=1e-4)
    assert float(metrics.actor.bc_nll) == pytest.approx(np.mean(bc_nlls), rel=1e-4)
    assert int(scanned.step) == 1  # one update call, whatever the schedule inside it (the decays count calls)


def test_actor_utd_that_does_not_divide_utd_is_a_config_error():
    for actor_utd, utd in ((2, 3), (0, 2), (4, 2)):
        with pytest.raises(ConfigError, match=f"actor_utd: {actor_utd} must divide utd={utd}"):
            from_dict(AgentConfig, {"utd": utd, "actor_utd": actor_utd})
    assert from_dict(AgentConfig, {"preset": "paper", "actor_utd": 4}).actor_utd == 4


@pytest.mark.slow
def test_image_encoder_is_trained_by_the_critic_only():
    """Shared encoder: the critic loss moves it; the actor reads it through stop_gradient."""
    cfg = from_dict(AgentConfig, {"hidden_dims": [8], "value_hidden_dims": [8], "ensemble_size": 2, "batch_size": 2,
                                  "utd": 1, "algo": "sac_bc", "image_feature_dim": 8, "image_encoder": "learned"})
    agent = make_agent(cfg, 7, camera_names=("wrist",))
    rng = np.random.default_rng(0)
    obs = lambda n: {"state": rng.normal(size=(n, STATE_DIM)).astype(np.float32),
                     "images": {"wrist": rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)}}
    net = make_policy_net(from_dict(PolicyConfig, {"hidden_dims": [8]}), 7)
    bc = BCPolicy(net, net.init(jax.random.PRNGKey(0), {"state": jnp.zeros((1, STATE_DIM))}),
                  ObsNormalizer.identity(STATE_DIM))
    one = jax.tree_util.tree_map(lambda x: x[0], obs(1))
    params = agent.init_params(jax.random.PRNGKey(1), one, bc)
    b = Batch(obs=obs(2), actions=np.zeros((2, 7), np.float32), rewards=np.ones(2, np.float32),
              discounts=np.full(2, 0.9, np.float32), next_obs=obs(2), a_bc=np.zeros((2, 7), np.float32),
              is_demo=np.zeros(2, bool))
    actor_grad = jax.grad(lambda enc: sac.actor_loss(agent.nets, agent.cfg, params.replace(encoder=enc),
                                                     params.actor, b, jax.random.PRNGKey(2))[0])(params.encoder)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree_util.tree_leaves(actor_grad))
    target = jnp.zeros(2)
    critic_grad = jax.grad(lambda enc: sac.critic_loss(agent.nets, agent.cfg, params, (params.critic, enc), b, target)[0])(
        params.encoder)
    assert any(float(jnp.abs(g).max()) > 0.0 for g in jax.tree_util.tree_leaves(critic_grad))
    action, info = agent.gate(params, one, jax.random.PRNGKey(3))
    assert action.shape == (7,) and bool(info.use_rl)


def test_actor_nll_scores_box_edge_bc_actions_at_0_99():
    """A BC action clipped to the box edge (a saturated gripper) is scored at +-0.99, not at atanh(1 - 1e-6)."""
    agent, params = agent_and_params(bc_weight=0.3)
    b = batch(2)
    a_bc = np.array(b.a_bc)
    a_bc[:, 6] = np.where(np.arange(B) % 2 == 0, 1.0, -1.0)
    b = b._replace(a_bc=a_bc)
    _, m = sac.actor_loss(agent.nets, agent.cfg, params, params.actor, b, jax.random.PRNGKey(5))
    dist = sac.actor_dist(agent.nets, params, b.obs)
    mean, log_std = np.asarray(dist.mean, np.float64), np.asarray(dist.log_std, np.float64)
    scored = np.clip(a_bc.astype(np.float64), -0.99, 0.99)
    u = np.arctanh(scored)
    log_prob = np.sum(-0.5 * ((u - mean) / np.exp(log_std)) ** 2 - log_std - 0.5 * np.log(2 * np.pi)
                      - np.log(1.0 - scored ** 2), axis=-1)
    assert float(m.bc_nll) == pytest.approx(-log_prob.mean(), rel=1e-4)
    assert float(m.bc_nll) < -float(np.asarray(dist.log_prob(jnp.asarray(a_bc))).mean())  # the edge costs far more
