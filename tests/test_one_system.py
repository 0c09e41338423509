"""One training system: the same seed through `q2rl session` (learner and actor processes over loopback gRPC) and
through q2rl.local.LocalRun (the same Actor and Learner in one process, what the benchmarks run) stores the same
transitions, episode by episode, for the episodes both ran on pi_BC alone (after that, when the first parameters
arrive is a matter of process timing)."""

import subprocess

import numpy as np
import pytest
from process_util import REPO, child_env, q2rl, tiny_bc_policy, tiny_run_config

ROLLOUTS = 3


@pytest.mark.slow
def test_grpc_session_and_in_process_run_store_the_same_transitions(tmp_path):
    from q2rl.config import load_config
    from q2rl.core.checkpoint import load_bc_policy
    from q2rl.learner.episode_store import EpisodeStore
    from q2rl.local import LocalRun, LocalSchedule
    from q2rl.run_config import RunConfig

    bc_checkpoint = tiny_bc_policy(tmp_path / "bc")
    agent = {"q_estimation": {"rollout_episodes": ROLLOUTS}}
    config = tiny_run_config(tmp_path, bc_checkpoint, agent=agent, session={"final_eval_episodes": 0},
                             actor={"eval_every_episodes": 0})  # LocalRun.run interleaves no evaluations either
    proc = subprocess.run(q2rl("session", "--config", str(config), "--env-steps", "150", "learner.run_name=grpc"),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env(), cwd=REPO,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    run_dir = tmp_path / "runs" / "grpc"
    stored = [ep for ep in EpisodeStore(run_dir).episodes() if ep.complete]

    # The run's own config.yaml, with the identity the session gave its first actor.
    cfg = load_config(RunConfig, run_dir / "config.yaml", ["actor.actor_id=actor-0", "actor.seed=1000"])
    local = LocalRun(cfg, load_bc_policy(bc_checkpoint), tmp_path / "local", log=lambda s: None)
    local.run(LocalSchedule(online_steps=1, eval_every=0))
    replay = local.learner.replay
    in_process = [replay.export_episode(*key) for key in replay.completed_episodes]

    assert len(stored) >= ROLLOUTS and len(in_process) >= ROLLOUTS
    for grpc_episode, local_episode in zip(stored[:ROLLOUTS], in_process[:ROLLOUTS]):
        t = grpc_episode.transitions
        assert grpc_episode.episode_id == local_episode.episode_id
        assert len(t) == len(local_episode)
        assert all(x.source == "bc" and x.param_version == 0 for x in t)  # pi_BC alone, before any parameters
        np.testing.assert_allclose(np.stack([x.action for x in t]), local_episode.actions, atol=1e-5)
        np.testing.assert_allclose(np.stack([x.obs["state"] for x in t]), local_episode.obs["state"][:-1], atol=1e-5)
        np.testing.assert_array_equal([x.reward for x in t], local_episode.rewards)
        assert grpc_episode.transitions[-1].terminated == local_episode.success
