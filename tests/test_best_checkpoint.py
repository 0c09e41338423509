"""The best checkpoint (issue #32): windows ranked by the Wilson lower bound of their success, the top
learner.best_candidates states kept as checkpoint/best-*.ckpt, best.ckpt a second name of the first, a resumed
learner rebuilding the candidates from their files."""

from __future__ import annotations

import pytest
from process_util import tiny_bc_policy, tiny_run_config

from q2rl.interfaces import EpisodeReport


def test_the_lower_bound_prefers_36_of_40_to_10_of_10():
    from q2rl.candidates import rank_candidates
    from q2rl.stats import wilson_interval, wilson_lower

    lucky = {"lcb": wilson_lower(10, 10), "window": 5, "successes": 10}
    steady = {"lcb": wilson_lower(36, 40), "window": 2, "successes": 36}
    assert lucky["lcb"] == pytest.approx(0.722, abs=1e-3) and steady["lcb"] == pytest.approx(0.769, abs=1e-3)
    assert rank_candidates([lucky, steady]) == [steady, lucky]  # the raw rate (100% > 90%) would pick `lucky`
    tie = dict(steady, window=7)
    assert rank_candidates([steady, tie])[0] is tie  # ties go to the later window
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(1, 2)
    assert (round(lo, 3), round(hi, 3)) == (0.095, 0.905)


@pytest.fixture(scope="module")
def bc_checkpoint(tmp_path_factory):
    return tiny_bc_policy(tmp_path_factory.getbasetemp() / "q2rl-tiny-bc")


def test_the_top_three_windows_are_kept_and_best_ckpt_names_the_first(tmp_path, bc_checkpoint):
    from q2rl.config import load_config
    from q2rl.core.checkpoint import load_bc_policy, read_metadata
    from q2rl.learner.episode_store import EpisodeStore
    from q2rl.learner.learner import Learner
    from q2rl.run_config import RunConfig

    cfg = load_config(RunConfig, tiny_run_config(tmp_path, bc_checkpoint), ["learner.eval_window=4"])
    bc = load_bc_policy(bc_checkpoint)
    learner = Learner(cfg, tmp_path, bc, int(bc.normalizer.state_mean.shape[-1]))
    episode = iter(range(1000))

    def window(updates: int, successes: int):
        learner.book.updates = updates
        for i in range(4):
            learner.ingest_report(EpisodeReport("a", next(episode), 5, i < successes, 0.0, 0.5, eval=True))
        return learner.save_best()

    ckpt = tmp_path / "checkpoint"
    best = ckpt / "best.ckpt"
    assert window(10, 2) == best
    assert window(20, 1) is None and window(30, 0) is None  # kept, ranked below
    assert sorted(p.name for p in ckpt.glob("best-*.ckpt")) == [
        "best-000000010-0000.ckpt", "best-000000020-0001.ckpt", "best-000000030-0002.ckpt"]
    assert window(40, 4) == best  # the new first; 0/4 drops out of the top three, its file deleted
    names = sorted(p.name for p in ckpt.glob("best-*.ckpt"))
    assert names == ["best-000000010-0000.ckpt", "best-000000020-0001.ckpt", "best-000000040-0003.ckpt"]
    assert best.samefile(ckpt / "best-000000040-0003.ckpt")
    assert read_metadata(best)["candidate"]["successes"] == 4
    assert [c["successes"] for c in learner.best_candidates] == [4, 2, 1]
    assert learner.status().best_eval.env_steps == learner.book.best_eval["env_steps"]
    # A resumed learner takes the candidates from their files: a 2/4 window ties 2/4 and, later, pushes 1/4 out.
    resumed = Learner(cfg, tmp_path, bc, int(bc.normalizer.state_mean.shape[-1]))
    resumed.resume_from(EpisodeStore(tmp_path))
    assert [c["successes"] for c in resumed.best_candidates] == [4, 2, 1]
    resumed.book.updates = 50
    for i in range(4):
        resumed.ingest_report(EpisodeReport("a", 500 + i, 5, i < 2, 0.0, 0.5, eval=True))
    assert resumed.save_best() is None and best.samefile(ckpt / "best-000000040-0003.ckpt")
    assert [c["successes"] for c in resumed.best_candidates] == [4, 2, 2]
    assert not (ckpt / "best-000000020-0001.ckpt").exists()


def test_a_bc_policy_at_zero_success_is_warned_about(tmp_path):
    import json

    from q2rl.learner.bc_source import bc_failure_warning

    policy = tmp_path / "bc"
    policy.mkdir()
    (policy / "policy.ckpt").write_bytes(b"")
    assert bc_failure_warning(policy) is None  # never measured
    (policy / "eval.json").write_text(json.dumps({"success_rate": 0.0, "episodes": 20}))
    warning = bc_failure_warning(policy / "policy.ckpt")
    assert warning and "0% of 20 evaluation episodes" in warning and "q2rl bc eval" in warning
    (policy / "eval.json").write_text(json.dumps({"success_rate": 0.05, "episodes": 20}))
    assert bc_failure_warning(policy) is None
    (policy / "eval.json").unlink()
    (tmp_path / "bc_eval.json").write_text(json.dumps({"success_rate": 0.0, "episodes": 5}))  # the session's cache
    assert "0% of 5" in bc_failure_warning(policy)
