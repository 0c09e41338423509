"""The real `q2rl session` entry point as a subprocess: BC preparation from scripted demos, learner and actor
processes over loopback gRPC, the phases, the summary, and the files a run leaves behind."""

import json
import subprocess

import pytest
import yaml
from process_util import REPO, child_env, q2rl, read_json, tiny_run_config

from q2rl.learner.episode_store import EpisodeStore


@pytest.mark.slow
def test_a_short_session_with_two_actors_trains_and_leaves_a_complete_run_directory(tmp_path):
    env_steps = 240
    # Windows of 2 eval episodes, one after every training episode: a best checkpoint is saved in both sessions.
    config = tiny_run_config(tmp_path, session={"env_steps": env_steps}, learner={"eval_window": 2},
                             actor={"eval_every_episodes": 1})
    proc = subprocess.run(
        q2rl("session", "--config", str(config), "--env-steps", str(env_steps), "--actors", "2",
             "learner.run_name=smoke"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env(), cwd=REPO, timeout=400,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:]

    # The BC policy was prepared from scripted demos and cached for the next session.
    cache = list((tmp_path / "bc-cache").glob("pick_cube-*/bc/policy.ckpt"))
    assert len(cache) == 1, out[-2000:]
    run = tmp_path / "runs" / "smoke"
    assert f"session finished: reached {env_steps} env steps" in out
    assert f"run files in {run}/" in out
    assert "final eval" in out

    # Every file the summary points at exists and agrees with the others.
    summary = read_json(run / "summary.json")
    status = read_json(run / "status.json")
    assert summary["env_steps"] == status["env_steps"] >= env_steps
    assert status["phase"] in ("online", "done")  # Q-Estimation ran, then online updates
    assert status["updates"] > 0
    assert isinstance(status["learning"]["q_mean"], float)  # the last update's values, as plain JSON numbers
    # UTD against the insert rate: one update call per online env step, never ahead of the data.
    online_steps = status["env_steps"] - read_checkpoint_book(run)["online_start_steps"]
    assert 0 < status["updates"] <= online_steps
    assert (run / "checkpoint" / "learner.ckpt").is_file()
    final = read_json(run / "final_eval.json")
    assert final["episodes"] == 2 and 0.0 <= final["success_rate"] <= 1.0
    assert final["actions"] == "modes"  # actor.eval_deterministic's default, recorded with the figure
    assert summary["final_eval_success"] == final["success_rate"]
    assert final["checkpoint"] == "last"
    # The best eval windows kept candidate checkpoints; the session evaluated each, and the last checkpoint, on the
    # same fresh episodes and pointed best.ckpt at the winner.
    assert (run / "checkpoint" / "best.ckpt").is_file()
    best = read_json(run / "best_eval.json")
    assert best["checkpoint"] == "best" and best["episodes"] == 2
    assert summary["best_eval"] == best["chosen_on"]  # the chosen candidate's window (None: the last one won)
    assert [c["chosen"] for c in best["candidates"]].count(True) == 1
    assert (run / "checkpoint" / "best.ckpt").samefile(run / best["chosen_file"])
    # windows of one size: the lower bound ranks them as their rates do
    assert status["best_eval"]["success_rate"] == max(p["success_rate"] for p in status["eval_curve"])
    assert summary["best_final_eval_success"] == best["success_rate"]
    assert "best checkpoint" in out and "q2rl export" in out
    # The run holds its own pi_BC, named relative to the run directory (the directory stands alone).
    config_text = (run / "config.yaml").read_text()
    assert "checkpoint: bc/policy.ckpt" in config_text and str(cache[0].parent) not in config_text
    assert (run / "bc" / "policy.ckpt").read_bytes() == cache[0].read_bytes()

    # The episode store holds exactly the transitions the learner counted: per actor, seq 0..N-1 without gaps,
    # and both actors fed the one learner.
    store = EpisodeStore(run)
    seqs_by_actor: dict[str, list[int]] = {}
    for t in store.transitions():
        seqs_by_actor.setdefault(t.actor_id, []).append(t.seq)
    assert sorted(seqs_by_actor) == ["actor-0", "actor-1"]
    for seqs in seqs_by_actor.values():
        assert sorted(seqs) == list(range(len(seqs)))
    assert sum(map(len, seqs_by_actor.values())) == status["env_steps"] == status["replay_size"]
    reports = [ep.report for ep in store.episodes() if ep.report is not None]
    assert any(r.eval for r in reports), "eval episodes are reported to the learner"
    assert sum(not r.eval and not r.cut for r in reports) == status["episodes"]

    # `--resume` continues the same run: the learner restores its checkpoint and replay, the actors continue
    # their sequence numbers, nothing stored before is lost or doubled.
    more = status["env_steps"] + 120
    proc = subprocess.run(
        q2rl("session", "--resume", str(run), "--env-steps", str(more)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env(), cwd=REPO, timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    resumed = read_json(run / "status.json")
    assert resumed["env_steps"] >= more and resumed["updates"] > status["updates"]
    resumed_seqs: dict[str, list[int]] = {}
    for t in EpisodeStore(run).transitions():
        resumed_seqs.setdefault(t.actor_id, []).append(t.seq)
    for actor_id, seqs in resumed_seqs.items():
        assert sorted(seqs) == list(range(len(seqs))), actor_id
        assert len(seqs) >= len(seqs_by_actor[actor_id])
    assert sum(map(len, resumed_seqs.values())) == resumed["env_steps"] == resumed["replay_size"]
    # The resumed session's final evaluations replaced final_eval.json and best_eval.json; evaluations.jsonl keeps
    # all four.
    history = [json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines()]
    last = [r for r in history if r["checkpoint"] == "last"]
    assert last == [final, read_json(run / "final_eval.json")]
    assert last[1]["updates"] > last[0]["updates"]
    assert [r for r in history if r["checkpoint"] == "best"] == [best, read_json(run / "best_eval.json")]


def read_checkpoint_book(run):
    from q2rl.core.checkpoint import read_metadata

    return read_metadata(run / "checkpoint" / "learner.ckpt")["book"]


def test_a_session_refuses_to_overwrite_an_existing_run(tmp_path):
    config = tiny_run_config(tmp_path, bc={"checkpoint": str(tmp_path / "missing-bc")})
    run = tmp_path / "runs" / "taken"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("env: {}\n")
    proc = subprocess.run(
        q2rl("learner", "--config", str(config), "learner.run_name=taken"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env(), cwd=REPO, timeout=120,
    )
    assert proc.returncode == 2
    assert "already exists" in proc.stdout and "--resume" in proc.stdout
    assert (run / "config.yaml").read_text() == "env: {}\n"  # untouched


def test_a_session_into_an_existing_run_directory_changes_nothing_in_it(tmp_path):
    """It used to read the old learner.addr, start an actor against that dead address, re-evaluate the old
    checkpoint and overwrite summary.json and final_eval.json."""
    config = tiny_run_config(tmp_path)  # no BC checkpoint: it is refused before pi_BC would be trained
    run = tmp_path / "runs" / "taken"
    run.mkdir(parents=True)
    old = {"config.yaml": "env: {}\n", "summary.json": '{"old": 1}', "final_eval.json": '{"old": 2}',
           "learner.addr": "127.0.0.1:1"}
    for name, text in old.items():
        (run / name).write_text(text)
    proc = subprocess.run(q2rl("session", "--config", str(config), "learner.run_name=taken"), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=child_env(), cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:]
    assert "already exists" in proc.stdout and f"--resume {run}" in proc.stdout
    assert {p.name: p.read_text() for p in run.iterdir()} == old
    assert not (tmp_path / "bc-cache").exists()


def test_session_help_all_lists_every_config_field():
    proc = subprocess.run(q2rl("session", "--help-all"), stdout=subprocess.PIPE, text=True, env=child_env(), cwd=REPO,
                          timeout=60)
    assert proc.returncode == 0
    for field in ("session.env_steps", "learner.address", "actor.pace", "agent.q_estimation.rollout_episodes",
                  "env.sim.task", "bc.train.steps"):
        assert field in proc.stdout, field


def test_a_malformed_override_is_a_config_error_naming_the_field(tmp_path):
    config = tiny_run_config(tmp_path)
    proc = subprocess.run(q2rl("session", "--config", str(config), "session.actors=0"), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=child_env(), cwd=REPO, timeout=60)
    assert proc.returncode == 2
    assert "session.actors" in proc.stdout and ">= 1" in proc.stdout
    assert not (tmp_path / "runs").exists()


def test_summary_json_is_plain_json(tmp_path):
    """The summary is for humans and scripts: JSON (never pickle), readable without q2rl."""
    from q2rl.progress import EvalPoint
    from q2rl.learner.session import SessionResult, format_summary

    result = SessionResult(run_dir=str(tmp_path), reason="reached 10 env steps", wall_s=61.0, env_steps=10,
                           episodes=2, train_successes=1, cut_episodes=1, updates=8, eval_curve=[EvalPoint(5, 0.5, 2), EvalPoint(10, 1.0, 2, train_episodes_total=7, train_successes_total=3)],
                           final_eval_success=0.75, final_eval_episodes=4, best_eval=EvalPoint(10, 1.0, 2),
                           best_final_eval_success=0.8, best_final_eval_episodes=5)
    text = format_summary(result)
    assert "best_eval.json" not in text and "final_eval.json" not in text  # listed only when they exist
    (tmp_path / "best_eval.json").write_text("{}")
    assert "best_eval.json" in format_summary(result)
    assert "1.0 min" in text and "75% success over 4 episodes" in text
    assert "10 in 2 training episodes (1 successful, 1 cut)" in text
    assert "best checkpoint  100% over 2 eval episodes at 10 env steps; 80% over 5 fresh episodes" in text
    rows = [line for line in text.splitlines() if line.strip().startswith(("5 ", "10 "))]
    assert len(rows) == 2 and rows[1].count("#") == 2 * rows[0].count("#")
    # training successes practised by each window; "-" for a point recorded before they were kept
    assert rows[1].split()[3] == "3/7" and rows[0].split()[3] == "-"
    import dataclasses

    json.dumps(dataclasses.asdict(result))


def test_each_actor_of_a_session_is_seeded_from_the_configured_actor_seed(tmp_path):
    """The session used to pass actor.seed=1000 (i + 1) to its actors whatever the config said, so two sessions
    that differed only in actor.seed ran the same rollouts and resets."""
    from q2rl.config import load_config, to_dict
    from q2rl.learner.session import actor_argv
    from q2rl.run_config import RunConfig

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(to_dict(load_config(RunConfig, None, ["actor.seed=7"]))))
    seeds = []
    for index in (0, 1):
        argv = actor_argv(tmp_path, "127.0.0.1:1", index, 7)
        overrides = [a for a in argv[argv.index("actor") + 1:] if "=" in a and not a.startswith("--")]
        seeds.append(load_config(RunConfig, str(config), overrides).actor.seed)  # as the actor reads its config
    assert seeds == [7, 1007]


@pytest.mark.slow
def test_sigterm_stops_a_session_as_ctrl_c_does_and_leaves_no_child_running(tmp_path):
    """`kill` (or a scheduler's stop) ends the session in order: actors, then the learner's final checkpoint; no
    actor is left reconnecting to a learner that is gone."""
    import os
    import signal
    import time

    config = tiny_run_config(tmp_path, session={"env_steps": 10**6})
    proc = subprocess.Popen(q2rl("session", "--config", str(config), "learner.run_name=term"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=child_env(), cwd=REPO)
    run = tmp_path / "runs" / "term"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (run / "actors" / "actor-0.json").is_file():
        time.sleep(0.5)  # the actor is up and stepping
    children = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                               text=True).stdout.split()]
    assert len(children) == 2, "a learner and an actor"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "session: stopping (terminated (SIGTERM)) — actors first, then the learner" in out
    assert "no final evaluation after SIGTERM; run it with q2rl actor" in out
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert (run / "checkpoint" / "learner.ckpt").is_file()
    assert "stopped:" in (run / "actor-0.log").read_text()


def test_ctrl_c_stops_a_session_started_with_sigint_ignored(tmp_path):
    """A session started as a background job of a script (or under nohup) inherits SIGINT ignored, which Python keeps:
    it must still stop in order on Ctrl-C, as its learner and actors do."""
    import signal
    import time

    config = tiny_run_config(tmp_path, session={"env_steps": 10**6, "final_eval_episodes": 0})
    argv = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *q2rl("session", "--config", str(config),
                                                            "learner.run_name=ign")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env(),
                            cwd=REPO)
    run = tmp_path / "runs" / "ign"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (run / "actors" / "actor-0.json").is_file():
        time.sleep(0.5)  # the actor is up and stepping
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "session: stopping (interrupted (Ctrl-C)) — actors first, then the learner" in out
    assert (run / "checkpoint" / "learner.ckpt").is_file()


def test_a_camera_run_from_a_state_only_pi_bc_is_refused_in_one_line_before_anything_starts(tmp_path):
    """The frozen image encoder (the default) reads pi_BC's features of each camera: a pi_BC trained on the state
    alone cannot give them; the session says so and what to set, and creates no run directory."""
    from process_util import tiny_bc_policy

    bc = tiny_bc_policy(tmp_path / "bc")  # state only
    config = tiny_run_config(tmp_path, bc, env={"sim": {"cameras": ["front"], "image_size": 32}})
    proc = subprocess.run(q2rl("session", "--config", str(config), "learner.run_name=cams"), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=child_env(), cwd=REPO, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:]
    assert ("agent.image_encoder: frozen_bc reads pi_BC's features of each camera image, but pi_BC reads cameras [] "
            "and not ['front']: train pi_BC on the run's cameras (bc.train.cameras), or set agent.image_encoder: "
            "learned") in proc.stdout
    assert "Traceback" not in proc.stdout
    assert not (tmp_path / "runs" / "cams").exists()
