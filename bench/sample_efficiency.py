"""Sample efficiency of Q2RL against its baselines on a simulated task (paper Fig. 5).

    .venv/bin/python bench/sample_efficiency.py --task pick_cube --algos bc,q2rl,ibrl,sac_bc --seeds 3 \
        --env-steps 6000 --out runs/bench/sample_efficiency

1. Scripted demos (noisy expert) -> a BC policy (cached under --out) whose success sits in the 30-70 % band.
2. Every algorithm x seed runs the same Actor and Learner as `q2rl session`, in one process (q2rl.local.LocalRun,
   run config from `bench_run_config`): eval success (modes, as the authors evaluate; the BC reference is pi_BC's
   mode; --no-eval-deterministic samples; --paired-eval does both on the same parameters), the share of BC actions
   and the success of the training episodes vs env steps, as the learner draws its eval curve.
3. Writes <out>/<task>.md (table) and <out>/<task>.png (two panels); the last stdout line is JSON:
   {"task": ..., "bc_success": ..., "bc_mode_success": ..., "results": {"<algo>": {"final_success": ...,
    "steps_to_bc_plus_20": ..., "dip_below_bc": ...}}}: issue #3's three targets, read off the mean curve
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def record_demos(task: str, episodes: int, noise: float, seed: int):
    """Scripted, noisy expert demonstrations as a DemoDataset (in memory)."""
    from q2rl.config import to_dict
    from q2rl.demos.hdf5 import DemoDataset
    from q2rl.demos.hdf5 import Demo
    from q2rl.robot.sim import make_sim_env
    from q2rl.robot.sim.config import SimEnvConfig
    from q2rl.robot.sim.experts import make_expert

    cfg = SimEnvConfig(task=task)
    env = make_sim_env(cfg)
    expert = make_expert(task, noise, np.random.default_rng(seed), cfg)
    demos = []
    for e in range(episodes):
        obs, _ = env.reset(seed=seed * 100_000 + e)
        expert.reset()
        states, actions, rewards, dones, done, info = [], [], [], [], False, {}
        while not done:
            action = expert.act(obs)
            states.append(obs["state"])
            actions.append(action)
            obs, reward, terminated, truncated, info = env.step(action)
            done = terminated or truncated
            rewards.append(reward)
            dones.append(done)
        demos.append(Demo(states=np.asarray(states, np.float32), actions=np.asarray(actions, np.float32),
                          rewards=np.asarray(rewards, np.float32), dones=np.asarray(dones),
                          success=bool(info.get("success", False)), seed=e))
    env.close()
    return DemoDataset(tuple(demos), {"env_name": task, "env_kwargs": to_dict(cfg)}, f"scripted:{task}")


def prepare_bc(task: str, out: Path, demos: int, noise: float, bc_steps: int, log=print):
    """Train (or load the cached) BC policy for `task`; returns (policy, demos.hdf5 it was trained on)."""
    from q2rl.bc.config import BCConfig
    from q2rl.bc.train import train_bc
    from q2rl.core.checkpoint import load_bc_policy
    from q2rl.demos.hdf5 import write_demos

    bc_dir = out / f"bc_{task}_{demos}demos_noise{noise}_{bc_steps}steps"
    demos_file = bc_dir / "demos.hdf5"  # what a demo buffer (rlpd, agent.use_demos) samples
    if (bc_dir / "policy.ckpt").exists() and demos_file.is_file():
        return load_bc_policy(bc_dir), demos_file
    dataset = record_demos(task, demos, noise, seed=0)
    bc_dir.mkdir(parents=True, exist_ok=True)
    write_demos(demos_file, dataset.episodes, dataset.env_args, overwrite=True)
    if (bc_dir / "policy.ckpt").exists():
        return load_bc_policy(bc_dir), demos_file
    log(f"training BC on {demos} scripted demos (noise {noise}) -> {bc_dir}")
    result = train_bc(dataset, BCConfig(steps=bc_steps), out_dir=bc_dir, progress=False)
    return result.policy, demos_file


def session_bc(config: str, task: str):
    """The BC policy a session of `config` uses (trained from scripted demos and cached, as `q2rl session` does),
    and the demos.hdf5 it was trained on."""
    from q2rl.config import load_config
    from q2rl.core.checkpoint import load_bc_policy
    from q2rl.learner.bc_source import with_bc_source
    from q2rl.run_config import RunConfig

    cfg = with_bc_source(load_config(RunConfig, config, [f"env.sim.task={task}"]))
    return load_bc_policy(cfg.bc.checkpoint), cfg.bc.demos


def bc_mode_cache(out: Path, task: str) -> Path:
    """Where `bc_mode_success` keeps its figure for an output dir."""
    return out / f"{task}_bc_mode.json"


def read_bc_mode(cache: Path) -> float:
    return float(json.loads(cache.read_text())["bc_mode_success"])


def bc_mode_success(task: str, bc, episodes: int, out: Path, base_config: str = "") -> float:
    """pi_BC's success with its mode (no sampling) on the evaluation resets, cached in <out>/<task>_bc_mode.json.

    Needed with --no-eval-deterministic, where the curves evaluate every policy as it acts in training (sampled
    actions): ibrl always proposes the BC mode, so this is the number its early curve should be read against. With
    modes, every curve's first point already is pi_BC's mode on the same resets.
    """
    cache = bc_mode_cache(out, task)
    if cache.exists():
        return read_bc_mode(cache)
    import tempfile

    from q2rl.local import LocalRun

    # the runs' own config (`--config`): its cameras are what pi_BC reads
    cfg = bench_run_config(task, "bc", 0, eval_episodes=episodes, eval_deterministic=True, base_config=base_config)
    with tempfile.TemporaryDirectory() as run_dir:
        actor = LocalRun(cfg, bc, run_dir, log=lambda s: None).actor  # no parameters: it acts as pi_BC alone
        reports = actor.evaluate(episodes, first_seed=EVAL_SEED, report=False)
    success = float(np.mean([r.success for r in reports]))
    cache.write_text(json.dumps({"bc_mode_success": success, "episodes": episodes}))
    return success


def steps_to_reach(steps, success, threshold: float) -> int | None:
    """First env-step count at which eval success >= threshold (None if never)."""
    for step, rate in zip(steps, success):
        if rate >= threshold - 1e-9:
            return int(step)
    return None


def bc_reference(curves: dict, field: str = "success_rate") -> float | None:
    """pi_BC's success under a protocol: the mean of the BC-based runs' first evaluation (every such run evaluates
    pi_BC first, at env step 0, on the same resets; rlpd and simplified_q have no pi_BC and no point there). None
    when no run recorded `field` (NaN)."""
    starts = [_number(getattr(c[0], field)) for cs in curves.values() for c in cs if c[0].env_steps == 0]
    starts = [x for x in starts if np.isfinite(x)]
    return float(np.mean(starts)) if starts else None


def _number(x: float | None) -> float:
    """A curve's value as a float (NaN where not recorded: None in new curves, NaN in older files)."""
    return float("nan") if x is None else float(x)


