"""Pixels through the frozen encoder (docs/design.md#pixels-and-the-frozen-encoder): pi_BC's conv features stand in
for the images everywhere the agent reads them, computed once per frame, and a pixel run goes through the real
learner and actor."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from process_util import tiny_agent, tiny_run_config

from q2rl.config import ConfigError, from_dict, load_config
from q2rl.core.agent_config import AgentConfig
from q2rl.core.agents import make_agent
from q2rl.core.normalization import ObsNormalizer
from q2rl.core.policies import BCPolicy, PolicyConfig, make_policy_net
from q2rl.core.replay import ReplayBuffer
from q2rl.interfaces import Transition

CAMERAS = {"wrist": (24, 24, 3), "front": (24, 24, 3)}
STATE_DIM = 9


def pixel_bc(cameras=tuple(CAMERAS), seed: int = 0, state_dim: int = STATE_DIM) -> BCPolicy:
    net = make_policy_net(from_dict(PolicyConfig, {"hidden_dims": [16], "image_feature_dim": 8}), 7, cameras)
    obs = {"state": jnp.zeros((1, state_dim)), "images": {c: jnp.zeros((1, *CAMERAS[c]), jnp.uint8) for c in cameras}}
    stats = ObsNormalizer(np.linspace(-1, 1, state_dim).astype(np.float32), np.full(state_dim, 2.0, np.float32))
    return BCPolicy(net, net.init(jax.random.PRNGKey(seed), obs, ()), stats)


def frame(rng) -> dict:
    return {"state": rng.normal(size=STATE_DIM).astype(np.float32),
            "images": {c: rng.integers(0, 256, shape, dtype=np.uint8) for c, shape in CAMERAS.items()}}


def agent(**fields):
    cfg = from_dict(AgentConfig, {"hidden_dims": [16], "value_hidden_dims": [16], "ensemble_size": 2,
                                  "batch_size": 8, "utd": 1, "image_feature_dim": 8, **fields})
    return make_agent(cfg, 7, tuple(CAMERAS))


def test_frozen_features_are_pi_bc_encoders_own_output(rng):
    """The features of the frozen view are what pi_BC's encoder computes inside pi_BC, and pi_BC's action
    distribution is the same read from them as from the images."""
    bc = pixel_bc()
    obs = {"state": rng.normal(size=(5, STATE_DIM)).astype(np.float32),
           "images": {c: rng.integers(0, 256, (5, *s), dtype=np.uint8) for c, s in CAMERAS.items()}}
    _, state = bc.module.apply(bc.params, bc.normalizer.normalize(obs), (), capture_intermediates=True,
                               mutable=["intermediates"])
    inside = state["intermediates"]["encoder"]
    view = bc.frozen_view(obs)
    assert set(view) == {"state", "bc_features"}  # no images left to move or store
    for camera in CAMERAS:
        np.testing.assert_array_equal(np.asarray(view["bc_features"][camera]),
                                      np.asarray(inside[f"conv_{camera}"]["__call__"][0]))
    from_images, _ = bc.distribution(obs)
    from_view, _ = bc.distribution(view)
    np.testing.assert_allclose(from_view.mean, from_images.mean, atol=1e-6)
    np.testing.assert_allclose(from_view.log_std, from_images.log_std, atol=1e-6)
    assert bc.frozen_view(view) == view  # a frame already in the view is left as it is


def test_replay_stores_each_frame_once_as_features_and_the_gate_reads_images_or_features_alike(rng):
    bc, a = pixel_bc(), agent()
    params = a.init_params(jax.random.PRNGKey(1), frame(rng), bc)
    assert jax.tree_util.tree_leaves(params.encoder) == []  # no conv of the agent's own: nothing to train
    replay = ReplayBuffer(100, frame_view=lambda obs: a.frame_view(bc, obs))
    frames = [frame(rng) for _ in range(7)]
    for step in range(6):
        zeros = np.zeros(7, np.float32)
        replay.add(Transition(actor_id="a0", episode_id=0, step=step, seq=step, obs=frames[step], action=zeros,
                              reward=0.0, terminated=False, truncated=step == 5, next_obs=frames[step + 1],
                              a_bc=zeros, a_rl=zeros, q_bc=0.0, q_rl=0.0, source="bc", param_version=0))
    assert replay.frames_written == 7  # obs of a step is the next_obs of the step before: one frame each
    episode = replay.export_episode("a0", 0)
    assert set(episode.obs) == {"state", "bc_features"}
    for j, f in enumerate(frames):
        expected = bc.image_features(f)
        for camera in CAMERAS:
            np.testing.assert_allclose(episode.obs["bc_features"][camera][j], expected[camera], atol=1e-6)
    # a whole episode at once (demos, resume) maps its frames in chunks: the same features
    again = ReplayBuffer(100, frame_view=lambda obs: a.frame_view(bc, obs))
    raw = dict(episode.__dict__, obs={"state": np.stack([f["state"] for f in frames]),
                                      "images": {c: np.stack([f["images"][c] for f in frames]) for c in CAMERAS}})
    from q2rl.core.replay import Episode
    again.add_episode(Episode(**raw))
    np.testing.assert_allclose(again.export_episode("a0", 0).obs["bc_features"]["front"],
                               episode.obs["bc_features"]["front"], atol=1e-6)
    key = jax.random.PRNGKey(3)
    action, info = a.gate(params, frames[0], key)
    one = jax.tree_util.tree_map(lambda x: x[0], episode.obs)
    action_from_view, info_from_view = a.gate(params, one, key)
    np.testing.assert_allclose(action, action_from_view, atol=1e-5)
    np.testing.assert_allclose(info.q_bc, info_from_view.q_bc, atol=1e-4)


def test_frozen_encoder_needs_a_pi_bc_that_reads_the_cameras(rng):
    state_only = pixel_bc(cameras=())
    with pytest.raises(ConfigError, match=r"image_encoder: frozen_bc .* not \['front', 'wrist'\].*bc.train.cameras"):
        agent().init_params(jax.random.PRNGKey(0), frame(rng), state_only)
    agent(image_encoder="learned").init_params(jax.random.PRNGKey(0), frame(rng), state_only)  # its own convs


def test_image_encoder_defaults_and_errors():
    assert from_dict(AgentConfig, {}).image_encoder == "frozen_bc"
    assert from_dict(AgentConfig, {"algo": "rlpd"}).image_encoder == "learned"  # rlpd loads no pi_BC
    with pytest.raises(ConfigError, match="image_encoder: frozen_bc reads pi_BC's encoder, and rlpd loads no pi_BC"):
        from_dict(AgentConfig, {"algo": "rlpd", "image_encoder": "frozen_bc"}).validate()
    with pytest.raises(ConfigError, match="image_shift_pad: -1 must be >= 0"):
        from_dict(AgentConfig, {"image_shift_pad": -1}).validate()


def test_learned_encoder_trains_on_shifted_images(rng):
    """DrQ: with image_shift_pad the critic's encoder sees shifted images, so the same batch and key give another
    update than without the shift; the frozen encoder's update reads no pixels."""
    bc = pixel_bc()
    from q2rl.core.replay import Batch

    def batch(n=8):
        obs = [frame(rng) for _ in range(n)]
        stacked = {"state": np.stack([o["state"] for o in obs]),
                   "images": {c: np.stack([o["images"][c] for o in obs]) for c in CAMERAS}}
        return Batch(obs=stacked, actions=rng.uniform(-1, 1, (n, 7)).astype(np.float32),
                     rewards=np.ones(n, np.float32), discounts=np.full(n, 0.9, np.float32), next_obs=stacked,
                     a_bc=np.zeros((n, 7), np.float32), is_demo=np.zeros(n, bool))
    b = jax.tree_util.tree_map(lambda x: x[None], batch())
    losses = {}
    for pad in (0, 4):
        a = agent(image_encoder="learned", image_shift_pad=pad, algo="sac_bc")
        state = a.init_state(a.init_params(jax.random.PRNGKey(0), frame(rng), bc))
        _, metrics = a.update(state, b, jax.random.PRNGKey(5))
        losses[pad] = float(metrics.critic.critic_loss)
    assert np.isfinite(losses[4]) and losses[4] != losses[0]


