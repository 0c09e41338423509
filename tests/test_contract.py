"""q2rl.contract: each bad value a client could send is caught before it is stored, with a reason that names the seq
and the field (issue #35)."""

from __future__ import annotations

import numpy as np
import pytest

from q2rl import wire
from q2rl.contract import ContractError, LastStep, check_continuity, check_report, check_transition
from q2rl.wire import pb
from transport_util import make_episode, report_for, run_contract

CONTRACT = run_contract(images=True)  # state 12, cameras wrist and front 128x128x3


def episode(images: bool = True, length: int = 3) -> list:
    return make_episode("a0", 5, 40, length, np.random.default_rng(0), images=images, terminal=True)


def tensor(a) -> "pb.Tensor":
    return wire.tensor_proto(np.asarray(a))


def test_good_transitions_pass_and_come_back_decoded():
    ep = episode()
    for i, t in enumerate(ep):
        pending = i < len(ep) - 1  # images once per frame: the next transition carries them
        back, got_pending = check_transition(wire.encode_transition(t, omit_next_images=pending), CONTRACT, "a0")
        assert got_pending == pending and back.seq == t.seq
        np.testing.assert_array_equal(back.action, t.action)
    t = episode(images=False)[0]
    assert check_transition(wire.encode_transition(t), run_contract(), "a0")[0].seq == 40
    assert check_transition(wire.encode_transition(t), None, "a0")[0].seq == 40  # shape-free checks only


