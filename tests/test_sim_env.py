"""The simulated Franka obeys the robot contract of q2rl.interfaces: spaces, scaling, clipping, episodes, seeds."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from q2rl.config import ConfigError, from_dict
from q2rl.interfaces import ACTION_DIM, RobotEnv
from q2rl.robot.sim import TASKS, SimEnvConfig, rotations
from q2rl.robot.sim.env import BODY_POSE_DIM, PROPRIO_DIM
from q2rl.robot.sim.tasks import make_task


def tool_yaw(state: np.ndarray) -> float:
    rot = rotations.rot6d_to_matrix(state[3:9])
    return float(np.arctan2(rot[1, 0], rot[0, 0]))


@pytest.mark.parametrize("task", TASKS)
def test_every_task_builds_resets_and_steps_within_its_spaces(sim_env_factory, task):
    env = sim_env_factory(task=task)
    assert isinstance(env, RobotEnv)
    n_bodies = len(make_task(task).state_bodies)
    assert env.observation_space["state"].shape == (PROPRIO_DIM + BODY_POSE_DIM * n_bodies,)
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, shape=(ACTION_DIM,), dtype=np.float32)
    obs, info = env.reset(seed=1)
    assert obs["state"].dtype == np.float32 and "images" not in obs
    assert env.observation_space.contains(obs) and info == {"success": False}
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs)
        assert reward == 0.0 and info["success"] is False and not terminated and not truncated
        assert np.all(np.isfinite(obs["state"]))


@pytest.mark.parametrize("base", ["pick_cube", "peg_insert", "kitting"])
def test_shifted_variant_keeps_the_state_layout_but_moves_the_objects(sim_env_factory, base):
    nominal, shifted = sim_env_factory(task=base), sim_env_factory(task=base + "_shifted")
    assert nominal.observation_space == shifted.observation_space
    starts = np.array([nominal.reset(seed=s)[0]["state"] for s in range(20)])
    shifted_starts = np.array([shifted.reset(seed=s)[0]["state"] for s in range(20)])
    # The first task body's (or the fixture's) start region moved by several centimetres on average.
    moved = np.abs(starts[:, PROPRIO_DIM:].mean(0) - shifted_starts[:, PROPRIO_DIM:].mean(0)).max()
    assert moved > 0.05
    assert shifted.model.body("distractor") is not None


def test_proprio_only_state_when_not_privileged(sim_env_factory):
    env = sim_env_factory(privileged_state=False)
    obs, _ = env.reset(seed=0)
    assert obs["state"].shape == (PROPRIO_DIM,)
    np.testing.assert_allclose(obs["state"], env.privileged_state()[:PROPRIO_DIM])
    # Layout: TCP position, 6-D orientation (orthonormal columns), finger gap (fully open = 8 cm).
    rot = rotations.rot6d_to_matrix(obs["state"][3:9])
    np.testing.assert_allclose(rot[:, :2].ravel("F"), obs["state"][3:9], atol=1e-5)
    np.testing.assert_allclose(obs["state"][:3], env.data.site_xpos[env.model.site("tcp").id], atol=1e-6)
    assert obs["state"][9] == pytest.approx(0.08, abs=0.002)


def test_translation_action_moves_the_tcp_by_position_scale(sim_env_factory):
    for scale in (0.02, 0.01):
        env = sim_env_factory(position_scale=scale)
        obs, _ = env.reset(seed=0)
        start = obs["state"][:3].copy()
        steps = 4
        for _ in range(steps):
            obs, *_ = env.step(np.array([1, 0, 0, 0, 0, 0, -1], np.float32))
        moved = obs["state"][:3] - start
        assert moved[0] == pytest.approx(steps * scale, rel=0.1)
        assert np.all(np.abs(moved[1:]) < 0.003)


def test_rotation_action_turns_the_tool_about_world_z_without_moving_the_tcp(sim_env_factory):
    env = sim_env_factory()
    obs, _ = env.reset(seed=0)
    start_pos, start_yaw = obs["state"][:3].copy(), tool_yaw(obs["state"])
    for _ in range(3):
        obs, *_ = env.step(np.array([0, 0, 0, 0, 0, 1, -1], np.float32))
    assert tool_yaw(obs["state"]) - start_yaw == pytest.approx(3 * 0.1, rel=0.12)
    assert np.linalg.norm(obs["state"][:3] - start_pos) < 0.004
    # Roll tilts the tool's z axis away from straight down by about the commanded angle.
    for _ in range(2):
        obs, *_ = env.step(np.array([0, 0, 0, 1, 0, 0, -1], np.float32))
    tool_z = rotations.rot6d_to_matrix(obs["state"][3:9])[:, 2]
    assert np.arccos(-tool_z[2]) == pytest.approx(0.2, rel=0.15)


def test_out_of_range_actions_are_clipped(sim_env_factory):
    a, b = sim_env_factory(), sim_env_factory()
    a.reset(seed=3), b.reset(seed=3)
    big = np.array([5, -3, 2, 0, 0, 9, -7], np.float32)
    for _ in range(2):
        obs_a, *_ = a.step(big)
        obs_b, *_ = b.step(np.clip(big, -1, 1))
    np.testing.assert_array_equal(obs_a["state"], obs_b["state"])


def test_bad_actions_raise_clear_errors(sim_env_factory):
    env = sim_env_factory()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="NaN or inf"):
        env.step(np.array([np.nan, 0, 0, 0, 0, 0, 0], np.float32))
    with pytest.raises(ValueError, match="NaN or inf"):
        env.step(np.array([0, 0, np.inf, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match=r"shape \(7,\)"):
        env.step(np.zeros(6))


def test_time_limit_truncates_and_does_not_terminate(sim_env_factory):
    env = sim_env_factory(max_episode_steps=3)
    env.reset(seed=0)
    flags = [env.step(np.zeros(7, np.float32))[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]
    assert sim_env_factory(task="kitting").max_episode_steps == 200


def test_success_terminates_with_reward_one(sim_env_factory):
    # Pick the cube by hand: hover over it, descend, close, lift (the pose comes from the privileged state).
    env = sim_env_factory(rotation_scale=0.1)
    obs, _ = env.reset(seed=5)
    cube = obs["state"][10:13]
    cube_yaw = rotations.quat_yaw(obs["state"][13:17])
    grasp_yaw = rotations.wrap_angle(4 * cube_yaw) / 4

    def go(target, gripper, yaw=grasp_yaw):
        s = env.privileged_state()
        delta = np.clip((target - s[:3]) / 0.02, -1, 1)
        turn = np.clip(rotations.wrap_angle(yaw - tool_yaw(s)) / 0.1, -1, 1)
        return env.step(np.array([*delta, 0, 0, turn, gripper], np.float32))

    results = [go(cube + [0, 0, 0.06], -1) for _ in range(15)]
    results += [go(cube, -1) for _ in range(6)]
    results += [go(cube, 1) for _ in range(3)]
    for _ in range(10):
        results.append(go(cube + [0, 0, 0.2], 1))
        if results[-1][2]:
            break
    *_, (obs, reward, terminated, truncated, info) = results
    assert info["success"] and terminated and not truncated and reward == 1.0
    assert all(r[1] == 0.0 and not r[2] for r in results[:-1])
    assert obs["state"][12] > 0.02 + 0.08


def test_same_seed_same_trajectory_different_seed_different_start(sim_env_factory):
    def rollout(seed):
        env = sim_env_factory(task="peg_insert")
        states = [env.reset(seed=seed)[0]["state"]]
        actions = np.random.default_rng(7).uniform(-1, 1, size=(15, 7)).astype(np.float32)
        states += [env.step(a)[0]["state"] for a in actions]
        return np.array(states)

    np.testing.assert_array_equal(rollout(11), rollout(11))
    assert np.abs(rollout(11)[0] - rollout(12)[0]).max() > 1e-3


def test_reset_without_seed_continues_the_seeded_stream(sim_env_factory):
    a, b = sim_env_factory(), sim_env_factory()
    a.reset(seed=4), b.reset(seed=4)
    np.testing.assert_array_equal(a.reset()[0]["state"], b.reset()[0]["state"])


def test_cameras_render_uint8_images_of_the_configured_size(sim_env_factory):
    env = sim_env_factory(cameras=("wrist", "front"), image_size=32)
    obs, _ = env.reset(seed=0)
    assert set(obs["images"]) == {"wrist", "front"}
    for name, image in obs["images"].items():
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        assert image.std() > 5, f"{name} image is flat"
    assert env.observation_space.contains(obs)
    before = obs["images"]["wrist"].copy()
    obs, *_ = env.step(np.array([0, 0, -1, 0, 0, 0, -1], np.float32))
    assert np.abs(obs["images"]["wrist"].astype(int) - before).mean() > 0.5  # the wrist view moved
    assert env.render().shape == (32, 32, 3)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"cameras": ["side"]}, "cameras"),
        ({"physics_timestep": 0.003}, "physics_timestep"),
        ({"position_scale": -0.01}, "position_scale"),
        ({"task": "stack_cubes"}, "task"),
        ({"image_size": 2}, "image_size"),
    ],
)
def test_bad_config_is_a_clear_error(overrides, field):
    with pytest.raises(ConfigError, match=field):
        from_dict(SimEnvConfig, overrides)
    assert from_dict(SimEnvConfig, {"cameras": ["front"]}).cameras == ("front",)
    assert SimEnvConfig(physics_timestep=0.002).substeps == 50


def test_gymnasium_env_checker_accepts_the_env(sim_env_factory):
    from gymnasium.utils.env_checker import check_env

    env = sim_env_factory(cameras=("front",), image_size=16)
    check_env(env, skip_render_check=True)


def test_binary_gripper_has_a_dead_band_like_the_real_robot(sim_env_factory):
    env = sim_env_factory()  # default gripper_mode="binary", threshold 0.5
    env.reset(seed=0)
    gaps = []
    for value in (0.3, 0.8, 0.2, -0.3, -0.8):
        obs, *_ = env.step(np.array([0, 0, 0, 0, 0, 0, value], np.float32))
        gaps.append(obs["state"][9])
    open_gap, closed_gap = 0.08, 0.0
    np.testing.assert_allclose(gaps, [open_gap, closed_gap, closed_gap, closed_gap, open_gap], atol=0.004)


def test_continuous_gripper_sets_the_finger_gap(sim_env_factory):
    env = sim_env_factory(gripper_mode="continuous")
    env.reset(seed=0)
    for value, expected_gap in ((0.0, 0.04), (0.5, 0.02), (-1.0, 0.08)):
        for _ in range(2):
            obs, *_ = env.step(np.array([0, 0, 0, 0, 0, 0, value], np.float32))
        assert obs["state"][9] == pytest.approx(expected_gap, abs=0.003)


def test_rotation_helpers_agree_with_scipy():
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(0)
    for rotvec in [*rng.normal(size=(5, 3)), np.array([np.pi - 1e-6, 0, 0]), np.array([0.0, 1e-9, 0.0])]:
        expected = Rotation.from_rotvec(rotvec).as_matrix()
        np.testing.assert_allclose(rotations.exp_map(rotvec), expected, atol=1e-9)
        back = rotations.log_map(expected)
        np.testing.assert_allclose(Rotation.from_rotvec(back).as_matrix(), expected, atol=1e-6)
        quat_wxyz = np.roll(Rotation.from_matrix(expected).as_quat(), 1)
        np.testing.assert_allclose(rotations.quat_to_matrix(quat_wxyz), expected, atol=1e-9)
        np.testing.assert_allclose(rotations.rot6d_to_matrix(rotations.rot6d(expected)), expected, atol=1e-9)
    assert rotations.quat_yaw(rotations.yaw_quat(0.7)) == pytest.approx(0.7)
    assert rotations.wrap_angle(3 * np.pi / 2) == pytest.approx(-np.pi / 2)
