"""`q2rl report RUN`: what a run did, as the paper's figures, a rollout video and a page, in RUN/report/.

    q2rl report runs/<run> [--episodes 3] [--checkpoint last|best] [--frames auto|sim|store]

    RUN/report/
        success.png      evaluation success vs env steps: a Wilson 95 % interval per eval window, pi_BC's level
                         (the windows evaluated before online RL), the final evaluations
        bc_share.png     the share of executed actions that came from pi_BC vs env steps, training and evaluation
                         (paper Fig. 5)
        q_values.png     Q_BC and Q_RL along one rollout, each step marked with the action that ran
        rollouts.mp4     rollouts whose frames carry a coloured border, green where pi_BC's action ran and red
                         where pi_RL's did, and a caption with the step, Q_BC and Q_RL (paper Fig. 6b); MPEG-4, as
                         OpenCV writes it without extra codecs
        rollouts.webm    the same frames in VP8, which browsers play (they do not play MPEG-4 part 2)
        rollouts.json    what every frame shows: rollout, step, Q_BC, Q_RL, source
        index.html       all of it on one page

Where the rollouts come from (`--frames`): a simulated run runs `--episodes` evaluation episodes now, with the run's
checkpoint, through the actor's own episode loop (Actor.evaluate, with a per-step hook), rendering the front camera;
a real-robot run has no simulator, so the video shows the camera frames of the last complete training episodes in
the episode store, with the gate's values and sources recorded with them (`--frames store` does that for a simulated
run with cameras too).

Read-only on the run, so it works on a live run and on a crashed one: it reads status.json (or summary.json), the
checkpoint (both replaced atomically by the learner) and the episode store opened read-only (no torn tail is cut,
nothing is locked); it writes only under RUN/report/.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import html
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from q2rl.progress import EvalPoint, LearnerStatus
from q2rl.stats import wilson_interval

log = logging.getLogger("q2rl.report")

REPORT_DIR = "report"
SUCCESS_PNG, BC_SHARE_PNG, Q_VALUES_PNG = "success.png", "bc_share.png", "q_values.png"
VIDEO_MP4, VIDEO_WEBM, FRAMES_JSON, INDEX_HTML = "rollouts.mp4", "rollouts.webm", "rollouts.json", "index.html"
FIGURE_INCHES, FIGURE_DPI = (8.0, 4.5), 100  # every PNG is 800 x 450 pixels
FIGURE_PIXELS = (int(FIGURE_INCHES[0] * FIGURE_DPI), int(FIGURE_INCHES[1] * FIGURE_DPI))  # (width, height)
# Frame layout: the camera view, a caption strip under it, and a border of the source's colour around both.
BORDER, CAPTION = 12, 44
SOURCE_RGB = {"bc": (0, 190, 0), "rl": (225, 30, 30), "human": (40, 90, 235)}  # BC green, RL red (paper Fig. 6b)


# ------------------------------------------------------------------------------------------------- the curves


def successes_of(rate: float, episodes: int) -> int:
    return int(round(rate * episodes))


@dataclasses.dataclass(frozen=True)
class Level:
    """A success rate over a number of episodes, and what it is."""

    rate: float
    episodes: int
    label: str

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(successes_of(self.rate, self.episodes), self.episodes)


def bc_level(curve: Sequence[EvalPoint]) -> Level | None:
    """pi_BC's success under the run's own evaluation protocol: the eval windows that closed before any update (the
    actors run pi_BC alone until the first parameters arrive), pooled; None when there were none."""
    before = [p for p in curve if p.updates == 0 and p.eval_bc_share in (None, 1.0) and p.episodes > 0]
    n = sum(p.episodes for p in before)
    if not n:
        return None
    k = sum(successes_of(p.success_rate, p.episodes) for p in before)
    return Level(k / n, n, f"pi_BC alone: {k / n:.0%} ({n} eval episodes before online RL)")


def load_status(run_dir: Path) -> LearnerStatus | None:
    """The learner's newest status (status.json, or the summary a finished session left); None before either."""
    from q2rl.progress import read_learner_status
    from q2rl.run_dir import SUMMARY_FILE, read_json

    try:
        status = read_learner_status(run_dir)
    except (json.JSONDecodeError, TypeError, ValueError) as e:  # not replaced atomically by some other tool
        log.warning("%s/status.json is unreadable (%s)", run_dir, e)
        status = None
    if status is not None:
        return status
    summary = read_json(run_dir / SUMMARY_FILE)
    if summary is None:
        return None
    return LearnerStatus(env_steps=int(summary.get("env_steps", 0)),
                         eval_curve=[EvalPoint(**p) for p in summary.get("eval_curve", [])],
                         best_eval=EvalPoint(**summary["best_eval"]) if summary.get("best_eval") else None)


