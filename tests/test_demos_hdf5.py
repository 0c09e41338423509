"""Demonstration files: round trip, real robomimic layout, clear errors for truncated/malformed files."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

from q2rl.demos.cli import main as demos_main
from q2rl.demos.hdf5 import DemoFileError, DemoWriter, Demo, read_demos, write_demos


def _episode(rng: np.random.Generator, length: int, state_dim: int = 10, cameras=("wrist",), success=True) -> Demo:
    images = {c: rng.integers(0, 256, (length, 12, 16, 3), dtype=np.uint8) for c in cameras}
    next_images = {c: rng.integers(0, 256, (length, 12, 16, 3), dtype=np.uint8) for c in cameras}
    dones = np.zeros(length, bool)
    dones[-1] = success
    return Demo(
        states=rng.normal(size=(length, state_dim)).astype(np.float32),
        actions=rng.uniform(-1, 1, (length, 7)).astype(np.float32),
        rewards=dones.astype(np.float32), dones=dones, images=images,
        next_states=rng.normal(size=(length, state_dim)).astype(np.float32), next_images=next_images,
        success=success, seed=int(rng.integers(1000)),
    )


def test_round_trip_preserves_every_array_and_the_metadata(tmp_path):
    rng = np.random.default_rng(0)
    episodes = [_episode(rng, n, success=n % 2 == 0) for n in (5, 8, 3, 12, 7, 9, 4, 6, 10, 11, 2)]
    path = write_demos(tmp_path / "d.hdf5", episodes, env_args={"env_name": "pick_cube", "env_kwargs": {"a": 1}})
    ds = read_demos(path, cameras=("wrist",), load_next_obs=True)
    # demo_10 must come after demo_9 (numeric, not lexicographic, order)
    assert ds.demo_names == tuple(f"demo_{i}" for i in range(11))
    assert ds.env_args == {"env_name": "pick_cube", "env_kwargs": {"a": 1}}
    assert ds.num_samples == sum(len(e) for e in episodes) and ds.camera_names == ("wrist",)
    for got, want in zip(ds.episodes, episodes):
        np.testing.assert_array_equal(got.states, want.states)
        np.testing.assert_array_equal(got.actions, want.actions)
        np.testing.assert_array_equal(got.rewards, want.rewards)
        np.testing.assert_array_equal(got.dones, want.dones)
        np.testing.assert_array_equal(got.images["wrist"], want.images["wrist"])
        np.testing.assert_array_equal(got.next_states, want.next_states)
        np.testing.assert_array_equal(got.next_images["wrist"], want.next_images["wrist"])
        assert (got.success, got.seed) == (want.success, want.seed)
    with h5py.File(path, "r") as f:  # robomimic's own bookkeeping
        assert f["data"].attrs["total"] == ds.num_samples
        assert f["data/demo_3"].attrs["num_samples"] == 12
        assert json.loads(f["data"].attrs["env_args"])["env_name"] == "pick_cube"
        assert set(f["data/demo_0/obs"].keys()) == {"state", "wrist_image"}
    obs = ds.episodes[1].observations
    assert obs["state"].shape == (8, 10) and obs["images"]["wrist"].shape == (8, 12, 16, 3)


def test_writer_refuses_to_overwrite_and_rejects_bad_episodes(tmp_path):
    rng = np.random.default_rng(1)
    path = write_demos(tmp_path / "d.hdf5", [_episode(rng, 3)], env_args={})
    with pytest.raises(FileExistsError, match="--force"):
        DemoWriter(path, env_args={})
    bad = _episode(rng, 4)
    bad = Demo(states=bad.states, actions=bad.actions.copy(), rewards=bad.rewards, dones=bad.dones)
    bad.actions[2, 1] = np.nan
    with DemoWriter(tmp_path / "e.hdf5", env_args={}) as writer, pytest.raises(ValueError, match="NaN"):
        writer.add(bad)


def _robomimic_file(path, n_demos=3):
    """A file laid out exactly like robomimic's low-dim/image datasets (no `state` key, extra groups)."""
    rng = np.random.default_rng(2)
    expected = []
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        total = 0
        for i in range(n_demos):
            t = 4 + i
            g = data.create_group(f"demo_{i}")
            obs = g.create_group("obs")
            parts = {
                "robot0_eef_pos": rng.normal(size=(t, 3)), "robot0_eef_quat": rng.normal(size=(t, 4)),
                "robot0_gripper_qpos": rng.normal(size=(t, 2)), "object": rng.normal(size=(t, 10)),
                "robot0_joint_pos": rng.normal(size=(t, 7)),
            }
            for k, v in parts.items():
                obs.create_dataset(k, data=v)
            obs.create_dataset("agentview_image", data=rng.integers(0, 256, (t, 8, 8, 3), dtype=np.uint8))
            g.create_group("next_obs").create_dataset("object", data=rng.normal(size=(t, 10)))
            g.create_dataset("actions", data=rng.uniform(-1, 1, (t, 7)))
            g.create_dataset("rewards", data=np.r_[np.zeros(t - 1), 1.0])
            g.create_dataset("dones", data=np.r_[np.zeros(t - 1), 1].astype(np.int64))
            g.create_dataset("states", data=rng.normal(size=(t, 32)))  # MuJoCo sim states
            g.attrs["num_samples"] = t
            g.attrs["model_file"] = "<mujoco/>"
            total += t
            state = np.concatenate([parts[k] for k in ("robot0_eef_pos", "robot0_eef_quat",
                                                        "robot0_gripper_qpos", "object")], axis=1)
            expected.append((state, np.asarray(g["actions"]), np.asarray(obs["agentview_image"])))
        data.attrs["total"] = total
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20}})
        mask = f.create_group("mask")
        mask.create_dataset("train", data=np.array([b"demo_0", b"demo_1"]))
        mask.create_dataset("valid", data=np.array([b"demo_2"]))
    return expected