def training_bc_share(p) -> float:
    """The BC share of the training steps since the previous point; the evaluation's own where none ran (the
    first point, pi_BC alone)."""
    return _number(p.eval_bc_share if p.bc_share is None else p.bc_share)


def bc_plus_20(bc_success: float) -> float:
    """Issue #3's target line: pi_BC's success plus 20 points, capped at 1."""
    return min(bc_success + 0.2, 1.0)


def curve_figures(steps, success: np.ndarray, bc_success: float) -> dict:
    """The headline figures of one mean success curve against pi_BC's success under the same protocol."""
    lowest = float(np.min(success[1:])) if len(success) > 1 else float(success[0])
    return {
        "final_success": float(success[-1]),
        "steps_to_bc_plus_20": steps_to_reach(steps, success, bc_plus_20(bc_success)),
        "min_success_after_start": lowest,
        # issue #3's dip: how far the mean curve falls under pi_BC after the start (0 when it never does)
        "dip_below_bc": round(max(0.0, bc_success - lowest), 4),
        "success": [round(float(s), 3) for s in success],
    }


EVAL_SEED = 1_000_000  # reset seed of the first evaluation episode: every evaluation sees the same scenes


def bench_run_config(task: str, algo: str, seed: int, *, eval_episodes: int, eval_deterministic: bool,
                     preset: str = "cpu", agent_overrides: dict | None = None, learning_starts: int = 500,
                     ahead_steps: int = 1, demos: str = "", base_config: str = ""):
    """The run config of one benchmark run: a session's config (the defaults, or `base_config`, e.g.
    configs/sim/pick_cube.yaml, which `make run` runs) with the benchmark's protocol laid over it: a window of
    `eval_episodes` per point and no interleaved evaluations, and `ahead_steps` of pacing slack (1: the actor acts
    with the parameters of the update made after the step before, as a synchronous benchmark should; the lab's
    default slack is learner.ahead_steps)."""
    from q2rl.config import from_dict, merged, read_yaml
    from q2rl.run_config import RunConfig

    protocol = {
        "env": {"backend": "sim", "sim": {"task": task}},
        "agent": {**({"preset": preset} if not base_config else {}), **(agent_overrides or {}), "algo": algo},
        "learner": {"seed": seed, "eval_window": eval_episodes, "learning_starts": learning_starts,
                    "ahead_steps": ahead_steps},
        "actor": {"seed": 1000 * (seed + 1), "pace": "learner", "eval_every_episodes": 0,
                  "eval_deterministic": eval_deterministic},
        "session": {"env_steps": 10**9},  # the schedule ends the run
    }
    if demos:
        protocol["bc"] = {"demos": demos}
    return from_dict(RunConfig, merged(read_yaml(base_config) if base_config else {}, protocol))


