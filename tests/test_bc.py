"""BC policies: training lowers held-out NLL, checkpoints round-trip and fail loudly, the CLI prints its JSON line."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from q2rl.bc.cli import main as bc_main
from q2rl.bc.config import BCConfig
from q2rl.bc.train import train_bc
from q2rl.core import checkpoint as ckpt
from q2rl.core.checkpoint import CheckpointError, load_bc_policy, load_checkpoint, save_checkpoint
from q2rl.core.encoders import random_shift
from q2rl.core.policies import BCPolicy, PolicyConfig
from q2rl.demos.hdf5 import read_demos
from q2rl.demos.scripted import ScriptedDemoSpec, record_scripted_demos
from q2rl.robot.sim.config import SimEnvConfig


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory) -> tuple[Path, Path]:
    """Training demos and independent test demos (other seeds) of pick_cube from the scripted expert."""
    root = tmp_path_factory.mktemp("demos")
    env_cfg = SimEnvConfig(task="pick_cube")
    train = record_scripted_demos(env_cfg, ScriptedDemoSpec(episodes=16, noise=0.3, seed=0), root / "train.hdf5",
                                  progress=False)
    test = record_scripted_demos(env_cfg, ScriptedDemoSpec(episodes=8, noise=0.3, seed=500), root / "test.hdf5",
                                 progress=False)
    return Path(train.out), Path(test.out)


def _mean_nll(policy: BCPolicy, path: Path) -> float:
    ds = read_demos(path)
    states = np.concatenate([e.states for e in ds.episodes])
    actions = np.concatenate([e.actions for e in ds.episodes])
    dist, _ = policy.distribution({"state": states})
    return float(-jnp.mean(dist.log_prob(actions)))


@pytest.mark.parametrize("kind", ["gaussian", "gmm"])
def test_bc_training_lowers_nll_on_held_out_demos(demo_files, kind):
    train_path, test_path = demo_files
    cfg = BCConfig(policy=PolicyConfig(kind=kind), steps=800, eval_every=400, val_fraction=0.25)
    result = train_bc(read_demos(train_path), cfg, progress=False)
    untrained_params = result.policy.module.init(
        jax.random.PRNGKey(cfg.seed + 1), {"state": jnp.zeros((1, read_demos(train_path).state_dim))})
    untrained = dataclasses.replace(result.policy, params=untrained_params)

    assert result.num_val_demos == 4 and result.num_train_demos == 12
    assert result.final_val_nll < result.initial_val_nll - 1.0, result.history
    assert result.final_train_nll < result.history[0]["train_nll"] - 1.0
    # Independent check on demos from other seeds, scored in the test through the policy's own distribution.
    assert _mean_nll(result.policy, test_path) < _mean_nll(untrained, test_path) - 1.0


def test_bc_policy_single_and_batched_observations_agree(demo_files):
    train_path, _ = demo_files
    cfg = BCConfig(policy=PolicyConfig(kind="gmm", num_modes=3), steps=20, val_fraction=0.0)
    policy = train_bc(read_demos(train_path), cfg, progress=False).policy
    states = read_demos(train_path).episodes[0].states[:5]
    batch_dist, carry = policy.distribution({"state": states})
    assert carry == ()
    single = jax.jit(lambda p, o: p.distribution(o)[0])(policy, {"state": states[2]})
    action = np.asarray(batch_dist.mode())[2]
    np.testing.assert_allclose(single.log_prob(action), batch_dist.log_prob(batch_dist.mode())[2], rtol=1e-5)
    np.testing.assert_allclose(single.entropy(), batch_dist.entropy()[2], rtol=1e-5)
    a, _ = policy.act({"state": states[0]}, jax.random.PRNGKey(0))
    assert a.shape == (7,)


def test_checkpoint_round_trip_rebuilds_the_same_policy(demo_files, tmp_path):
    train_path, _ = demo_files
    cfg = BCConfig(policy=PolicyConfig(kind="gaussian", hidden_dims=(32, 16)), steps=30)
    out = tmp_path / "run"
    result = train_bc(read_demos(train_path), cfg, out_dir=out, progress=False)
    loaded = load_bc_policy(out)
    assert loaded.module == result.policy.module
    states = read_demos(train_path).episodes[1].states
    d0, _ = result.policy.distribution({"state": states})
    d1, _ = loaded.distribution({"state": states})
    np.testing.assert_allclose(d1.mean, d0.mean, rtol=1e-6)
    np.testing.assert_allclose(d1.log_std, d0.log_std, rtol=1e-6)
    meta = ckpt.read_metadata(out / "policy.ckpt")
    assert meta["env_args"]["env_name"] == "pick_cube" and meta["state_dim"] == states.shape[1]
    assert meta["policy"]["hidden_dims"] == [32, 16] and (out / "metrics.jsonl").is_file()

    tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "nested": {"b": np.ones(2, np.int32)}}
    save_checkpoint(tmp_path / "t.ckpt", tree, {"step": 7})
    back = load_checkpoint(tmp_path / "t.ckpt", target=tree)
    np.testing.assert_array_equal(back.state["w"], tree["w"])
    np.testing.assert_array_equal(back.state["nested"]["b"], tree["nested"]["b"])
    assert back.metadata == {"step": 7}


def test_corrupt_truncated_and_foreign_checkpoints_are_clear_errors(tmp_path):
    path = save_checkpoint(tmp_path / "good.ckpt", {"w": np.arange(1000, dtype=np.float32)}, {"kind": "x"})
    data = path.read_bytes()
    cases = {
        "truncated.ckpt": (data[: len(data) - 100], "truncated"),
        "flipped.ckpt": (data[:-50] + bytes([data[-50] ^ 0xFF]) + data[-49:], "checksum"),
        "foreign.ckpt": (b"PK\x03\x04" + data[4:], "not a q2rl checkpoint"),
        "header.ckpt": (data[:20], "truncated"),
        "version.ckpt": (data.replace(b'"format_version": 1', b'"format_version": 9', 1), "format version 9"),
    }
    for name, (content, expected) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=expected) as info:
            load_checkpoint(tmp_path / name)
        assert name in str(info.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointError, match="not a BC policy"):
        load_bc_policy(path)


def test_interrupted_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "p.ckpt", {"w": np.zeros(3, np.float32)}, {"v": 1})

    def crash(*args, **kwargs):  # the process dies between writing the temp file and renaming it
        raise KeyboardInterrupt

    monkeypatch.setattr("q2rl.recordio.os.replace", crash)  # save_checkpoint writes via recordio.atomic_write
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"w": np.ones(3, np.float32)}, {"v": 2})
    monkeypatch.undo()
    assert load_checkpoint(path).metadata == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.ckpt"]  # no temp file left behind


def test_random_shift_is_a_crop_of_the_edge_padded_image():
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (6, 10, 12, 3), dtype=np.uint8))
    shifted = jax.jit(random_shift, static_argnums=2)(jax.random.PRNGKey(1), images, 2)
    assert shifted.shape == images.shape and shifted.dtype == images.dtype
    padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    for i in range(6):
        crops = [padded[i, y:y + 10, x:x + 12] for y in range(5) for x in range(5)]
        assert any(np.array_equal(np.asarray(shifted[i]), c) for c in crops)
    assert not all(np.array_equal(shifted[i], images[i]) for i in range(6))
    np.testing.assert_array_equal(random_shift(jax.random.PRNGKey(1), images, 0), images)


def test_image_policy_trains_saves_and_loads(tmp_path):
    os.environ.setdefault("MUJOCO_GL", "egl")
    env_cfg = SimEnvConfig(task="pick_cube", cameras=("wrist",), image_size=16)
    demos = record_scripted_demos(env_cfg, ScriptedDemoSpec(episodes=2, noise=0.1), tmp_path / "img.hdf5",
                                  progress=False)
    cfg = BCConfig(cameras=("wrist",), steps=10, batch_size=16, val_fraction=0.0)
    result = train_bc(read_demos(demos.out, cameras=("wrist",)), cfg, out_dir=tmp_path / "run", progress=False)
    policy = load_bc_policy(tmp_path / "run")
    assert policy.camera_names == ("wrist",)
    episode = read_demos(demos.out, cameras=("wrist",)).episodes[0]
    obs = {"state": episode.states[0], "images": {"wrist": episode.images["wrist"][0]}}
    d_loaded, _ = policy.distribution(obs)
    d_trained, _ = result.policy.distribution(obs)
    np.testing.assert_allclose(d_loaded.mean, d_trained.mean, rtol=1e-5)
    assert np.isfinite(float(d_loaded.entropy()))


def test_bc_cli_train_refuses_overwrite_and_eval_prints_one_json_line(demo_files, tmp_path, capsys):
    train_path, _ = demo_files
    out = tmp_path / "bc"
    assert bc_main(["train", "--demos", str(train_path), "--policy", "gmm", "--out", str(out), "--steps", "40",
                    "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["policy"] == "gmm" and summary["steps"] == 40
    assert bc_main(["train", "--demos", str(train_path), "--out", str(out), "--steps", "5", "--no-progress"]) == 2
    assert "--force" in capsys.readouterr().err
    assert bc_main(["train", "--demos", str(train_path), "--out", str(out), "--steps", "5", "--no-progress",
                    "--force"]) == 0

    proc = subprocess.run(
        [sys.executable, "-m", "q2rl.cli", "bc", "eval", "--policy", str(out), "--task", "pick_cube",
         "--episodes", "2", "--seed", "3", "--no-progress"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].rstrip("}").rsplit(", ", 1)[1].startswith('"success_rate": ')
    result = json.loads(lines[0])
    assert list(result)[-1] == "success_rate" and 0.0 <= result["success_rate"] <= 1.0
    assert result["task"] == "pick_cube" and result["episodes"] == 2 and result["mean_length"] > 0
    kept = json.loads((out / "eval.json").read_text())  # the result stays beside the policy
    assert {k: v for k, v in kept.items() if k != "time"} == result and kept["time"]
    assert len((out / "evaluations.jsonl").read_text().splitlines()) == 1


def test_eval_action_mode_outside_the_literal_is_refused():
    from q2rl.bc.evaluate import make_act_fn
    from q2rl.config import ConfigError

    with pytest.raises(ConfigError, match="eval_action: 'greedy' must be 'sample' or 'mode'"):
        make_act_fn("greedy")
    assert callable(make_act_fn("mode")) and callable(make_act_fn("sample"))


def _scores_along(policy: BCPolicy, episode) -> np.ndarray:
    """log pi(a_t | s_0..s_t) along one demo, the memory passed on from step to step as a rollout does."""
    carry, out = policy.initial_carry(), []
    for s, a in zip(episode.states, episode.actions):
        dist, carry = policy.distribution({"state": s}, carry)
        out.append(float(dist.log_prob(a)))
    return np.array(out)


def test_recurrent_bc_trains_on_windows_saves_and_loads(demo_files, tmp_path):
    train_path, _ = demo_files
    policy_cfg = PolicyConfig(kind="gmm_rnn", rnn_hidden_dim=16, rnn_horizon=5, num_modes=3)
    cfg = BCConfig(policy=policy_cfg, steps=400, eval_every=200, val_fraction=0.25, batch_size=64)
    result = train_bc(read_demos(train_path), cfg, out_dir=tmp_path / "rnn", progress=False)
    assert result.final_val_nll < result.initial_val_nll - 1.0, result.history
    loaded = load_bc_policy(tmp_path / "rnn")
    assert loaded.recurrent and loaded.module == result.policy.module
    episode = read_demos(train_path).episodes[0]
    np.testing.assert_allclose(_scores_along(loaded, episode), _scores_along(result.policy, episode), rtol=1e-5)
    # the validation NLL is the rollout's: each held-out step scored with the memory a rollout would have
    # (checked on a training episode against the step-by-step scores)
    from q2rl.bc.train import episode_ends, flatten_episodes, make_eval_nll

    eval_nll = make_eval_nll(loaded.module, loaded.normalizer, horizon=5)
    data = flatten_episodes([episode], ())
    assert eval_nll(loaded.params, data, episode_ends([episode])) == pytest.approx(
        -_scores_along(loaded, episode).mean(), rel=1e-4)


def test_recurrent_image_policy_trains_on_windows(tmp_path):
    os.environ.setdefault("MUJOCO_GL", "egl")
    env_cfg = SimEnvConfig(task="pick_cube", cameras=("wrist",), image_size=16)
    demos = record_scripted_demos(env_cfg, ScriptedDemoSpec(episodes=2, noise=0.1), tmp_path / "img.hdf5",
                                  progress=False)
    cfg = BCConfig(policy=PolicyConfig(kind="gmm_rnn", rnn_hidden_dim=8, rnn_horizon=4), cameras=("wrist",),
                   steps=6, batch_size=16, val_fraction=0.0)
    result = train_bc(read_demos(demos.out, cameras=("wrist",)), cfg, progress=False)
    episode = read_demos(demos.out, cameras=("wrist",)).episodes[0]
    obs = {"state": episode.states[0], "images": {"wrist": episode.images["wrist"][0]}}
    dist, carry = result.policy.distribution(obs, result.policy.initial_carry())
    assert np.isfinite(float(dist.log_prob(episode.actions[0]))) and int(carry["t"]) == 1
