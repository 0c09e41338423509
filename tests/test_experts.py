"""Scripted experts: clean experts solve their tasks; noise makes them imperfect, reproducibly."""

from __future__ import annotations

import numpy as np
import pytest

from q2rl.robot.sim.experts import expert_observation, make_expert, nearest_square_yaw


def run_episodes(env, expert, seeds):
    successes, lengths = [], []
    for seed in seeds:
        env.reset(seed=seed)
        expert.reset()
        while True:
            action = expert.act(expert_observation(env))
            assert action.dtype == np.float32 and action.shape == (7,) and np.all(np.abs(action) <= 1)
            _, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                break
        successes.append(info["success"])
        lengths.append(env.elapsed_steps)
    return np.array(successes), np.array(lengths)


@pytest.mark.parametrize("task, episodes", [("pick_cube", 8), ("peg_insert", 8), ("pick_cube_shifted", 4)])
def test_clean_expert_succeeds(sim_env_factory, task, episodes):
    env = sim_env_factory(task=task)
    successes, lengths = run_episodes(env, make_expert(task, 0.0, np.random.default_rng(0)), range(episodes))
    assert successes.mean() >= 0.9
    assert lengths.max() < env.max_episode_steps  # with time to spare for noisy demonstrations


def test_clean_kitting_expert_places_both_cubes(sim_env_factory):
    env = sim_env_factory(task="kitting")
    successes, _ = run_episodes(env, make_expert("kitting", 0.0, np.random.default_rng(0)), range(2))
    assert successes.all()


def test_expert_reads_privileged_state_even_when_the_policy_sees_images_only(sim_env_factory):
    env = sim_env_factory(privileged_state=False)
    obs, _ = env.reset(seed=0)
    expert = make_expert("pick_cube", 0.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="privileged_state"):
        expert.act(obs)
    assert expert.act(expert_observation(env)).shape == (7,)


def test_noise_makes_demos_slower_and_reproducible(sim_env_factory):
    env = sim_env_factory(task="pick_cube")
    clean_success, clean_len = run_episodes(env, make_expert("pick_cube", 0.0, np.random.default_rng(0)), range(6))
    noisy = [run_episodes(env, make_expert("pick_cube", 0.3, np.random.default_rng(1)), range(6)) for _ in range(2)]
    np.testing.assert_array_equal(noisy[0][1], noisy[1][1])  # same rng seed: same demos
    assert noisy[0][1].mean() > clean_len.mean() + 2  # hesitation, detours, slower moves
    assert noisy[0][0].mean() >= 0.5
    with pytest.raises(ValueError, match="noise"):
        make_expert("pick_cube", -0.1, np.random.default_rng(0))


def test_nearest_square_yaw_respects_symmetry_and_limits():
    assert nearest_square_yaw(0.1, 0.0) == pytest.approx(0.1)
    assert nearest_square_yaw(0.1 + np.pi / 2, 0.0) == pytest.approx(0.1)
    assert nearest_square_yaw(0.7, -0.5) == pytest.approx(0.7 - np.pi / 2)
    assert nearest_square_yaw(0.9, 1.5, limit=1.0) == pytest.approx(0.9)  # 0.9 + pi/2 is past the limit