def run_one(task: str, algo: str, seed: int, bc, demos_file, args, log=print):
    """One algorithm and seed through q2rl.local.LocalRun: the session's actor and learner in this process."""
    import tempfile

    from q2rl.local import LocalRun, LocalSchedule

    cfg = bench_run_config(task, algo, seed, eval_episodes=args.eval_episodes,
                           eval_deterministic=args.eval_deterministic, preset=args.preset,
                           agent_overrides=json.loads(args.agent_overrides), learning_starts=args.learning_starts,
                           ahead_steps=args.ahead_steps, demos=str(demos_file), base_config=args.config)
    schedule = LocalSchedule(online_steps=args.env_steps, eval_every=args.eval_every, eval_seed=EVAL_SEED,
                             paired_eval=args.paired_eval)
    with tempfile.TemporaryDirectory() as run_dir:
        return LocalRun(cfg, bc, run_dir, log=log).run(schedule)


def load_curves(paths: list[str], algos: list[str]) -> tuple[dict, set[bool]]:
    """{algo: [curve per seed]} from *_curves.jsonl files written by earlier runs of this script, and the set of
    their evaluation protocols (eval_deterministic; rows written before the flag existed sampled)."""
    from q2rl.progress import EvalPoint

    runs: dict[tuple[str, int], list] = {}
    protocols: set[bool] = set()
    for path in paths:
        if not Path(path).is_file():
            raise SystemExit(f"--report-from: {path} does not exist (a *_curves.jsonl written by this script)")
        for number, line in enumerate(Path(path).read_text().splitlines(), 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"--report-from: {path} line {number} is not JSON ({e}); a run killed while "
                                 f"writing leaves a partial last line: delete it") from None
            if row["algo"] in algos:
                runs[(row["algo"], row["seed"])] = [EvalPoint(**p) for p in row["curve"]]
                protocols.add(bool(row.get("eval_deterministic", False)))
    curves: dict[str, list] = {}
    for algo in algos:
        seeds = sorted(s for a, s in runs if a == algo)
        if seeds:
            curves[algo] = [runs[(algo, s)] for s in seeds]
    return curves, protocols