@pytest.mark.slow
def test_a_pixel_run_learns_through_the_frozen_encoder_in_the_real_learner_and_actor(tmp_path):
    """pi_BC trained on two cameras' images; the same Learner and Actor as `q2rl session` (in one process): the
    actor sends images, replay holds pi_BC's features of them; Q-Estimation and online updates run on those.
    (Images over gRPC into the episode store, bit-exact: tests/test_transport.py.)"""
    from q2rl.core.checkpoint import load_bc_policy
    from q2rl.learner.bc_source import ensure_bc_policy
    from q2rl.local import LocalRun, LocalSchedule
    from q2rl.run_config import RunConfig

    cameras = {"cameras": ["wrist", "front"], "image_size": 24, "privileged_state": False}
    config = tiny_run_config(tmp_path, env={"sim": cameras},
                             bc={"train": {"cameras": ["wrist", "front"], "batch_size": 16}},
                             agent=tiny_agent(), actor={"eval_every_episodes": 0})
    cfg = load_config(RunConfig, config)
    assert cfg.agent.image_encoder == "frozen_bc"
    bc = load_bc_policy(ensure_bc_policy(cfg, progress=False))
    assert bc.camera_names == ("wrist", "front")
    run = LocalRun(cfg, bc, tmp_path / "run", log=lambda s: None)
    sent = []  # what the actor sent: images, as over the wire
    ingest = run.learner.ingest_transition
    run.link._on_transition = lambda t: (sent.append(t), ingest(t))
    result = run.run(LocalSchedule(online_steps=40, eval_every=0))
    learner = run.learner
    assert result.q_estimation is not None and learner.book.updates > 0
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(result.params.critic))
    assert sorted(learner.replay._frames) == ["bc_features/front", "bc_features/wrist", "state"]
    assert sent[0].obs["images"]["front"].shape == (24, 24, 3)
    first = [t for t in sent if t.episode_id == 0]
    in_replay = learner.replay.export_episode("actor-0", 0)
    images = {c: np.stack([t.obs["images"][c] for t in first]) for c in ("wrist", "front")}
    expected = bc.image_features({"state": np.stack([t.obs["state"] for t in first]), "images": images})
    for camera in ("wrist", "front"):
        np.testing.assert_allclose(in_replay.obs["bc_features"][camera][:-1], expected[camera], atol=1e-5)


