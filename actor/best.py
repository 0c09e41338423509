"""Confirming the best checkpoint on fresh episodes (a sim session's final evaluation; docs/design.md#best-checkpoint).

    q2rl actor --config RUN/config.yaml --evaluate RUN --checkpoint candidates --episodes 20

During training the learner keeps the states of the eval windows with the highest Wilson lower bound
(checkpoint/best-*.ckpt, learner.best_candidates of them) and points best.ckpt at the first. A window's figure is a
best-of-many and flatters its state, so here every candidate and the last checkpoint play the same fresh episodes
(the same reset seeds), one actor acting with each in turn; the one with the most successes wins (ties: the higher
Wilson lower bound of its window and fresh episodes pooled, then the later state), best.ckpt is pointed at it, and
best_eval.json says how it was chosen: per candidate its window (rate, successes, lower bound) and its fresh result.
The last checkpoint's own record goes to final_eval.json, as `--checkpoint last` writes it.
"""

from __future__ import annotations

import datetime
import json
import sys
import threading
from pathlib import Path

FRESH_SEED = 5_000_000  # reset seeds of the fresh episodes: not the training (seed + id) nor eval (+1e6) ones


def evaluate_candidates(cfg, run_dir: Path, episodes: int, stop: threading.Event) -> int:
    from q2rl.actor.acting import ActingPolicy, build_actor, set_policy_params
    from q2rl.core.checkpoint import CheckpointError
    from q2rl.candidates import link_file, read_best_candidates
    from q2rl.robot.envs import make_env
    from q2rl.run_dir import (BEST_CHECKPOINT_FILE, BEST_EVAL_FILE, CHECKPOINT_FILE, EVALUATIONS_LOG,
                              FINAL_EVAL_FILE, append_jsonl, write_json)
    from q2rl.stats import wilson_interval, wilson_lower

    entries = [dict(c, name=Path(c["file"]).name) for c in read_best_candidates(run_dir)]
    if (run_dir / CHECKPOINT_FILE).is_file():
        entries.append({"file": CHECKPOINT_FILE, "name": "last", "point": None, "successes": None, "lcb": None})
    if not entries:
        print(f"q2rl actor: {run_dir} has no best candidates (checkpoint/best-*.ckpt) and no last checkpoint",
              file=sys.stderr)
        return 2
    env = make_env(cfg.env)
    actor = None
    now = lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    actions = "modes" if cfg.actor.eval_deterministic else "sampled"
    try:
        for entry in entries:
            try:
                policy = ActingPolicy.from_run(run_dir, "last" if entry["name"] == "last" else "best", cfg,
                                               path=run_dir / entry["file"])
            except CheckpointError as e:
                print(f"q2rl actor: skipping {entry['file']}: {e}", file=sys.stderr)
                entry["error"] = str(e)
                continue
            if actor is None:
                actor = build_actor(policy, cfg, env)
            else:
                set_policy_params(actor, policy)
            reports = actor.evaluate(episodes, stop, first_seed=FRESH_SEED)
            k, n = sum(bool(r.success) for r in reports), len(reports)
            entry.update(policy="gated" if policy.online else "bc", updates=policy.provenance["updates"],
                         param_version=policy.param_version,
                         fresh={"successes": k, "episodes": n, "success_rate": k / max(1, n),
                                "ci95": list(wilson_interval(k, n))})
            window_k = entry["successes"] or 0
            window_n = entry["point"]["episodes"] if entry["point"] else 0
            entry["pooled_lcb"] = wilson_lower(k + window_k, n + window_n)
            print(f"q2rl actor: {entry['name']}: {k}/{n} fresh episodes"
                  + (f" (window {window_k}/{window_n}, lower bound {entry['lcb']:.2f})" if entry["point"] else ""),
                  file=sys.stderr, flush=True)
            if stop.is_set():
                break
    finally:
        env.close()
    done = [e for e in entries if "fresh" in e]
    if not done:
        print("q2rl actor: no checkpoint could be evaluated", file=sys.stderr)
        return 2
    order = {id(e): i for i, e in enumerate(entries)}
    winner = max(done, key=lambda e: (e["fresh"]["successes"], e["pooled_lcb"], e["updates"] or 0, -order[id(e)]))
    link_file(run_dir / winner["file"], run_dir / BEST_CHECKPOINT_FILE)
    n = winner["fresh"]["episodes"]
    candidates = [{
        "file": e["file"], "chosen": e is winner, "updates": e.get("updates"),
        "window": None if not e["point"] else {
            "env_steps": e["point"]["env_steps"], "success_rate": e["point"]["success_rate"],
            "episodes": e["point"]["episodes"], "successes": e["successes"], "lcb": e["lcb"]},
        "fresh": e.get("fresh"), "error": e.get("error"),
    } for e in entries]
    best = {"success_rate": winner["fresh"]["success_rate"], "episodes": n, "policy": winner["policy"],
            "actions": actions, "checkpoint": "best", "param_version": winner["param_version"],
            "updates": winner["updates"], "time": now(), "chosen_file": winner["file"],
            "chosen_on": winner["point"],  # the training-time window (None: the last checkpoint won)
            "how": (f"every best candidate (the eval windows with the highest Wilson 95% lower bound of success) and "
                    f"the last checkpoint on the same {n} fresh episodes; the most successes wins, ties to the higher "
                    f"lower bound of window and fresh episodes pooled, then the later state"),
            "candidates": candidates}
    last = next((e for e in done if e["name"] == "last"), None)
    if last is not None:
        final = {"success_rate": last["fresh"]["success_rate"], "episodes": last["fresh"]["episodes"],
                 "policy": last["policy"], "actions": actions, "checkpoint": "last",
                 "param_version": last["param_version"], "updates": last["updates"], "time": now()}
        append_jsonl(run_dir / EVALUATIONS_LOG, final)
        write_json(run_dir / FINAL_EVAL_FILE, final)
    append_jsonl(run_dir / EVALUATIONS_LOG, best)
    write_json(run_dir / BEST_EVAL_FILE, best)
    print(json.dumps(best))
    return 0