def test_reads_a_real_robomimic_layout_file(tmp_path):
    path = tmp_path / "lift_low_dim.hdf5"
    expected = _robomimic_file(path)
    keys = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object")
    ds = read_demos(path, state_keys=keys, cameras=("front",), image_keys={"front": "agentview_image"})
    assert len(ds) == 3 and ds.state_dim == 3 + 4 + 2 + 10 and ds.env_args["env_name"] == "Lift"
    for ep, (state, actions, image) in zip(ds.episodes, expected):
        np.testing.assert_allclose(ep.states, state.astype(np.float32))
        np.testing.assert_allclose(ep.actions, actions.astype(np.float32))
        np.testing.assert_array_equal(ep.images["front"], image)
        assert ep.success and ep.dones[-1] and not ep.dones[0]
    with pytest.raises(DemoFileError, match=r"lift_low_dim.hdf5: demo_0: .*state_keys"):
        read_demos(path)  # no `state` key: the error says how to build one


def test_truncated_file_error_names_the_file_and_the_first_cut_demo(tmp_path):
    rng = np.random.default_rng(3)
    path = write_demos(tmp_path / "full.hdf5", [_episode(rng, 20) for _ in range(8)], env_args={})
    data = path.read_bytes()
    cut = tmp_path / "cut.hdf5"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(DemoFileError) as info:
        read_demos(cut)
    message = str(info.value)
    assert str(cut) in message and "truncated" in message
    # Demos are written in order, so the cut falls inside one of the later demos, never demo_0.
    named = [f"demo_{i}" for i in range(1, 8) if f"demo_{i} " in message]
    assert len(named) == 1, message
    intact = int(message.split(" demo(s) before it are intact")[0].rsplit(" ", 1)[1])
    assert intact == int(named[0].split("_")[1])