def summarise(curves: dict, bc_success: float) -> dict:
    """Mean curves over seeds and the two headline numbers per algorithm. With --paired-eval the same figures
    for the other protocol, against pi_BC's success under that protocol."""
    other_bc = bc_reference(curves, "other_protocol_success")  # None: no run used --paired-eval
    results = {}
    for algo, runs in curves.items():
        n = min(len(r) for r in runs)
        steps = [p.env_steps for p in runs[0]][:n]
        success = np.mean([[p.success_rate for p in r[:n]] for r in runs], axis=0)
        bc_share = np.mean([[training_bc_share(p) for p in r[:n]] for r in runs], axis=0)
        # training episodes are many more than the eval episodes: the last three windows are a steadier figure
        late_train = [_number(p.train_success) for r in runs for p in r[max(1, n - 3):n]]
        late_train = [t for t in late_train if np.isfinite(t)]
        figures = curve_figures(steps, success, bc_success)
        results[algo] = {
            **figures,
            "late_train_success": float(np.mean(late_train)) if late_train else None,
            "env_steps": [int(s) for s in steps],
            "bc_share": [round(float(s), 3) for s in bc_share],
            **success_data(runs, n, steps, figures["steps_to_bc_plus_20"]),
        }
        other = np.mean([[_number(p.other_protocol_success) for p in r[:n]] for r in runs], axis=0)
        if other_bc is not None and np.all(np.isfinite(other)):  # every run evaluated with --paired-eval
            results[algo]["other_protocol"] = {"bc_success": other_bc, **curve_figures(steps, other, other_bc)}
    return results


def success_data(runs: list, n: int, steps: list, bc_plus_20_at: int | None) -> dict:
    """The successful training episodes collected so far (mean over seeds) at each point of the mean curve, and at
    the point where it first reaches BC+20: whether a climb follows the success data in replay. Empty for curves
    saved before the counts were recorded."""
    counts = [[p.train_successes_total for p in r[:n]] for r in runs]
    if any(c is None for row in counts for c in row):
        return {}
    mean = [round(float(c), 1) for c in np.mean(counts, axis=0)]
    at = mean[steps.index(bc_plus_20_at)] if bc_plus_20_at is not None else None
    return {"train_successes_total": mean, "train_successes_at_bc_plus_20": at}


