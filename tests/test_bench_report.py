"""bench/sample_efficiency.py's report, run as the real script on curves written to a real file: the last stdout line
carries issue #3's three figures per algorithm, worked out here from the curves by hand."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from process_util import REPO


def curve(successes: list[float], every: int = 1000) -> list[dict]:
    """An evaluation curve as the script saves it: point 0 evaluates pi_BC before any update."""
    return [{"env_steps": i * every, "success_rate": s, "bc_share": 1.0 if i == 0 else 0.5, "updates": i * every,
             "wall_s": float(i), "train_success": math.nan, "eval_bc_share": math.nan,
             "other_protocol_success": math.nan, "other_protocol_bc_share": math.nan,
             "train_episodes_total": 10 * i, "train_successes_total": 4 * i}
            for i, s in enumerate(successes)]


def report_from(tmp_path, curves_text: str, algos: str) -> subprocess.CompletedProcess:
    """The real script's --report-from on a curves file holding `curves_text`."""
    path = tmp_path / "peg_insert_curves.jsonl"
    path.write_text(curves_text)
    return subprocess.run([sys.executable, "bench/sample_efficiency.py", "--task", "peg_insert", "--algos", algos,
                           "--report-from", str(path), "--out", str(tmp_path / "report")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def run_report(tmp_path, rows: list[dict], algos: str) -> dict:
    out = report_from(tmp_path, "".join(json.dumps(r) + "\n" for r in rows), algos)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "report" / "peg_insert.md").is_file() and (tmp_path / "report" / "peg_insert.png").is_file()
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_last_line_has_final_success_bc_plus_20_and_the_dip_of_each_mean_curve(tmp_path):
    # two q2rl seeds: mean curve 0.40, 0.30, 0.35, 0.625, 0.90 -> BC 0.40, lowest 0.30 (a 10-point dip),
    # BC+20 = 0.60 first reached at 3000 steps; sac_bc never gets back to BC, so no crossing and a 35-point dip
    rows = [
        {"algo": "q2rl", "seed": 0, "eval_deterministic": True, "curve": curve([0.40, 0.25, 0.30, 0.60, 0.90])},
        {"algo": "q2rl", "seed": 1, "eval_deterministic": True, "curve": curve([0.40, 0.35, 0.40, 0.65, 0.90])},
        {"algo": "sac_bc", "seed": 0, "eval_deterministic": True, "curve": curve([0.40, 0.05, 0.10, 0.20, 0.30])},
    ]
    report = run_report(tmp_path, rows, "q2rl,sac_bc")
    assert report["task"] == "peg_insert" and report["bc_success"] == pytest.approx(0.40)
    q2rl, sac_bc = report["results"]["q2rl"], report["results"]["sac_bc"]
    assert q2rl["final_success"] == pytest.approx(0.90)
    assert q2rl["steps_to_bc_plus_20"] == 3000
    assert q2rl["dip_below_bc"] == pytest.approx(0.10)
    assert sac_bc["steps_to_bc_plus_20"] is None
    assert sac_bc["dip_below_bc"] == pytest.approx(0.35)


def test_a_curve_that_never_falls_under_bc_has_no_dip(tmp_path):
    rows = [{"algo": "q2rl", "seed": 0, "eval_deterministic": True, "curve": curve([0.40, 0.45, 0.70])}]
    assert run_report(tmp_path, rows, "q2rl")["results"]["q2rl"]["dip_below_bc"] == 0.0


def test_a_run_without_pi_bc_does_not_set_the_bc_reference(tmp_path):
    # simplified_q has no pi_BC: its first point comes after 1000 online steps and is no BC evaluation
    no_bc = curve([0.40, 0.0, 0.0])[1:]
    rows = [{"algo": "q2rl", "seed": 0, "eval_deterministic": True, "curve": curve([0.40, 0.45, 0.70])},
            {"algo": "simplified_q", "seed": 0, "eval_deterministic": True, "curve": no_bc}]
    report = run_report(tmp_path, rows, "q2rl,simplified_q")
    assert report["bc_success"] == pytest.approx(0.40)
    assert report["results"]["simplified_q"]["dip_below_bc"] == pytest.approx(0.40)


def test_a_truncated_curves_file_is_an_error_that_says_what_to_delete(tmp_path):
    good = json.dumps({"algo": "q2rl", "seed": 0, "eval_deterministic": True, "curve": curve([0.4, 0.5])})
    out = report_from(tmp_path, good + "\n" + good[:40], "q2rl")
    assert out.returncode != 0
    assert "line 2 is not JSON" in out.stderr and "delete it" in out.stderr