@pytest.mark.parametrize("spoil, message", [
    (lambda o: o["images"].pop("front"), r"camera 'front' is missing \(it gives \['wrist'\]\); check that camera's"),
    (lambda o: o["images"].update(front=np.zeros((32, 24, 3), np.uint8)),
     r"camera 'front' gave a uint8 image of shape \(32, 24, 3\); the run reads uint8 24x24x3 RGB"),
    (lambda o: o["images"].update(wrist=np.zeros((24, 24, 3), np.float32)),
     r"camera 'wrist' gave a float32 image of shape \(24, 24, 3\); the run reads uint8 24x24x3"),
    (lambda o: o["images"].update(wrist=np.zeros((24, 24), np.uint8)), r"camera 'wrist' gave a uint8 image of shape"),
    (lambda o: o.update(state=np.zeros(STATE_DIM + 1, np.float32)), r"state has shape \(10,\), the run reads \[9\]"),
    (lambda o: o["state"].__setitem__(3, np.nan), r"state holds non-finite values at indices \[3\]"),
])
def test_an_observation_that_breaks_the_contract_is_named_before_any_network_reads_it(rng, spoil, message):
    from q2rl.interfaces import ObservationError, policy_obs

    obs = frame(rng)
    assert policy_obs(obs, CAMERAS, STATE_DIM)["images"].keys() == CAMERAS.keys()
    spoil(obs)
    with pytest.raises(ObservationError, match=message):
        policy_obs(obs, CAMERAS, STATE_DIM)


@pytest.mark.slow
def test_the_actor_stops_with_the_cameras_name_when_a_camera_stops_delivering(tmp_path):
    """The real Actor over the real sim env with two cameras; the front camera's stream dies after 3 steps (the
    hardware seam: a wrapper in place of a camera that unplugs)."""
    import threading

    from q2rl.actor.actor import Actor
    from q2rl.interfaces import ObservationError
    from q2rl.robot.envs import make_env

    cameras = {"cameras": ["wrist", "front"], "image_size": 24, "privileged_state": False}
    from q2rl.run_config import RunConfig

    cfg = load_config(RunConfig, tiny_run_config(tmp_path, env={"sim": cameras}, agent=tiny_agent()))
    env = make_env(cfg.env)
    step = env.step

    def unplugged_after_three(action, calls=[0]):
        obs, *rest = step(action)
        calls[0] += 1
        if calls[0] > 3:
            obs = {**obs, "images": {"wrist": obs["images"]["wrist"]}}
        return (obs, *rest)

    env.step = unplugged_after_three
    bc = pixel_bc(state_dim=env.observation_space["state"].shape[0])
    actor = Actor(cfg, env, bc, sink=None, source=None)
    with pytest.raises(ObservationError, match="camera 'front' is missing"):
        actor.run_episode(threading.Event())
    env.close()
