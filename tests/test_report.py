"""See what happened: one short real session (learner and actor processes, a simulated camera), then the metrics
history it wrote, `q2rl report` on its directory (sim rollouts and the real robot's stored frames) and `q2rl episodes
export` (during the session and after it, round-tripped through `q2rl bc train`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import signal
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from process_util import REPO, q2rl, read_json, start, tiny_agent, tiny_run_config, wait_for

from q2rl.demos.hdf5 import read_demos
from q2rl.learner.episode_store import EpisodeStore
from q2rl.metrics import actor_episodes_dir, actor_loop_dir, learner_dir, read_scalars
from q2rl.report import FIGURE_PIXELS, SOURCE_RGB, frame_shape

VIEW = 128  # the report's camera view in pixels (the smallest it makes: a quick test)


@dataclasses.dataclass
class Session:
    run: Path
    tmp: Path
    live_export: subprocess.CompletedProcess
    live_export_out: Path
    store_before: dict[str, tuple[int, str]]  # segment file -> (size, sha256) just before the live export
    store_after: dict[str, bytes]  # segment file -> content just after it
    learner_ran_throughout: bool


def run_q2rl(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    from q2rl.learner.session import child_environment

    env = child_environment(str(REPO / "runs" / "jax-cache"))  # the sessions' compile cache: the report's gate too
    return subprocess.run(q2rl(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          cwd=REPO, timeout=timeout)


def online_and_evaluated(run: Path) -> bool:
    """The learner is online and an eval window of the gated policy has closed."""
    status = read_json(run / "status.json") or {}
    curve = status.get("eval_curve", [])
    return status.get("phase") == "online" and bool(curve) and curve[-1]["updates"] > 0


def segment_files(run: Path) -> list[Path]:
    return sorted((run / "episodes").glob("*/seg-*.rec"))


def complete_training_episodes(run: Path) -> list:
    """The store's finished, uncut training episodes, read independently of the exporter's own selection."""
    out = []
    for ep in EpisodeStore(run, read_only=True).episodes():
        r = ep.report
        if r is not None and not r.eval and not r.cut and ep.transitions and len(ep.transitions) == r.length:
            out.append(ep)
    return out


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Session:
    """A short session with a front camera (32 px, so the stored episodes carry frames as a robot's do); while it
    runs, `q2rl episodes export` reads its store. The session is stopped with Ctrl-C (SIGINT) once an eval window
    of the gated policy has closed, as an operator stops one (a stopped run is what the report must read too)."""
    tmp = tmp_path_factory.mktemp("report")
    # No critic regression: an unfitted Q_RL rates pi_RL's actions far above Qhat_BC, so the gate hands over at once
    # and a short session's video shows both sources (a fitted one starts at Qhat_BC and hands over later).
    agent = tiny_agent()
    agent["q_estimation"] = {**agent["q_estimation"], "critic_updates": 0}
    agent["image_encoder"] = "learned"  # pi_BC reads the state only; the camera is there for its frames
    config = tiny_run_config(
        tmp, agent=agent,
        env={"sim": {"task": "pick_cube", "max_episode_steps": 30, "cameras": ["front"], "image_size": 32}},
        session={"env_steps": 100_000, "final_eval_episodes": 0}, learner={"eval_window": 2},
        actor={"eval_every_episodes": 2})
    proc = start(q2rl("session", "--config", str(config), "learner.run_name=seen"), tmp / "session.log")
    run = tmp / "runs" / "seen"
    try:
        # Live: once the online phase is on and evaluated, export while the learner writes.
        wait_for(lambda: online_and_evaluated(run), 400, "an eval window in the online phase", (proc,))
        before = {str(p): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()) for p in segment_files(run)}
        out = tmp / "live.hdf5"
        live = run_q2rl("episodes", "export", str(run), "--out", str(out), "--no-progress")
        after = {str(p): p.read_bytes() for p in segment_files(run)}
        learner_ran = proc.poll() is None and (read_json(run / "status.json") or {}).get("phase") == "online"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0, (tmp / "session.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    return Session(run, tmp, live, out, before, after, learner_ran)


@pytest.mark.slow
def test_an_export_during_a_live_session_reads_the_store_and_changes_nothing_in_it(session):
    assert session.live_export.returncode == 0, session.live_export.stderr[-2000:]
    assert session.learner_ran_throughout, "the session ended before the export did: not a live export"
    # The learner only appended meanwhile: every byte that was there is still there, unchanged.
    for path, (size, digest) in session.store_before.items():
        now = session.store_after[path]
        assert len(now) >= size and hashlib.sha256(now[:size]).hexdigest() == digest, path
    written = json.loads(session.live_export.stdout)["written"]
    assert written >= 1 and len(read_demos(session.live_export_out)) == written


@pytest.mark.slow
def test_export_round_trips_the_stored_episodes_into_bc_train(session):
    run, out = session.run, session.tmp / "all.hdf5"
    proc = run_q2rl("episodes", "export", str(run), "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    stored = complete_training_episodes(run)
    exported = read_demos(out, cameras=("front",), load_next_obs=True)
    assert len(exported) == len(stored) == json.loads(proc.stdout)["written"]
    for ep, demo in zip(stored, exported.episodes):
        np.testing.assert_array_equal(demo.actions, np.stack([t.action for t in ep.transitions]))
        np.testing.assert_array_equal(demo.states, np.stack([t.obs["state"] for t in ep.transitions]))
        np.testing.assert_array_equal(demo.images["front"], np.stack([t.obs["images"]["front"] for t in ep.transitions]))
        assert demo.success == ep.report.success
    # The filters: successes only, and episodes pi_BC ran alone (Q-Estimation's rollouts at least).
    only = session.tmp / "bc_successes.hdf5"
    proc = run_q2rl("episodes", "export", str(run), "--out", str(only), "--only-success", "--source", "bc",
                    "--no-progress")
    expected = [ep for ep in stored if ep.report.success and all(t.source == "bc" for t in ep.transitions)]
    if expected:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert len(read_demos(only)) == len(expected)
    else:
        assert proc.returncode == 1 and "no stored episode matched" in proc.stderr
    # `q2rl bc train` accepts the file.
    proc = run_q2rl("bc", "train", "--demos", str(out), "--out", str(session.tmp / "bc_retrained"), "--steps", "20",
                    "--no-progress", "bc.train.eval_every=10", "bc.train.successes_only=false")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["steps"] == 20


@pytest.mark.slow
def test_export_skips_a_torn_last_record_with_a_warning_and_never_cuts_it(session):
    copy = session.tmp / "torn"
    shutil.copytree(session.run, copy, ignore=shutil.ignore_patterns("spool", "report"))
    segment = segment_files(copy)[-1]
    with open(segment, "ab") as f:
        f.write(b"\x40\x00\x00\x00\x12\x34\x56\x78 half a record")  # a header promising 64 bytes, 14 written
    digest = hashlib.sha256(segment.read_bytes()).hexdigest()
    out = session.tmp / "torn.hdf5"
    proc = run_q2rl("episodes", "export", str(copy), "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "truncated last record" in proc.stderr
    assert hashlib.sha256(segment.read_bytes()).hexdigest() == digest  # the torn tail is still there
    assert len(read_demos(out)) == len(complete_training_episodes(session.run))


def border_source(frame_bgr: np.ndarray) -> str:
    """The source whose colour the frame's top border band is nearest to."""
    band = frame_bgr[2:8, 20:-20, ::-1].reshape(-1, 3).mean(axis=0)
    return min(SOURCE_RGB, key=lambda s: np.linalg.norm(band - np.array(SOURCE_RGB[s])))


def decode(path: Path) -> list[np.ndarray]:
    capture, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


def check_report(report: Path) -> dict:
    """Every PNG opens at the figure size; the MP4 decodes to one frame per recorded step, and each frame's border
    has the colour of the source that step ran; the page names every file. Returns rollouts.json."""
    for name in ("success.png", "bc_share.png", "q_values.png"):
        image = cv2.imread(str(report / name))
        assert image is not None and image.shape == (FIGURE_PIXELS[1], FIGURE_PIXELS[0], 3), name
    manifest = json.loads((report / "rollouts.json").read_text())
    frames = decode(report / "rollouts.mp4")
    assert len(frames) == len(manifest["frames"]) == sum(r["steps"] for r in manifest["rollouts"]) > 0
    assert frames[0].shape[:2] == frame_shape(VIEW)
    assert [border_source(f) for f in frames] == [s["source"] for s in manifest["frames"]]
    assert len(decode(report / "rollouts.webm")) == len(frames)
    page = (report / "index.html").read_text()
    for name in ("success.png", "bc_share.png", "q_values.png", "rollouts.mp4", "rollouts.webm"):
        assert name in page
    return manifest


@pytest.mark.slow
def test_report_of_a_sim_run_renders_evaluation_rollouts_with_the_gate_marked(session):
    proc = run_q2rl("report", str(session.run), "--episodes", "2", "--size", str(VIEW), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = check_report(session.run / "report")
    assert [r["label"].startswith("evaluation episode") for r in manifest["rollouts"]] == [True, True]
    assert all(r["gated"] for r in manifest["rollouts"])  # the last checkpoint is online: the gate chose
    assert {s["rollout"] for s in manifest["frames"]} == {0, 1}


@pytest.mark.slow
def test_report_of_a_robot_run_shows_the_stored_camera_frames_and_their_recorded_sources(session):
    # Enough episodes to reach back to the Q-Estimation rollouts: pi_BC's steps and pi_RL's are both in the video.
    proc = run_q2rl("report", str(session.run), "--frames", "store", "--episodes", "20", "--size", str(VIEW),
                    "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = check_report(session.run / "report")
    assert {s["source"] for s in manifest["frames"]} == {"bc", "rl"}
    last = complete_training_episodes(session.run)[-20:]
    assert [r["steps"] for r in manifest["rollouts"]] == [len(ep.transitions) for ep in last]
    recorded = [(t.q_bc, t.q_rl, t.source) for ep in last for t in ep.transitions]
    assert [(s["q_bc"], s["q_rl"], s["source"]) for s in manifest["frames"]] == recorded


@pytest.mark.slow
def test_the_metrics_history_reads_back_with_the_expected_tags_and_steps(session):
    run = session.run
    status = read_json(run / "status.json")
    learner = read_scalars(learner_dir(run))
    for tag in ("learning/critic_loss", "learning/q_mean", "learning/temperature", "utd/achieved", "utd/target",
                "rate/updates_per_s", "rate/env_steps_per_s", "share/bc_train", "success/train", "success/eval",
                "share/bc_eval", "replay/size", "actors/connected", "progress/q_estimation_steps_left",
                "gate/q_bc_mean", "gate/q_rl_mean", "q_estimation/value_loss_last", "q_estimation/critic_steps",
                "episode/length_mean"):
        assert learner.get(tag), tag
    steps = [p.step for points in learner.values() for p in points]
    assert 0 <= min(steps) and max(steps) == status["env_steps"]  # the final status is the last point
    curve = status["eval_curve"]
    assert [p.step for p in learner["success/eval"]] == [p["env_steps"] for p in curve]
    assert [p.value for p in learner["success/eval"]] == pytest.approx([p["success_rate"] for p in curve])
    assert {p.value for p in learner["utd/target"]} == {1.0}
    assert min(p.step for p in learner["learning/critic_loss"]) > 0  # updates start after the rollouts

    # Per actor, from the learner: one point per reported episode.
    reports = [ep.report for ep in EpisodeStore(run, read_only=True).episodes("actor-0") if ep.report is not None]
    episodes = read_scalars(actor_episodes_dir(run, "actor-0"))
    assert len(episodes["episode/length"]) == sum(not r.eval and not r.cut for r in reports)
    assert [p.value for p in episodes["episode/length"]] == [r.length for r in reports if not r.eval and not r.cut]
    assert len(episodes["eval_episode/success"]) == sum(r.eval and not r.cut for r in reports)
    assert max(p.step for p in episodes["episode/length"]) <= status["env_steps"]

    # The actor's own link health and loop timing, once a second; x: the transitions it sent.
    loop = read_scalars(actor_loop_dir(run, "actor-0"))
    for tag in ("loop/steps_per_s", "loop/recent_max_gap_ms", "loop/waiting_for_learner_s", "link/spooled",
                "link/param_version"):
        assert loop.get(tag), tag
    assert max(p.step for p in loop["link/spooled"]) <= status["env_steps"]