def test_malformed_files_give_errors_naming_file_and_demo(tmp_path):
    rng = np.random.default_rng(4)
    path = write_demos(tmp_path / "d.hdf5", [_episode(rng, 5) for _ in range(3)], env_args={})
    with h5py.File(path, "a") as f:  # demo_1: one reward too many
        del f["data/demo_1/rewards"]
        f["data/demo_1"].create_dataset("rewards", data=np.zeros(6, np.float32))
    with pytest.raises(DemoFileError, match=r"d.hdf5: demo_1: rewards must be \[T=5\]"):
        read_demos(path)
    with h5py.File(path, "a") as f:
        del f["data/demo_1/actions"]
    with pytest.raises(DemoFileError, match=r"d.hdf5: demo_1: has no 'actions'"):
        read_demos(path)
    with pytest.raises(DemoFileError, match=r"d.hdf5: demo_0: obs has no image key\(s\) \['front_image'\]"):
        read_demos(path, cameras=("front",))
    junk = tmp_path / "junk.hdf5"
    junk.write_bytes(b"this is not hdf5" * 100)
    with pytest.raises(DemoFileError, match="junk.hdf5: not a readable HDF5 file"):
        read_demos(junk)
    with pytest.raises(DemoFileError, match="does not exist"):
        read_demos(tmp_path / "missing.hdf5")


def test_demos_scripted_cli_records_a_readable_file(tmp_path, capsys):
    out = tmp_path / "pick.hdf5"
    code = demos_main(["scripted", "--task", "pick_cube", "--episodes", "3", "--noise", "0.1", "--seed", "5",
                       "--out", str(out), "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["demos"] == 3 and summary["task"] == "pick_cube"
    ds = read_demos(out, load_next_obs=True)
    assert len(ds) == 3 and all(e.success for e in ds.episodes)
    assert ds.env_args["env_name"] == "pick_cube" and ds.env_args["env_kwargs"]["task"] == "pick_cube"
    assert [e.seed for e in ds.episodes] == [5, 6, 7]
    for e in ds.episodes:
        assert np.all(np.abs(e.actions) <= 1.0) and e.dones[-1] and not e.dones[:-1].any()
        np.testing.assert_array_equal(e.next_states[:-1], e.states[1:])  # next_obs is the following obs
    assert demos_main(["scripted", "--episodes", "1", "--out", str(out), "--no-progress"]) == 2  # no --force


def test_demos_scripted_cli_records_camera_images(tmp_path, capsys):
    os.environ.setdefault("MUJOCO_GL", "egl")
    out = tmp_path / "pick_img.hdf5"
    code = demos_main(["scripted", "--episodes", "1", "--noise", "0", "--out", str(out), "--cameras", "wrist,front",
                       "--image-size", "32", "--no-progress", "--keep", "all"])
    assert code == 0, capsys.readouterr().err
    ds = read_demos(out, cameras=("wrist", "front"))
    images = ds.episodes[0].images
    assert images["wrist"].shape[1:] == (32, 32, 3) and images["front"].dtype == np.uint8
    assert images["front"].std() > 1.0  # something was rendered


def test_the_q2rl_command_renders_cameras_on_a_machine_without_a_display_or_MUJOCO_GL(tmp_path):
    """MuJoCo reads MUJOCO_GL once, at import: the command must choose headless EGL before any group imports the
    sim (`q2rl session` with cameras failed in its demo recording when a user ran .venv/bin/q2rl directly)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "DISPLAY")}
    out = tmp_path / "headless.hdf5"
    proc = subprocess.run([sys.executable, "-m", "q2rl.cli", "demos", "scripted", "--episodes", "1", "--noise", "0",
                           "--out", str(out), "--cameras", "wrist", "--image-size", "24", "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    images = read_demos(out, cameras=("wrist",)).episodes[0].images["wrist"]
    assert images.shape[1:] == (24, 24, 3) and images.std() > 1.0
