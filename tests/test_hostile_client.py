"""A hostile client against a real `q2rl learner` process (issue #35): a client built only from protos/q2rl.proto
streams every kind of bad value between good transitions; the learner is SIGKILLed and resumed with --resume in
between. Every bad batch is refused whole with a reason naming the seq and the field, the learner never dies, and
the episode store holds every good transition exactly once and none of the bad ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from process_util import (REPO, free_port, generate_stubs, kill_left, q2rl, read_json, start, stop_in_order,
                          tiny_bc_policy, tiny_run_config, wait_for)

from q2rl import wire
from q2rl.config import load_config
from q2rl.learner.episode_store import EpisodeStore
from q2rl.run_config import RunConfig

ACTOR = "hostile-0"  # as in hostile_client.py


def expected_reasons(state_dim: int) -> dict[str, str]:
    """What the learner's refusal must say, per kind of bad value hostile_client.py sends."""
    return {
        "action bytes": "action: 24 bytes do not fit dtype float32 shape (7,)",
        "6-D action": "action has shape (6,), the run's actions are (7,)",
        "NaN action": "action holds non-finite values",
        "float64 a_rl": "a_rl has dtype float64, the run's actions are float32",
        "unset a_bc": "a_bc is missing",
        "unspecified source": "source is ACTION_SOURCE_UNSPECIFIED",
        "short state": f"obs.state has shape ({state_dim - 1},), the run's states are ({state_dim},)",
        "NaN next state": "next_obs.state holds non-finite values",
        "camera on a state-only run": "obs.images has cameras ['depth'], the run's are []",
        "infinite reward": "reward is inf, not a finite number",
        "NaN q_rl": "q_rl is nan, not a finite number",
        "other actor": "names actor 'intruder'",
        "step jump": "step 3 does not follow step 1",
        "obs is not the previous next_obs": "obs.state differs from the next_obs.state of step 1",
        "next images promised without cameras": "next_images_in_next_transition is set, but the run has no cameras",
        "report with a NaN return": "undiscounted_return is nan",
        "report with bc_share 2": "bc_share is 2.0, not a share in [0, 1]",
        "empty item": "item carries neither a transition nor a report",
        "garbage item": "undecodable item (12 bytes)",
    }


def run_client(stubs: Path, address: str, args: dict) -> list[dict]:
    """hostile_client.py in its own process (no q2rl there); its JSON lines."""
    done = subprocess.run([sys.executable, str(REPO / "tests" / "hostile_client.py"), str(stubs), address,
                           json.dumps(args)], capture_output=True, text=True, timeout=120, cwd=stubs)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def check_refusals(lines: list[dict], reasons: dict[str, str]) -> None:
    for line in lines:
        if line["kind"] == "resend":
            continue
        n, why = line["first_seq"], f"{line['kind']}: {line}"
        assert line.get("code") == "INVALID_ARGUMENT", why
        assert reasons[line["kind"]] in line["details"], why
        assert line["bad_seq"] is None or f"transition seq {line['bad_seq']}:" in line["details"], why
        assert line["stored_after"] == n - 1, why  # nothing of the refused batch was stored, not even seq n
        assert line["good_acks"] == [n + 3], why  # and then the good batch is taken


def test_bad_values_between_good_ones_are_refused_and_survive_a_sigkill_and_resume(tmp_path):
    bc = tiny_bc_policy(tmp_path.parent / "q2rl-tiny-bc")
    port = free_port()
    config = tiny_run_config(tmp_path, bc, learner={"address": f"127.0.0.1:{port}", "run_name": "hostile"},
                             agent={"q_estimation": {"rollout_episodes": 10_000}})  # no training: not needed here
    run, logs = tmp_path / "runs" / "hostile", tmp_path / "logs"
    logs.mkdir()
    stubs = generate_stubs(tmp_path / "stubs")
    learner = start(q2rl("learner", "--config", str(config)), logs / "learner.log")
    procs = [learner]
    try:
        wait_for(lambda: (run / "learner.addr").is_file(), 120, "the learner to serve", (learner,))
        from q2rl.core.checkpoint import bc_policy_file, load_bc_policy
        from q2rl.run_config import compatibility_hash, file_digest

        from q2rl.run_dir import with_run_inputs

        cfg = with_run_inputs(load_config(RunConfig, run / "config.yaml"), run)  # bc/policy.ckpt is in the run
        state_dim = int(load_bc_policy(cfg.bc.checkpoint).normalizer.state_mean.shape[-1])
        reasons = expected_reasons(state_dim)
        args = {"config_hash": compatibility_hash(cfg, file_digest(bc_policy_file(cfg.bc.checkpoint))),
                "token": cfg.learner.token, "protocol_version": wire.PROTOCOL_VERSION, "state_dim": state_dim}
        kinds = list(reasons)
        address = f"127.0.0.1:{port}"

        first = run_client(stubs, address, {**args, "kinds": kinds[:10]})
        assert [line["kind"] for line in first] == kinds[:10]
        check_refusals(first, reasons)
        assert learner.poll() is None, "the learner died of a client's data"

        learner.kill()  # SIGKILL, then resume the run
        learner.wait()
        learner = start(q2rl("learner", "--resume", str(run)), logs / "learner-resumed.log")
        procs.append(learner)
        second = run_client(stubs, address, {**args, "kinds": kinds[10:]})
        assert [line["kind"] for line in second] == ["resend"] + kinds[10:]
        assert second[0]["acks"] == [4 * 10 - 1]  # duplicates of what the killed learner stored: dropped
        check_refusals(second, reasons)
        assert learner.poll() is None, "the resumed learner died of a client's data"
        stop_in_order(learner)
    finally:
        kill_left(procs)

    good = 4 * len(kinds)
    store = EpisodeStore(run)
    assert store.actors() == [ACTOR]  # nothing stored under another actor's name
    transitions = list(store.transitions())
    assert [t.seq for t in transitions] == list(range(good)), "every good transition stored exactly once, in order"
    assert all(t.param_version == t.seq and t.reward == -1.0 and t.source == "rl" for t in transitions), \
        "a bad transition was stored"
    reports = [ep.report for ep in store.episodes() if ep.report is not None]
    assert [(r.episode_id, r.undiscounted_return, r.bc_share) for r in reports] == [
        (e, -4.0, 0.0) for e in range(good // 4)]
    final = read_json(run / "status.json")
    assert final["env_steps"] == final["replay_size"] == good  # the learner took each good one once
    assert "resumed" in (logs / "learner-resumed.log").read_text()
    assert "left out" not in (logs / "learner-resumed.log").read_text()  # nothing bad was ever stored
    assert "refused a batch, nothing of it stored" in (logs / "learner.log").read_text()