def final_levels(run_dir: Path) -> list[Level]:
    """The fresh evaluations of the last and the best checkpoint (final_eval.json, best_eval.json), if any."""
    from q2rl.run_dir import BEST_EVAL_FILE, FINAL_EVAL_FILE, read_json

    levels = []
    for file, what in ((FINAL_EVAL_FILE, "last checkpoint"), (BEST_EVAL_FILE, "best checkpoint")):
        try:
            result = read_json(run_dir / file)
        except json.JSONDecodeError:
            result = None
        if isinstance(result, dict) and result.get("episodes") and result.get("success_rate") is not None:
            actions = f" ({result['actions']})" if result.get("actions") else ""
            levels.append(Level(float(result["success_rate"]), int(result["episodes"]),
                                f"{what}, fresh evaluation{actions}: {result['success_rate']:.0%} "
                                f"({result['episodes']} episodes)"))
    return levels


def _figure():
    from matplotlib.figure import Figure  # the object API with Agg: no pyplot state, no display needed

    figure = Figure(figsize=FIGURE_INCHES, dpi=FIGURE_DPI, layout="constrained")
    return figure, figure.add_subplot()


def _save(figure, path: Path) -> Path:
    figure.savefig(path, dpi=FIGURE_DPI, format="png")
    return path


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def plot_success(curve: Sequence[EvalPoint], bc: Level | None, finals: Sequence[Level], best: EvalPoint | None,
                 env_steps: int, protocol: str, title: str, path: Path) -> Path:
    """Evaluation success vs env steps with a Wilson 95 % band, pi_BC's level, the final evaluations."""
    figure, ax = _figure()
    if curve:
        x = np.array([p.env_steps for p in curve])
        y = np.array([p.success_rate for p in curve])
        bands = np.array([wilson_interval(successes_of(p.success_rate, p.episodes), p.episodes) for p in curve])
        episodes = sorted({p.episodes for p in curve})
        per = "/".join(str(e) for e in episodes)
        ax.fill_between(x, bands[:, 0], bands[:, 1], color="C0", alpha=0.2, linewidth=0,
                        label="Wilson 95 % interval of each window")
        ax.plot(x, y, "o-", color="C0", markersize=3, label=f"evaluation success ({per} episodes per window)")
        train = [(p.env_steps, p.train_success) for p in curve if p.train_success is not None]
        if train:
            ax.plot(*zip(*train), color="0.55", linewidth=0.8, label="training success since the previous window")
        if best is not None:
            ax.plot([best.env_steps], [best.success_rate], "*", color="C1", markersize=12,
                    label=f"best window (checkpoint/best.ckpt): {best.success_rate:.0%}")
    else:
        _no_data(ax, "no evaluation window has closed yet")
    if bc is not None:
        lo, hi = bc.interval
        ax.axhline(bc.rate, color="C2", linestyle="--", label=bc.label)
        ax.axhspan(lo, hi, color="C2", alpha=0.08, linewidth=0)
    for i, level in enumerate(finals):
        lo, hi = level.interval
        x_end = env_steps * (1 + 0.012 * i)  # side by side where both evaluations scored alike
        ax.errorbar([x_end], [level.rate], yerr=[[level.rate - lo], [hi - level.rate]], fmt="sD"[i % 2],
                    color=f"C{3 + i}", capsize=4, label=level.label)
    ax.set(xlabel="env steps (training transitions stored)", ylabel="success rate", ylim=(-0.03, 1.03),
           title=f"{title}: evaluation success ({protocol})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    return _save(figure, path)


def plot_bc_share(curve: Sequence[EvalPoint], title: str, path: Path) -> Path:
    """The share of executed actions that were pi_BC's, per eval window: training episodes and evaluation."""
    figure, ax = _figure()
    train = [(p.env_steps, p.bc_share) for p in curve if p.bc_share is not None]
    evals = [(p.env_steps, p.eval_bc_share) for p in curve if p.eval_bc_share is not None]
    if train:
        ax.plot(*zip(*train), "o-", color="C2", markersize=3, label="training episodes since the previous window")
    if evals:
        ax.plot(*zip(*evals), "s-", color="C4", markersize=3, label="evaluation episodes of the window")
    if not train and not evals:
        _no_data(ax, "no evaluation window has closed yet")
    ax.set(xlabel="env steps (training transitions stored)", ylabel="share of actions from pi_BC",
           ylim=(-0.03, 1.03), title=f"{title}: BC-action share (1 = pi_BC's action at every step)")
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend(loc="upper right", fontsize=8)
    return _save(figure, path)


# ------------------------------------------------------------------------------------------------- rollouts


@dataclasses.dataclass(frozen=True)
class StepRecord:
    """What the gate did at one step of a rollout: its two values and the action that ran."""

    rollout: int
    step: int
    q_bc: float
    q_rl: float
    source: str  # bc | rl | human


@dataclasses.dataclass
class Rollout:
    """One episode of the video: what it is, how it ended, and its steps (one frame each)."""

    label: str
    success: bool = False
    gated: bool = True  # False: pi_BC alone (no parameters yet), the gate recorded no values
    steps: list[StepRecord] = dataclasses.field(default_factory=list)
    ended: bool = True  # False while a recorder still adds steps to it


def caption(record: StepRecord, rollout: Rollout) -> str:
    values = f"Q_BC {record.q_bc:.2f}  Q_RL {record.q_rl:.2f}" if rollout.gated else "pi_BC alone (no Q yet)"
    return f"#{record.rollout + 1}  step {record.step}  {values}  {record.source.upper()}"


def compose_frame(view: np.ndarray, source: str, text: str, size: int) -> np.ndarray:
    """The video frame (RGB) of one step: the view scaled to size x size, the caption under it, and a border of
    the executed source's colour around both."""
    import cv2

    if view.shape[:2] != (size, size):
        shrink = view.shape[0] > size
        view = cv2.resize(view, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    frame = np.empty((size + CAPTION + 2 * BORDER, size + 2 * BORDER, 3), np.uint8)
    frame[:] = SOURCE_RGB.get(source, (128, 128, 128))
    frame[BORDER:BORDER + size, BORDER:BORDER + size] = view[..., :3]
    strip = frame[BORDER + size:BORDER + size + CAPTION, BORDER:BORDER + size]
    strip[:] = (24, 24, 24)
    font = cv2.FONT_HERSHEY_SIMPLEX
    (width, height), _ = cv2.getTextSize(text, font, 1.0, 1)
    # The whole caption on one line, as large as fits (small glyphs round wider than getTextSize says: a margin)
    scale = min(0.6, 0.9 * (size - 12) / width)
    cv2.putText(strip, text, (6, (CAPTION + int(height * scale)) // 2), font, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return frame


def frame_shape(size: int) -> tuple[int, int]:
    """(height, width) of a video frame for a view of size x size."""
    return size + CAPTION + 2 * BORDER, size + 2 * BORDER


class VideoSink:
    """Frames into rollouts.mp4 ('mp4v') and rollouts.webm (VP8) as they are made, so no rollout is held in
    memory."""

    def __init__(self, report_dir: Path, size: int, fps: float):
        import cv2

        height, width = frame_shape(size)
        self.paths = (report_dir / VIDEO_MP4, report_dir / VIDEO_WEBM)
        fourcc = cv2.VideoWriter_fourcc
        self.writers = [cv2.VideoWriter(str(self.paths[0]), fourcc(*"mp4v"), fps, (width, height))]
        with _quiet_stderr():  # FFmpeg says WebM has no codec tags, then writes VP8 as asked
            self.writers.append(cv2.VideoWriter(str(self.paths[1]), fourcc(*"VP80"), fps, (width, height)))
        if not self.writers[0].isOpened():
            raise RuntimeError(f"OpenCV cannot write {self.paths[0]} (codec mp4v)")
        if not self.writers[1].isOpened():
            log.warning("OpenCV cannot write VP8 WebM here; the page links the MP4 only")
        self.frames = 0

    def add(self, rgb_frame: np.ndarray) -> None:
        bgr = np.ascontiguousarray(rgb_frame[..., ::-1])
        for writer in self.writers:
            if writer.isOpened():
                writer.write(bgr)
        self.frames += 1

    def close(self) -> None:
        for writer in self.writers:
            writer.release()


@contextlib.contextmanager
def _quiet_stderr():
    """Silence what C libraries print to file descriptor 2 meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def count_video_frames(path: Path) -> int:
    """Frames a video decodes to (OpenCV), 0 when it does not open: what the report checks it wrote."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    n = 0
    try:
        while capture.read()[0]:
            n += 1
    finally:
        capture.release()
    return n


def _progress(total: int | None, unit: str, description: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=description, disable=not enabled, leave=False, file=sys.stderr,
                unit_scale=unit == "B")


class RenderingEnv:
    """The actor's env, rendering `camera` at `size` pixels at every reset and step: `before_step` is the view of
    the scene the last action was chosen in (the video's frame of that step)."""

    def __init__(self, env, camera: str, size: int):
        self.env, self.camera, self.size = env, camera, size
        self.view = self.before_step = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        result = self.env.reset(seed=seed, options=options)
        self.view = self.env.render_view(self.camera, self.size)
        return result

    def step(self, action):
        result = self.env.step(action)
        self.before_step, self.view = self.view, self.env.render_view(self.camera, self.size)
        return result

    def close(self) -> None:
        self.env.close()


class RolloutRecorder:
    """The actor's recorder (Actor(recorder=...)): every step's gate record, as the actor stored it in its
    Transition, with the view of the scene it decided on, composed into a video frame for `on_frame`."""

    def __init__(self, env: RenderingEnv, on_frame: Callable[[np.ndarray], None], label: Callable[[int], str],
                 on_step: Callable[[], None] = lambda: None):
        self.env, self.on_frame, self.label, self.on_step = env, on_frame, label, on_step
        self.gated = True  # False when the checkpoint predates online RL: pi_BC alone, no Q values
        self.rollouts: list[Rollout] = []

    def add(self, t) -> None:
        if not self.rollouts or self.rollouts[-1].ended:
            self.rollouts.append(Rollout(self.label(len(self.rollouts)), gated=self.gated, ended=False))
        rollout = self.rollouts[-1]
        record = StepRecord(len(self.rollouts) - 1, int(t.step), float(t.q_bc), float(t.q_rl), t.source)
        rollout.steps.append(record)
        self.on_frame(compose_frame(self.env.before_step, record.source, caption(record, rollout), self.env.size))
        self.on_step()

    def end_episode(self, report) -> None:
        if self.rollouts and not self.rollouts[-1].ended:
            self.rollouts[-1].success, self.rollouts[-1].ended = bool(report.success), True


def sim_rollouts(cfg, run_dir: Path, checkpoint: str, episodes: int, first_seed: int, camera: str, size: int,
                 on_frame: Callable[[np.ndarray], None], progress: bool) -> tuple[list[Rollout], str]:
    """Evaluation episodes now, with the run's checkpoint, through the actor's own loop (Actor.evaluate, as the
    run evaluates: actor.eval_deterministic), recorded step by step (Actor's recorder) with a `size`-pixel render of
    `camera` of each scene the gate decided on. Returns the rollouts and what they show."""
    from q2rl.actor.actor import Actor
    from q2rl.core.checkpoint import load_bc_policy
    from q2rl.core.parameters import load_checkpoint_params
    from q2rl.robot.envs import make_env
    from q2rl.run_dir import CHECKPOINTS

    path = run_dir / CHECKPOINTS[checkpoint]
    env = RenderingEnv(make_env(cfg.env), camera, size)
    try:
        bar = _progress(episodes * env.env.max_episode_steps, "step", "rollouts", progress)
        recorder = RolloutRecorder(env, on_frame, lambda i: f"evaluation episode {i + 1} (reset seed "
                                   f"{first_seed + i})", on_step=bar.update)
        actor = Actor(cfg, env, load_bc_policy(cfg.bc.checkpoint), sink=None, source=None, recorder=recorder)
        params, metadata = load_checkpoint_params(path, actor.template)  # no Learner: only what acting needs
        book = metadata["book"]
        recorder.gated = gated = book["phase"] == "online"
        if gated:
            actor.set_params(params, book["param_version"])
        actor.evaluate(episodes, first_seed=first_seed, report=False)
        bar.close()
    finally:
        env.close()
    protocol = "modes" if cfg.actor.eval_deterministic else "sampled actions"
    what = (f"{episodes} evaluation episode(s) run now with {path.name} (param version {book['param_version']}, "
            f"{book['updates']} updates; {protocol}), front camera rendered at {size} px"
            if gated else f"{episodes} evaluation episode(s) of pi_BC alone: {path.name} was saved before online RL")
    return recorder.rollouts, what


def _transition_source(t) -> str:
    return t.source if t.source in SOURCE_RGB else "bc"


def stored_rollouts(run_dir: Path, episodes: int, camera: str | None, size: int,
                    on_frame: Callable[[np.ndarray], None], progress: bool) -> tuple[list[Rollout], str]:
    """The last `episodes` complete training episodes in the episode store (opened read-only), with their stored
    camera frames and the gate's values and sources recorded with them: the real robot's rollouts."""
    import collections

    from q2rl.learner.episode_store import EpisodeStore

    store = EpisodeStore(run_dir, read_only=True)
    total = sum(p.stat().st_size for p in store.segment_paths())
    bar = _progress(total, "B", "episode store", progress)
    last: collections.deque = collections.deque(maxlen=episodes)
    for ep in store.episodes(on_bytes=bar.update):
        if ep.complete and ep.transitions and not (ep.report is not None and (ep.report.cut or ep.report.eval)):
            last.append(ep)
    bar.close()
    if not last:
        raise ReportError(f"{run_dir}/episodes holds no complete training episode yet")
    cameras = sorted(last[-1].transitions[0].obs.get("images", {}))
    if not cameras:
        raise ReportError(f"the episodes in {run_dir}/episodes carry no camera images (a state-only run): there are "
                          "no frames to show; for a simulated run use --frames sim")
    camera = camera if camera in cameras else ("front" if "front" in cameras else cameras[0])
    rollouts = []
    for i, ep in enumerate(last):
        success = ep.report.success if ep.report is not None else bool(ep.transitions[-1].terminated)
        rollout = Rollout(f"{ep.actor_id} training episode {ep.episode_id}", success=bool(success),
                          gated=any(t.param_version > 0 for t in ep.transitions))
        for t in ep.transitions:
            record = StepRecord(i, int(t.step), float(t.q_bc), float(t.q_rl), _transition_source(t))
            rollout.steps.append(record)
            on_frame(compose_frame(np.asarray(t.obs["images"][camera]), record.source, caption(record, rollout), size))
        rollouts.append(rollout)
    return rollouts, f"the last {len(rollouts)} complete training episode(s) stored, camera {camera!r} as recorded"


def featured_rollout(rollouts: Sequence[Rollout]) -> Rollout | None:
    """The rollout q_values.png shows: the first in which both pi_BC's and pi_RL's actions ran, else the first."""
    mixed = [r for r in rollouts if len({s.source for s in r.steps}) > 1]
    return (mixed or list(rollouts) or [None])[0]


def plot_q_values(rollout: Rollout | None, title: str, path: Path) -> Path:
    """Q_BC and Q_RL along one rollout; each step's background shows which action ran (green BC, red RL)."""
    from matplotlib.ticker import MaxNLocator

    figure, ax = _figure()
    if rollout is None or not rollout.steps:
        _no_data(ax, "no rollout")
    else:
        steps = np.array([s.step for s in rollout.steps])
        q_bc = np.array([s.q_bc for s in rollout.steps])
        q_rl = np.array([s.q_rl for s in rollout.steps])
        for s in rollout.steps:
            ax.axvspan(s.step - 0.5, s.step + 0.5, color=np.array(SOURCE_RGB[s.source]) / 255, alpha=0.15, linewidth=0)
        ax.plot(steps, q_bc, color="darkgreen", label="Q_BC: Qhat_BC(s, a_BC)")
        ax.plot(steps, q_rl, color="darkred", label="Q_RL: min over heads Q_RL(s, a_RL)")
        ran = np.where([s.source == "rl" for s in rollout.steps], q_rl, q_bc)
        colours = [np.array(SOURCE_RGB[s.source]) / 255 for s in rollout.steps]
        ax.scatter(steps, ran, c=colours, s=12, zorder=3, label="the executed action's value (colour: its source)")
        rl = sum(s.source == "rl" for s in rollout.steps)
        outcome = "success" if rollout.success else "failure"
        ax.set_title(f"{title}: {rollout.label}, {outcome}, pi_RL's action at {rl} of {len(rollout.steps)} steps",
                     fontsize=9)
        if not rollout.gated:
            _no_data(ax, "pi_BC alone: the gate had no parameters yet, so no Q values")
        ax.legend(loc="best", fontsize=7)
    ax.set(xlabel="step", ylabel="Q value")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    return _save(figure, path)


# ------------------------------------------------------------------------------------------------- the page


def write_index(report_dir: Path, title: str, facts: Sequence[tuple[str, str]], video_note: str,
                has_webm: bool) -> Path:
    """index.html beside the figures and the video (relative links: the folder can be copied anywhere)."""
    e = html.escape
    rows = "\n".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in facts)
    sources = (f'<source src="{VIDEO_WEBM}" type="video/webm">' if has_webm else "") + \
        f'<source src="{VIDEO_MP4}" type="video/mp4">'
    video = (f'<video controls loop muted width="520">{sources}</video>'
             f'<p>{e(video_note)}. Border: <b style="color:#00be00">green</b> pi_BC\'s action ran, '
             f'<b style="color:#e11e1e">red</b> pi_RL\'s. <a href="{VIDEO_MP4}">{VIDEO_MP4}</a> · '
             f'<a href="{FRAMES_JSON}">{FRAMES_JSON}</a> (every frame\'s values)</p>') if video_note else \
        "<p>No rollout video (see the command's output for why).</p>"
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{e(title)}</title>
<style>body{{font-family:sans-serif;max-width:860px;margin:2em auto}}th{{text-align:left;padding-right:1em}}
img{{max-width:100%}}</style></head><body>
<h1>{e(title)}</h1>
<table>{rows}</table>
<h2>Evaluation success</h2><img src="{SUCCESS_PNG}" alt="success vs env steps">
<h2>BC-action share</h2><img src="{BC_SHARE_PNG}" alt="BC-action share vs env steps">
<h2>Q_BC and Q_RL along one rollout</h2><img src="{Q_VALUES_PNG}" alt="Q values along a rollout">
<h2>Rollouts</h2>{video}
<p>Every logged scalar over time: <code>tensorboard --logdir {e(str(report_dir.parent / "tensorboard"))}</code></p>
</body></html>
"""
    path = report_dir / INDEX_HTML
    path.write_text(page)
    return path


# ------------------------------------------------------------------------------------------------- the command


class ReportError(RuntimeError):
    """The report cannot be made as asked; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class ReportResult:
    report_dir: Path
    figures: tuple[Path, ...]
    video: Path | None
    video_frames: int
    rollouts: tuple[Rollout, ...]


def load_run_config(run_dir: Path):
    """The run's config as the run used it; the token is left out (a reader needs none)."""
    from q2rl.config import load_config
    from q2rl.run_config import RunConfig
    from q2rl.run_dir import CONFIG_FILE, open_run_dir, with_run_inputs

    open_run_dir(run_dir)
    cfg = load_config(RunConfig, run_dir / CONFIG_FILE, ["learner.token=", "learner.token_file="])
    return with_run_inputs(cfg, run_dir)  # its pi_BC (RUN/bc/) from any working directory


def make_report(run_dir: Path, episodes: int = 3, checkpoint: str = "last", frames: str = "auto", size: int = 320,
                fps: float = 10.0, first_seed: int = 1_000_000, camera: str | None = None,
                progress: bool = True) -> ReportResult:
    """Write RUN/report/ (see the module docstring)."""
    from q2rl.run_dir import CHECKPOINTS

    cfg = load_run_config(run_dir)
    out = run_dir / REPORT_DIR
    out.mkdir(exist_ok=True)
    title = run_dir.resolve().name
    status = load_status(run_dir) or LearnerStatus()
    curve = status.eval_curve
    protocol = "policies' modes" if cfg.actor.eval_deterministic else "sampled actions, as in training"
    figures = [
        plot_success(curve, bc_level(curve), final_levels(run_dir), status.best_eval, status.env_steps, protocol,
                     title, out / SUCCESS_PNG),
        plot_bc_share(curve, title, out / BC_SHARE_PNG),
    ]
    rollouts: list[Rollout] = []
    video_note, frames_written, video = "", 0, None
    if episodes > 0:
        if frames == "auto":
            frames = "sim" if cfg.env.backend == "sim" else "store"
        if frames == "sim" and not (run_dir / CHECKPOINTS[checkpoint]).is_file():
            raise ReportError(f"{run_dir / CHECKPOINTS[checkpoint]} does not exist yet: no checkpoint to roll out "
                              "(--frames store shows stored camera frames instead; --episodes 0 skips the video)")
        if frames == "store" and not cfg.env.camera_shapes():
            raise ReportError("the run records no camera images (a state-only run): no stored frames to show; "
                              + ("use --frames sim" if cfg.env.backend == "sim" else "--episodes 0 skips the video"))
        sink = VideoSink(out, size, fps)
        try:
            if frames == "sim":
                rollouts, video_note = sim_rollouts(cfg, run_dir, checkpoint, episodes, first_seed, camera or "front",
                                                    size, sink.add, progress)
            else:
                rollouts, video_note = stored_rollouts(run_dir, episodes, camera, size, sink.add, progress)
        finally:
            sink.close()
        frames_written = sink.frames
        decoded = count_video_frames(sink.paths[0])
        if decoded != frames_written:
            raise ReportError(f"{sink.paths[0]} decodes to {decoded} frames, {frames_written} were written")
        video = sink.paths[0]
        write_frames_json(out / FRAMES_JSON, rollouts, video_note, fps, size)
    figures.append(plot_q_values(featured_rollout(rollouts), title, out / Q_VALUES_PNG))
    facts = run_facts(cfg, status, run_dir)
    write_index(out, f"q2rl run {title}", facts, video_note, has_webm=(out / VIDEO_WEBM).is_file() and video is not None)
    return ReportResult(out, tuple(figures), video, frames_written, tuple(rollouts))


def write_frames_json(path: Path, rollouts: Sequence[Rollout], what: str, fps: float, size: int) -> None:
    """What every video frame shows, in frame order."""
    data = {"what": what, "fps": fps, "view_pixels": size, "frame_shape": list(frame_shape(size)),
            "border_rgb": SOURCE_RGB,
            "rollouts": [{"label": r.label, "success": r.success, "gated": r.gated, "steps": len(r.steps)}
                         for r in rollouts],
            "frames": [dataclasses.asdict(s) for r in rollouts for s in r.steps]}
    path.write_text(json.dumps(data, indent=1))


def run_facts(cfg, status: LearnerStatus, run_dir: Path) -> list[tuple[str, str]]:
    facts = [("task", f"{cfg.env.task_name()} ({cfg.env.backend})"), ("algorithm", cfg.agent.algo),
             ("phase", status.phase), ("env steps", str(status.env_steps)),
             ("training episodes", f"{status.episodes} ({status.train_successes} successful, "
                                   f"{status.cut_episodes} cut)"),
             ("updates", str(status.updates)), ("eval windows", str(len(status.eval_curve)))]
    if status.eval_curve:
        last = status.eval_curve[-1]
        facts.append(("last eval window", f"{last.success_rate:.0%} over {last.episodes} episodes at "
                                          f"{last.env_steps} env steps"))
    facts += [(level.label.split(":")[0], level.label.split(": ", 1)[1]) for level in final_levels(run_dir)]
    return facts


def parse_args(argv: list[str]) -> argparse.Namespace:
    from q2rl.run_dir import CHECKPOINTS

    p = argparse.ArgumentParser(prog="q2rl report", description=(
        "Write RUN/report/: success vs env steps (Wilson 95 % intervals, pi_BC's level), the BC-action share, Q_BC "
        "and Q_RL along a rollout, a rollout video with source-coloured borders, and index.html. Read-only on the "
        "run: safe on a live or crashed run."))
    p.add_argument("run", metavar="RUN", help="run directory (runs/<name>)")
    p.add_argument("--episodes", type=int, default=3,
                   help="rollouts in the video (0: figures only); sim: evaluation episodes run now")
    p.add_argument("--checkpoint", choices=tuple(CHECKPOINTS), default="last",
                   help="sim rollouts: the last checkpoint or checkpoint/best.ckpt")
    p.add_argument("--frames", choices=("auto", "sim", "store"), default="auto",
                   help="sim: run evaluation episodes now and render them; store: the camera frames of the last "
                        "stored training episodes (a real robot's); auto: sim for a simulated run, else store")
    p.add_argument("--camera", help="camera to show (default: front, or the first stored one)")
    p.add_argument("--size", type=int, default=320, help="pixels of the camera view in the video (even, >= 128)")
    p.add_argument("--fps", type=float, default=10.0, help="video frames per second (the control rate: real time)")
    p.add_argument("--seed", type=int, default=1_000_000, help="reset seed of the first sim rollout")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.size < 128 or args.size % 2:
        p.error("--size must be even and at least 128 (the caption must be readable)")
    if args.episodes < 0:
        p.error("--episodes must be >= 0")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s", stream=sys.stderr)
    from q2rl.core.checkpoint import CheckpointError
    from q2rl.run_dir import RunDirError

    try:
        result = make_report(Path(args.run), episodes=args.episodes, checkpoint=args.checkpoint, frames=args.frames,
                             size=args.size, fps=args.fps, first_seed=args.seed, camera=args.camera,
                             progress=not args.no_progress)
    except (ReportError, RunDirError, CheckpointError) as e:
        print(f"q2rl report: {e}", file=sys.stderr)
        return 2
    for path in result.figures:
        print(f"wrote {path}")
    if result.video is not None:
        print(f"wrote {result.video} ({result.video_frames} frames of {len(result.rollouts)} rollouts)")
    print(f"open {result.report_dir / INDEX_HTML}")
    return 0
