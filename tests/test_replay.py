"""Replay: frames stored once, n-step returns by hand, masks, episode boundaries under interleaving and wrap."""

import numpy as np
import pytest

from q2rl.core.replay import (SOURCE_CODES, Episode, ReplayBuffer, RewardShaping, load_episode, sample_mixed,
                              save_episode)
from q2rl.interfaces import Transition


def obs_of(episode: int, step: int, image: bool = False) -> dict:
    """State encodes (episode, step) so a sampled frame says where it came from."""
    obs = {"state": np.array([episode, step, 0.5], np.float32)}
    if image:
        obs["images"] = {"wrist": np.full((4, 4, 3), (episode * 10 + step) % 256, np.uint8)}
    return obs


def transition(actor: str, episode: int, step: int, length: int, success: bool, image: bool = False,
               reward: float | None = None) -> Transition:
    last = step == length - 1
    return Transition(
        actor_id=actor, episode_id=episode, step=step, seq=step, obs=obs_of(episode, step, image),
        action=np.full(7, step / 10, np.float32), reward=float(last and success) if reward is None else reward,
        terminated=last and success, truncated=last and not success, next_obs=obs_of(episode, step + 1, image),
        a_bc=np.zeros(7, np.float32), a_rl=np.ones(7, np.float32), q_bc=1.0, q_rl=2.0, source="bc",
        param_version=3)


def fill(buffer: ReplayBuffer, episodes: list[tuple[str, int, int, bool]], image: bool = False) -> None:
    """Interleave the steps of several episodes (as several actors would deliver them)."""
    longest = max(length for _, _, length, _ in episodes)
    for step in range(longest):
        for actor, ep, length, success in episodes:
            if step < length:
                buffer.add(transition(actor, ep, step, length, success, image))


def test_images_stored_once_per_frame_and_next_obs_by_reference():
    buffer = ReplayBuffer(capacity=100)
    fill(buffer, [("a", 0, 5, True)], image=True)
    assert buffer.transitions_written == 5
    assert buffer.frames_written == 6  # L + 1 frames for L steps, not 2 L
    batch = buffer.gather(np.arange(5))
    # next_obs of step t is the obs of step t+1: the same stored frame
    np.testing.assert_array_equal(batch.next_obs["images"]["wrist"][:-1], batch.obs["images"]["wrist"][1:])
    np.testing.assert_array_equal(batch.obs["state"][:, 1], np.arange(5))


def test_out_of_order_step_is_a_clear_error():
    buffer = ReplayBuffer(capacity=10)
    buffer.add(transition("a", 0, 0, 5, True))
    with pytest.raises(ValueError, match="previous next_obs"):
        buffer.add(transition("a", 0, 2, 5, True))


def test_n_step_returns_masks_by_hand():
    gamma, scale, bias = 0.9, 5.0, -1.0
    shaping = RewardShaping(scale, bias, gamma)
    buffer = ReplayBuffer(capacity=100)
    fill(buffer, [("a", 0, 3, True), ("b", 1, 3, False)])  # interleaved: ids a0 b0 a1 b1 a2 b2
    # one-step: success's last step terminates (discount 0); failure's last step is truncated (bootstraps)
    one = buffer.gather(np.array([4, 5]), shaping, n_step=1)
    np.testing.assert_allclose(one.rewards, [scale * 1 + bias, bias])
    np.testing.assert_allclose(one.discounts, [0.0, gamma])
    # three-step from each episode's first step: r'_0 + g r'_1 + g^2 r'_2
    three = buffer.gather(np.array([0, 1]), shaping, n_step=3)
    np.testing.assert_allclose(three.rewards, [-1 - 0.9 + 0.81 * 4, -1 - 0.9 - 0.81], rtol=1e-6)
    np.testing.assert_allclose(three.discounts, [0.0, gamma**3], rtol=1e-6)
    # the bootstrap frame is the episode's own last frame (step 3), never the other actor's
    np.testing.assert_array_equal(three.next_obs["state"][:, :2], [[0, 3], [1, 3]])
    # n larger than what is left: stops at the episode end
    tail = buffer.gather(np.array([3]), shaping, n_step=5)  # b1 -> b2 (truncated)
    np.testing.assert_allclose(tail.rewards, [-1 - 0.9], rtol=1e-6)
    np.testing.assert_allclose(tail.discounts, [gamma**2], rtol=1e-6)


def test_sampling_never_crosses_an_episode_boundary_with_interleaving_and_wrap():
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer(capacity=37, frame_capacity=45)  # small: wraps many times
    episode = 0
    for _ in range(20):
        lengths = rng.integers(1, 9, size=3)
        fill(buffer, [(f"actor{i}", episode + i, int(n), bool(rng.random() < 0.5)) for i, n in enumerate(lengths)])
        episode += 3
        batch = buffer.sample(rng, 64, RewardShaping(), n_step=3)
        s, ns = batch.obs["state"], batch.next_obs["state"]
        assert np.all(s[:, 0] == ns[:, 0]), "next_obs from another episode"
        steps_ahead = ns[:, 1] - s[:, 1]
        assert np.all((steps_ahead >= 1) & (steps_ahead <= 3))
    assert len(buffer) <= 37
    assert buffer.transitions_written > 37  # it did wrap