def write_report(task: str, results: dict, bc_success: float, out: Path, meta: dict,
                 bc_mode: float | None = None, eval_deterministic: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (algo, r) in enumerate(results.items()):
        color = f"C{i}"  # the same colour for an algorithm in both panels
        ax1.plot(r["env_steps"], r["success"], marker="o", ms=3, label=algo, color=color)
        if "other_protocol" in r:  # --paired-eval: the same points under the other protocol, dashed
            ax1.plot(r["env_steps"], r["other_protocol"]["success"], ls="--", lw=1, color=color,
                     label=f"{algo} ({'sampled' if eval_deterministic else 'modes'})")
        if algo != "bc":
            ax2.plot(r["env_steps"], r["bc_share"], marker="o", ms=3, label=algo, color=color)
    ax1.axhline(bc_success, color="gray", ls=":", lw=1)
    ax1.axhline(bc_plus_20(bc_success), color="gray", ls="--", lw=1)
    ax1.set(xlabel="env steps", ylabel="eval success", title=f"{task}: eval success", ylim=(-0.02, 1.02))
    ax2.set(xlabel="env steps", ylabel="fraction of BC actions executed", title="BC share (training episodes)",
            ylim=(-0.02, 1.02))
    ax1.legend()
    ax2.legend()
    fig.tight_layout()
    fig.savefig(out / f"{task}.png", dpi=110)
    lines = [f"# Sample efficiency on `{task}`", "",
             f"Evaluation with {'modes (BC and RL)' if eval_deterministic else 'sampled actions, as in training'}. "
             f"BC success {bc_success:.2f} (under that protocol); BC mode (no sampling, what ibrl proposes) "
             f"{'n/a' if bc_mode is None else f'{bc_mode:.2f}'}; target BC+20 = {bc_plus_20(bc_success):.2f}. "
             f"{json.dumps(meta)}", "",
             "| algo | final success | steps to BC+20 | min success after start | final BC share | "
             "training success, last 3 windows | successful training episodes by BC+20 |",
             "|---|---|---|---|---|---|---|"]
    for algo, r in results.items():
        late = "n/a" if r["late_train_success"] is None else f"{r['late_train_success']:.2f}"
        by_bc20 = r.get("train_successes_at_bc_plus_20")
        lines.append(f"| {algo} | {r['final_success']:.2f} | {r['steps_to_bc_plus_20']} | "
                     f"{r['min_success_after_start']:.2f} | {r['bc_share'][-1]:.2f} | {late} | "
                     f"{'n/a' if by_bc20 is None else f'{by_bc20:.0f}'} |")
    lines += ["", "Curves (env steps: success / BC share):", ""]
    for algo, r in results.items():
        pts = ", ".join(f"{s}: {a:.2f}/{b:.2f}" for s, a, b in zip(r["env_steps"], r["success"], r["bc_share"]))
        lines.append(f"- {algo}: {pts}")
    counted = {a: r["train_successes_total"] for a, r in results.items() if "train_successes_total" in r}
    if counted:
        lines += ["", "Successful training episodes so far (Q-Estimation's rollouts included; mean over seeds):", ""]
        for algo, counts in counted.items():
            pts = ", ".join(f"{s}: {c:.0f}" for s, c in zip(results[algo]["env_steps"], counts))
            lines.append(f"- {algo}: {pts}")
    paired = {a: r["other_protocol"] for a, r in results.items() if "other_protocol" in r}
    if paired:
        other = "sampled actions" if eval_deterministic else "modes"
        bc_other = next(iter(paired.values()))["bc_success"]
        lines += ["", f"The same points evaluated with {other} (--paired-eval: same parameters and resets; BC under that "
                      f"protocol {bc_other:.2f}, BC+20 = {bc_plus_20(bc_other):.2f}):", "",
                  "| algo | final success | steps to BC+20 | min success after start |", "|---|---|---|---|"]
        for algo, r in paired.items():
            lines.append(f"| {algo} | {r['final_success']:.2f} | {r['steps_to_bc_plus_20']} | "
                         f"{r['min_success_after_start']:.2f} |")
        lines.append("")
        for algo, r in paired.items():
            pts = ", ".join(f"{s}: {a:.2f}" for s, a in zip(results[algo]["env_steps"], r["success"]))
            lines.append(f"- {algo}: {pts}")
    (out / f"{task}.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="pick_cube")
    p.add_argument("--algos", default="bc,q2rl,ibrl,sac_bc")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="seeds run are first-seed .. first-seed+seeds-1 "
                   "(to split one comparison over parallel processes; merge with --report-from)")
    p.add_argument("--env-steps", type=int, default=6000, help="online env steps per run (the budget)")
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--eval-deterministic", action=argparse.BooleanOptionalAction, default=True,
                   help="evaluate with modes (BC and RL; the BC reference is then pi_BC's mode too), as the authors' "
                        "release and the actor's evaluation episodes do (default); --no-eval-deterministic: the gate "
                        "exactly as it runs in training (sampled actions)")
    p.add_argument("--paired-eval", action="store_true",
                   help="also evaluate every point with the other protocol on the same parameters and resets "
                        "(doubles evaluation time); the report adds that protocol's curve, final success, dip and "
                        "BC+20 point against pi_BC under that protocol")
    p.add_argument("--config", default="", help="start from this run config (e.g. configs/sim/pick_cube.yaml, what "
                   "`make run` runs: its agent preset and its BC policy, trained and cached as a session does) "
                   "instead of the defaults and the benchmark's 10-demo BC; --preset is then ignored")
    p.add_argument("--learning-starts", type=int, default=500)
    p.add_argument("--ahead-steps", type=int, default=1, help="learner.ahead_steps: env steps the actor may run "
                   "ahead of the updates (1: it acts with the update made after the step before)")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--agent-overrides", default="{}", help='JSON of AgentConfig fields, e.g. {"utd": 4}')
    p.add_argument("--demos", type=int, default=10, help="scripted demos for BC")
    p.add_argument("--demo-noise", type=float, default=0.2)
    p.add_argument("--bc-steps", type=int, default=2000)
    p.add_argument("--out", default="runs/bench/sample_efficiency")
    p.add_argument("--report-from", default="",
                   help="comma-separated *_curves.jsonl files: only write the report from saved runs "
                        "(the last run per algo and seed wins)")
    args = p.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda s: print(s, file=sys.stderr, flush=True)

    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    curves: dict[str, list] = {}
    t0 = time.time()
    merged = [p for p in args.report_from.split(",") if p]
    if merged:
        curves, protocols = load_curves(merged, algos)
        if len(protocols) > 1:
            raise SystemExit("--report-from: the files mix evaluation protocols (--eval-deterministic and not); "
                             "merge runs evaluated the same way")
        args.eval_deterministic = protocols == {True}
        algos = []
    else:
        bc, demos_file = (session_bc(args.config, args.task) if args.config else
                          prepare_bc(args.task, out, args.demos, args.demo_noise, args.bc_steps, log))
    for algo in algos:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            result = run_one(args.task, algo, seed, bc, demos_file, args, log)
            curves.setdefault(algo, []).append(result.curve)
            with open(out / f"{args.task}_curves.jsonl", "a") as f:
                f.write(json.dumps({"algo": algo, "seed": seed, "eval_deterministic": args.eval_deterministic,
                                    "curve": [dataclasses.asdict(p) for p in result.curve],
                                    "q_estimation": result.q_estimation._asdict() if result.q_estimation else None})
                        + "\n")
    bc_success = bc_reference(curves)
    if bc_success is None:  # rlpd alone: no pi_BC to compare with
        bc_success = float("nan")
    if args.eval_deterministic:
        bc_mode = bc_success  # every curve's first point evaluated pi_BC's mode on the same resets
    elif merged:
        cached = [c for c in (bc_mode_cache(Path(p).parent, args.task) for p in merged) if c.exists()]
        bc_mode = read_bc_mode(cached[0]) if cached else None
    else:
        bc_mode = bc_mode_success(args.task, bc, max(args.eval_episodes, 40), out, args.config)
    results = summarise(curves, bc_success)
    if merged:  # the run settings are those of the merged files, not this invocation's defaults
        meta = {"merged_from": merged,
                "seeds": {a: len(c) for a, c in curves.items()}}
    else:
        meta = {"env_steps": args.env_steps, "seeds": args.seeds, "first_seed": args.first_seed,
                "preset": args.preset, "overrides": json.loads(args.agent_overrides), "demos": args.demos,
                "config": args.config, "ahead_steps": args.ahead_steps, "learning_starts": args.learning_starts,
                "code_path": "q2rl.local.LocalRun (the session's Actor and Learner in one process)",
                "eval_episodes": args.eval_episodes, "eval_deterministic": args.eval_deterministic,
                "paired_eval": args.paired_eval,
                "wall_s": round(time.time() - t0)}
    write_report(args.task, results, bc_success, out, meta, bc_mode, args.eval_deterministic)
    print((out / f"{args.task}.md").read_text())
    headline_keys = ("final_success", "steps_to_bc_plus_20", "dip_below_bc")
    headline = {a: {k: r[k] for k in headline_keys} for a, r in results.items()}
    for a, r in results.items():
        if "other_protocol" in r:
            headline[a]["other_protocol"] = {k: r["other_protocol"][k] for k in ("bc_success", *headline_keys)}
    print(json.dumps({"task": args.task, "bc_success": bc_success, "bc_mode_success": bc_mode, "results": headline}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