BAD = {  # how to spoil seq 41 (step 1 of episode 5, with images), and what the refusal says
    "tensor bytes": (lambda m: setattr(m.action, "data", m.action.data[:-4]), "action: 24 bytes do not fit"),
    "negative size": (lambda m: m.a_rl.CopyFrom(pb.Tensor(dtype="float32", shape=[-7, -1], data=bytes(28))),
                      "a_rl: shape (-7, -1) has a negative size"),
    "6-D action": (lambda m: m.action.CopyFrom(tensor(np.zeros(6, np.float32))),
                   "action has shape (6,), the run's actions are (7,)"),
    "float64 action": (lambda m: m.action.CopyFrom(tensor(np.zeros(7))),
                       "action has dtype float64, the run's actions are float32"),
    "NaN action": (lambda m: m.action.CopyFrom(tensor(np.full(7, np.nan, np.float32))),
                   "action holds non-finite values ([nan, nan, nan])"),
    "infinite a_rl": (lambda m: m.a_rl.CopyFrom(tensor(np.full(7, np.inf, np.float32))), "a_rl holds non-finite"),
    "a_bc unset": (lambda m: m.ClearField("a_bc"), "a_bc is missing"),
    "obs unset": (lambda m: m.ClearField("obs"), "obs is missing"),
    "state unset": (lambda m: m.obs.ClearField("state"), "obs.state: missing, or unknown dtype ''"),
    "unspecified source": (lambda m: setattr(m, "source", pb.ACTION_SOURCE_UNSPECIFIED),
                           "source is ACTION_SOURCE_UNSPECIFIED"),
    "unknown source": (lambda m: setattr(m, "source", 9), "unknown action source 9"),
    "state size": (lambda m: m.obs.state.CopyFrom(tensor(np.zeros(5, np.float32))),
                   "obs.state has shape (5,), the run's states are (12,)"),
    "float64 state": (lambda m: m.obs.state.CopyFrom(tensor(np.zeros(12))),
                      "obs.state has dtype float64, the run's states are float32"),
    "NaN next state": (lambda m: m.next_obs.state.CopyFrom(tensor(np.full(12, np.nan, np.float32))),
                       "next_obs.state holds non-finite values"),
    "unknown camera": (lambda m: m.obs.images["depth"].CopyFrom(tensor(np.zeros((128, 128, 3), np.uint8))),
                       "obs.images has cameras ['depth', 'front', 'wrist'], the run's are ['front', 'wrist']"),
    "missing camera": (lambda m: m.obs.images.pop("wrist"), "obs.images has cameras ['front'], the run's are"),
    "image size": (lambda m: m.obs.images["front"].CopyFrom(tensor(np.zeros((64, 64, 3), np.uint8))),
                   "obs.images[front] has shape (64, 64, 3), the run's images are (128, 128, 3)"),
    "float image": (lambda m: m.next_obs.images["wrist"].CopyFrom(tensor(np.zeros((128, 128, 3), np.float32))),
                    "next_obs.images[wrist] has dtype float32, the run's images are uint8"),
    "infinite reward": (lambda m: setattr(m, "reward", float("inf")), "reward is inf, not a finite number"),
    "NaN q_bc": (lambda m: setattr(m, "q_bc", float("nan")), "q_bc is nan, not a finite number"),
    "NaN q_rl": (lambda m: setattr(m, "q_rl", float("nan")), "q_rl is nan, not a finite number"),
    "other actor": (lambda m: setattr(m, "actor_id", "intruder"), "names actor 'intruder', but it came from"),
    "negative step": (lambda m: setattr(m, "step", -1), "episode 5 step -1; both count from 0"),
    "pending at the end": (lambda m: (setattr(m, "terminated", True), m.next_obs.ClearField("images"),
                                      setattr(m, "next_images_in_next_transition", True)),
                           "next_images_in_next_transition is set on the last step of an episode"),
    "pending with images": (lambda m: setattr(m, "next_images_in_next_transition", True),
                            "next_obs.images are sent although next_images_in_next_transition"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_each_bad_value_is_refused_with_the_seq_and_the_field(kind):
    spoil, reason = BAD[kind]
    m = wire.encode_transition(episode()[1])
    spoil(m)
    with pytest.raises(ContractError) as err:
        check_transition(m, CONTRACT, "a0")
    assert "seq 41" in str(err.value) and reason in str(err.value), str(err.value)


def test_without_a_contract_what_every_run_shares_is_still_checked():
    t = episode()[0]
    for spoil, reason in [
        (lambda m: m.obs.state.CopyFrom(tensor(np.zeros((3, 4), np.float32))), "obs.state has shape (3, 4), a state"),
        (lambda m: m.obs.images["front"].CopyFrom(tensor(np.zeros((8, 8, 4), np.uint8))), "not an HxWx3 image"),
        (lambda m: m.action.CopyFrom(tensor(np.zeros(6, np.float32))), "action has shape (6,), the run's actions"),
        (lambda m: setattr(m, "reward", float("nan")), "reward is nan"),
    ]:
        m = wire.encode_transition(t)
        spoil(m)
        with pytest.raises(ContractError) as err:
            check_transition(m, None, "a0")
        assert "seq 40: " in str(err.value) and reason in str(err.value), str(err.value)


def test_next_images_in_the_next_transition_on_a_run_without_cameras_is_refused():
    m = wire.encode_transition(episode(images=False)[0])
    m.next_images_in_next_transition = True
    with pytest.raises(ContractError, match="seq 40: next_images_in_next_transition is set, but the run has no"):
        check_transition(m, run_contract(), "a0")


def test_continuity_the_next_step_of_the_episode_or_step_0_of_a_later_unreported_one():
    ep = episode(length=4)
    ms = [wire.encode_transition(t) for t in ep]
    last = LastStep.of(ms[1])
    check_continuity(ms[2], last, reported_episode=4)  # the next step, from the state the previous one ended in
    check_continuity(ms[2], None, reported_episode=-1)  # nothing known of the actor: any step may come
    nxt = wire.encode_transition(make_episode("a0", 7, 44, 1, np.random.default_rng(1))[0])
    check_continuity(nxt, LastStep.of(ms[3]), reported_episode=6)  # a new episode after the last one ended
    check_continuity(nxt, last, reported_episode=6)  # or without it having ended (the actor restarted)

    def refused(m, last, reported, reason):
        with pytest.raises(ContractError) as err:
            check_continuity(m, last, reported)
        assert reason in str(err.value), str(err.value)

    refused(ms[3], last, 4, "transition seq 43: step 3 does not follow step 1 of episode 5")
    moved = wire.encode_transition(ep[2])
    moved.obs.state.CopyFrom(tensor(np.zeros(12, np.float32)))
    refused(moved, last, 4, "transition seq 42: obs.state differs from the next_obs.state of step 1")
    refused(wire.encode_transition(ep[3]), LastStep(5, 2, True, ms[2].next_obs.state.data), 4,
            "episode 5 already ended at step 2")
    refused(nxt, LastStep(8, 0, False, b""), -1, "episode 7 comes after episode 8")
    refused(nxt, last, 7, "episode 7 was reported already")
    later = wire.encode_transition(make_episode("a0", 7, 44, 3, np.random.default_rng(1))[2])
    refused(later, last, 6, "episode 7 starts at step 2, not 0")


def test_bad_reports_are_refused_with_the_field():
    r = wire.encode_report(report_for(episode()), after_seq=42)
    assert check_report(r, "a0") == report_for(episode())
    for field, value, reason in [("undiscounted_return", float("nan"), "undiscounted_return is nan"),
                                 ("bc_share", 2.0, "bc_share is 2.0, not a share in [0, 1]"),
                                 ("bc_share", float("nan"), "bc_share is nan"),
                                 ("length", -3, "length -3; neither can be negative"),
                                 ("actor_id", "intruder", "names actor 'intruder'")]:
        m = wire.encode_report(report_for(episode()), after_seq=42)
        setattr(m, field, value)
        with pytest.raises(ContractError) as err:
            check_report(m, "a0")
        assert "report of episode 5 (after seq 42)" in str(err.value) and reason in str(err.value)
