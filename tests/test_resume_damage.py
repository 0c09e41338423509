"""Reopening and resuming a damaged run (issue #35): one corrupted byte in the middle of an episode file costs that
record, never the intact records after it, and nothing is cut off the file; records that fail the run's contract
(stored by a learner that did not check them) are left out of replay with a warning, never a crash."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from process_util import tiny_bc_policy, tiny_run_config

from q2rl import recordio, wire
from q2rl.learner.episode_store import EpisodeStore
from q2rl.wire import pb
from transport_util import make_episode, report_for


@pytest.fixture(scope="module")
def bc_checkpoint(tmp_path_factory):
    return tiny_bc_policy(tmp_path_factory.getbasetemp() / "q2rl-tiny-bc")


def store_items(run: Path, items: list[bytes]) -> Path:
    """Append serialized Items for actor a0 through the real store, unchecked (as an older learner did); returns
    the episode file."""
    store = EpisodeStore(run)
    for i in range(0, len(items), 16):
        store.append("a0", [(raw, wire.parse_item(raw)) for raw in items[i : i + 16]])
    store.close()
    return run / "episodes" / "a0" / "seg-000000000.rec"


def episode_items(episodes: list, spoiled: dict | None = None, reported: bool = True) -> list[bytes]:
    """Each episode's transitions then its report; `spoiled` maps seq -> a function that spoils that transition."""
    items = []
    for ep in episodes:
        for t in ep:
            m = wire.encode_transition(t)
            (spoiled or {}).get(t.seq, lambda m: None)(m)
            items.append(pb.Item(transition=m).SerializeToString())
        if reported:
            items.append(wire.encode_item_report(report_for(ep), ep[-1].seq))
    return items


def flip_a_payload_byte(path: Path, record: int) -> None:
    """Corrupt one byte in the middle of the `record`-th record of a record file."""
    data = bytearray(path.read_bytes())
    pos = len(recordio.MAGIC)
    for _ in range(record):
        pos += 8 + int.from_bytes(data[pos : pos + 4], "little")
    data[pos + 8 + 40] ^= 0x10
    path.write_bytes(bytes(data))


def test_one_flipped_byte_in_the_middle_of_an_episode_file_costs_one_record_and_cuts_nothing(tmp_path, caplog):
    run = tmp_path / "run"
    rng = np.random.default_rng(0)
    episodes = [make_episode("a0", e, 10 * e, 10, rng) for e in range(30)]  # 300 transitions, 11 records each
    path = store_items(run, episode_items(episodes))
    size = path.stat().st_size
    flip_a_payload_byte(path, 15 * 11 + 5)  # seq 155: step 5 of episode 15
    with caplog.at_level(logging.WARNING):
        store = EpisodeStore(run)
    assert path.stat().st_size == size, "intact records were cut off the file"
    assert "damaged bytes in 1 place" in caplog.text and "torn" not in caplog.text
    assert store.stored_seq("a0") == 299 and store.num_transitions == 299
    stored = list(store.episodes())
    assert [t.seq for e in stored for t in e.transitions] == [s for s in range(300) if s != 155]
    assert all(e.complete and e.report is not None for e in stored)


def test_resume_leaves_out_damaged_and_invalid_records_with_a_warning_and_never_crashes(tmp_path, bc_checkpoint,
                                                                                       caplog):
    from q2rl.config import load_config
    from q2rl.contract import TransitionContract
    from q2rl.core.checkpoint import load_bc_policy
    from q2rl.learner.learner import Learner
    from q2rl.run_config import RunConfig

    cfg = load_config(RunConfig, tiny_run_config(tmp_path, bc_checkpoint,
                                                 agent={"q_estimation": {"rollout_episodes": 1000}}))
    bc = load_bc_policy(bc_checkpoint)
    dim = int(bc.normalizer.state_mean.shape[-1])
    contract = TransitionContract(state_dim=dim, cameras=cfg.env.camera_shapes())
    rng = np.random.default_rng(1)
    episodes = [make_episode("a0", e, 10 * e, 10, rng, state_dim=dim, terminal=False) for e in range(30)]
    nan = lambda m: m.action.CopyFrom(wire.tensor_proto(np.full(7, np.nan, np.float32)))
    spoiled = {  # what a learner that stored before checking kept
        34: nan,
        79: lambda m: setattr(m, "source", pb.ACTION_SOURCE_UNSPECIFIED),
        120: lambda m: m.obs.state.CopyFrom(wire.tensor_proto(np.zeros(dim - 1, np.float32))),
        205: lambda m: m.obs.state.CopyFrom(wire.tensor_proto(np.zeros(dim, np.float32))),  # obs != previous next_obs
        299: lambda m: setattr(m, "reward", float("nan")),  # the newest record; its episode is still running
    }
    items = episode_items(episodes[:-1], spoiled) + episode_items(episodes[-1:], spoiled, reported=False)
    path = store_items(tmp_path, items)
    flip_a_payload_byte(path, 15 * 11 + 5)  # seq 155 lost to damage
    learner = Learner(cfg, tmp_path, bc, dim)
    with caplog.at_level(logging.WARNING):
        skipped = learner.resume_from(EpisodeStore(tmp_path), contract)
    assert skipped == 4
    kept = 300 - 1 - 4  # 205 decodes and fits the contract: replay starts its episode afresh there
    assert learner.book.env_steps == len(learner.replay) == kept and learner.duplicates == 0
    assert "damaged bytes in 1 place" in caplog.text
    assert "left out 4 stored records that fail the run's contract" in caplog.text
    for what in ("seq 34: action holds non-finite values", "seq 79: source is ACTION_SOURCE_UNSPECIFIED",
                 "seq 120: obs.state has shape", "seq 299: reward"):
        assert what in caplog.text
    # The actor goes on with its episode after the left-out seq 299: replay takes the next step without a crash.
    nxt = make_episode("a0", 29, 300, 1, rng, state_dim=dim)[0]
    learner.ingest_transition(type(nxt)(**{**nxt.__dict__, "step": 10, "obs": episodes[-1][-1].next_obs}))
    assert learner.book.env_steps == kept + 1