def test_overwritten_frames_are_never_sampled():
    buffer = ReplayBuffer(capacity=10, frame_capacity=11)
    fill(buffer, [("a", 0, 10, True)])  # 10 transitions, 11 frames: full
    fill(buffer, [("a", 1, 1, True)])  # 1 transition, 2 frames: overwrites frame 0 and 1 and transition 0
    lo = buffer.oldest_valid()
    assert lo == 2  # transition 1's obs frame (frame 1) is gone too
    batch = buffer.gather(np.arange(lo, buffer.transitions_written))
    assert np.all(batch.next_obs["state"][:, 1] == batch.obs["state"][:, 1] + 1)


def test_episode_export_import_round_trip(tmp_path):
    buffer = ReplayBuffer(capacity=50)
    fill(buffer, [("a", 7, 4, True), ("b", 8, 3, False)], image=True)
    ep = buffer.export_episode("a", 7)
    assert len(ep) == 4 and ep.success and ep.obs["images"]["wrist"].shape == (5, 4, 4, 3)
    np.testing.assert_array_equal(ep.obs["state"][:, 1], np.arange(5))
    np.testing.assert_array_equal(ep.param_version, 3)
    assert list(ep.source) == [SOURCE_CODES["bc"]] * 4
    path = tmp_path / "ep.npz"
    save_episode(path, ep)
    back = load_episode(path)
    assert back.actor_id == "a" and back.episode_id == 7
    np.testing.assert_array_equal(back.obs["images"]["wrist"], ep.obs["images"]["wrist"])
    other = ReplayBuffer(capacity=50)
    other.add_episode(back)
    assert other.frames_written == 5 and other.transitions_written == 4
    np.testing.assert_array_equal(other.export_episode("a", 7).actions, ep.actions)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="unreadable"):
        load_episode(path)


def test_add_episode_rejects_inconsistent_shapes():
    ep = Episode(obs={"state": np.zeros((3, 2), np.float32)}, actions=np.zeros((3, 7), np.float32),
                 rewards=np.zeros(3), terminated=np.zeros(3, bool), truncated=np.zeros(3, bool),
                 a_bc=np.zeros((3, 7)), a_rl=np.zeros((3, 7)), q_bc=np.zeros(3), q_rl=np.zeros(3),
                 source=np.zeros(3, np.int8), param_version=np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="expected 4"):
        ReplayBuffer(10).add_episode(ep)


def test_symmetric_sampling_half_from_demos():
    online, demos = ReplayBuffer(100), ReplayBuffer(100)
    fill(online, [("a", 0, 10, True)])
    fill(demos, [("demo", 1, 10, True)])
    batch = sample_mixed(np.random.default_rng(0), online, demos, 32, RewardShaping(), 1, 0.5)
    assert batch.is_demo.sum() == 16
    np.testing.assert_array_equal(batch.obs["state"][batch.is_demo, 0], 1)
    np.testing.assert_array_equal(batch.obs["state"][~batch.is_demo, 0], 0)


def test_demo_buffer_keeps_the_successful_demos_with_their_transitions():
    from q2rl.core.replay import demo_buffer
    from q2rl.demos.hdf5 import Demo

    def demo(seed: int, length: int, success: bool) -> Demo:
        states = np.stack([np.array([seed, t, 0.0], np.float32) for t in range(length)])
        next_states = states + np.array([0, 1, 0], np.float32)  # the frame after the last action is (seed, length)
        rewards = np.r_[np.zeros(length - 1), float(success)].astype(np.float32)
        return Demo(states=states, actions=np.full((length, 7), 0.5, np.float32), rewards=rewards,
                    dones=rewards.astype(bool), next_states=next_states, success=success, seed=seed)

    buffer = demo_buffer([demo(0, 4, True), demo(1, 6, False), demo(2, 3, True)], action_dim=7)
    assert len(buffer) == 4 + 3  # the failed recording is left out
    batch = buffer.sample(np.random.default_rng(0), 200, RewardShaping(5.0, -1.0, 0.99))
    assert set(batch.obs["state"][:, 0]) == {0.0, 2.0}
    # next_obs is the recorded next state, the last step of each demo included; success terminates (discount 0)
    np.testing.assert_array_equal(batch.next_obs["state"][:, 1], batch.obs["state"][:, 1] + 1)
    last = batch.next_obs["state"][:, 1] == np.where(batch.obs["state"][:, 0] == 0, 4, 3)
    assert last.any() and (~last).any()
    np.testing.assert_allclose(batch.discounts[last], 0.0)
    np.testing.assert_allclose(batch.rewards[last], 4.0)  # 5 * 1 - 1
    np.testing.assert_allclose(batch.discounts[~last], 0.99)
    np.testing.assert_array_equal(batch.a_bc, batch.actions)  # the demonstrated action is the BC target
    assert demo_buffer([demo(1, 6, False)], action_dim=7) is None
