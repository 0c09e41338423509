"""The codec and the record files, without a network: exact round trips and clear errors on bad input."""

from __future__ import annotations

import numpy as np
import pytest

from q2rl import recordio, wire
from q2rl.wire import pb
from transport_util import assert_transition_equal, make_episode, report_for


def test_tensor_round_trip_keeps_dtype_shape_and_values():
    rng = np.random.default_rng(0)
    for a in (rng.standard_normal((3, 4)).astype(np.float32), np.arange(6, dtype=np.int64).reshape(2, 3),
              rng.integers(0, 256, (5, 7, 3), dtype=np.uint8), np.array(True), np.zeros((0, 2), np.float64),
              np.arange(4, dtype=">f4")):
        t = pb.Tensor()
        wire.tensor_to_proto(a, t)
        b = wire.tensor_from_proto(pb.Tensor.FromString(t.SerializeToString()))
        np.testing.assert_array_equal(a, b)
        assert b.shape == a.shape and b.dtype.name == a.dtype.name


def test_tensor_with_wrong_size_or_dtype_is_a_clear_error():
    t = pb.Tensor(dtype="float32", shape=[3], data=b"\0" * 8)
    with pytest.raises(wire.WireError, match="8 bytes do not fit dtype float32 shape \\(3,\\)"):
        wire.tensor_from_proto(t, "x")
    with pytest.raises(wire.WireError, match="shape \\(-2, -2\\) has a negative size"):
        wire.tensor_from_proto(pb.Tensor(dtype="float32", shape=[-2, -2], data=b"\0" * 16), "x")
    with pytest.raises(wire.WireError, match="unknown dtype 'object'"):
        wire.tensor_from_proto(pb.Tensor(dtype="object", shape=[1], data=b""), "x")
    with pytest.raises(wire.WireError, match="cannot send dtype complex64"):
        wire.tensor_to_proto(np.zeros(2, np.complex64), pb.Tensor())


@pytest.mark.parametrize("images", [False, True])
def test_transition_round_trip_is_exact(images):
    episode = make_episode("a0", 3, 10, 4, np.random.default_rng(1), images=images)
    for t in episode:
        raw = wire.encode_item_transition(t)
        item = wire.parse_item(raw)
        back, pending = wire.decode_transition(item.transition)
        assert not pending
        assert_transition_equal(t, back)
    r = report_for(episode)
    item = wire.parse_item(wire.encode_item_report(r, after_seq=13))
    assert wire.decode_report(item.report) == r and item.report.after_seq == 13


def test_images_travel_once_per_frame_and_the_linker_restores_them():
    episode = make_episode("a0", 0, 0, 5, np.random.default_rng(2), images=True)
    full = [len(wire.encode_item_transition(t)) for t in episode]
    linker, received = wire.FrameLinker(), []
    for i, t in enumerate(episode):
        omit = i < len(episode) - 1  # the last one has no successor in the episode
        raw = wire.encode_item_transition(t, omit_next_images=omit)
        if omit:  # two 128x128x3 frames less on the wire
            assert full[i] - len(raw) >= 2 * 128 * 128 * 3
        received += linker.push(*wire.decode_transition(wire.parse_item(raw).transition))
    assert linker.held is None and len(received) == len(episode)
    for a, b in zip(episode, received):
        assert_transition_equal(a, b)
    # next_obs frames are the successor's obs arrays themselves, not copies
    assert received[0].next_obs["images"]["wrist"] is received[1].obs["images"]["wrist"]


def test_linker_does_not_invent_a_frame_for_a_cut_episode():
    ep0 = make_episode("a0", 0, 0, 3, np.random.default_rng(3), images=True)
    ep1 = make_episode("a0", 1, 3, 2, np.random.default_rng(4), images=True)
    linker = wire.FrameLinker()
    out = linker.push(*wire.decode_transition(wire.parse_item(wire.encode_item_transition(ep0[0], True)).transition))
    assert out == [] and linker.held is not None
    out = linker.push(*wire.decode_transition(wire.parse_item(wire.encode_item_transition(ep1[0])).transition))
    assert [t.seq for t in out] == [3]  # seq 0 waited for a frame from episode 0 that never came


def test_a_transition_missing_a_field_or_with_a_bad_source_is_a_clear_error():
    t = make_episode("a0", 0, 3, 1, np.random.default_rng(5))[0]
    m = wire.encode_transition(t)
    m.ClearField("action")
    with pytest.raises(wire.WireError, match="transition seq 3: action: missing, or unknown dtype ''"):
        wire.decode_transition(m)
    m = wire.encode_transition(t)
    m.source = 0
    with pytest.raises(wire.WireError, match="transition seq 3: unknown action source 0"):
        wire.decode_transition(m)


def test_unknown_observation_key_is_rejected_with_the_contract():
    t = make_episode("a0", 0, 0, 1, np.random.default_rng(5))[0]
    bad = type(t)(**{**t.__dict__, "obs": {"state": t.obs["state"], "depth": np.zeros(3)}})
    with pytest.raises(wire.WireError, match="unknown observation keys \\['depth'\\]"):
        wire.encode_item_transition(bad)


def test_batch_framing_is_the_protobuf_encoding():
    rng = np.random.default_rng(6)
    t = make_episode("a0", 0, 0, 1, rng)[0]
    assert wire.encode_item_transition(t) == pb.Item(transition=wire.encode_transition(t)).SerializeToString()
    items = [wire.encode_item_transition(t) for t in make_episode("a0", 0, 0, 3, rng, images=True)]
    items.append(b"")  # an empty item still frames (length 0)
    data = wire.frame_batch(items)
    assert wire.split_batch(data) == items
    parsed = pb.TransitionBatch.FromString(data)
    assert list(parsed.items) == [pb.Item.FromString(raw) for raw in items]  # (map order is not canonical)
    with pytest.raises(wire.WireError, match="truncated"):
        wire.split_batch(data[:-5])


def test_parameter_set_above_the_message_limit_is_chunked_and_reassembled_exactly():
    rng = np.random.default_rng(7)
    policy = {"dense": {"kernel": rng.standard_normal((1024, 1280)).astype(np.float32)}}  # 5.2 MB
    critic = {"heads": rng.standard_normal((5, 1024, 768)).astype(np.float32)}  # 15.7 MB
    chunks = wire.encode_parameter_set(4, {"policy": policy, "critic": critic, "value": {"b": np.zeros(3)}})
    assert max(c.ByteSize() for c in chunks) < 4 << 20
    n_critic = sum(c.subset == "critic" for c in chunks)
    assert n_critic == -(-len(wire.params_to_bytes(critic)) // wire.DEFAULT_CHUNK_BYTES) >= 15
    assembler, done = wire.ParameterAssembler(), None
    for c in chunks:
        assert done is None
        done = assembler.add(pb.ParameterChunk.FromString(c.SerializeToString()))
    version, subsets = done
    assert version == 4 and sorted(subsets) == ["critic", "policy", "value"]
    np.testing.assert_array_equal(subsets["policy"]["dense"]["kernel"], policy["dense"]["kernel"])
    np.testing.assert_array_equal(subsets["critic"]["heads"], critic["heads"])


def test_a_newer_set_discards_a_partial_older_one_and_corruption_is_detected():
    small = {"policy": {"w": np.arange(3000, dtype=np.float32)}}
    v1 = wire.encode_parameter_set(1, small, chunk_bytes=1000)
    v2 = wire.encode_parameter_set(2, small, chunk_bytes=1000)
    a = wire.ParameterAssembler()
    for c in v1[:5]:
        assert a.add(c) is None
    results = [a.add(c) for c in v2] + [a.add(v1[5])]  # a stale chunk of v1 after v2 is ignored
    assert results[-2][0] == 2 and results[-1] is None and all(r is None for r in results[:-2])
    with pytest.raises(wire.WireError, match="arrived without the chunks before it"):
        wire.ParameterAssembler().add(v2[1])
    bad = wire.encode_parameter_set(3, small, chunk_bytes=1000)
    bad[2].data = bytes(1000)
    with pytest.raises(wire.WireError, match="CRC mismatch"):
        for c in bad:
            a.add(c)


def test_record_file_torn_tail_is_ignored_and_cut(tmp_path):
    path = tmp_path / "x.rec"
    with recordio.open_for_append(path) as f:
        for i in range(5):
            f.write(recordio.encode_record(bytes([i]) * (100 + i)))
    whole = path.read_bytes()
    path.write_bytes(whole[:-30])  # crash in the middle of the last record
    result = recordio.read_records(path)
    assert [r[0] for r in result.records] == [0, 1, 2, 3] and result.torn_bytes == 104 + 8 - 30
    with recordio.open_for_append(path, result.good_end) as f:
        f.write(recordio.encode_record(b"next"))
    assert recordio.read_records(path).records[-1] == b"next" and recordio.read_records(path).torn_bytes == 0
    flipped = bytearray(path.read_bytes())
    flipped[-1] ^= 0xFF  # bad CRC on the last record
    path.write_bytes(bytes(flipped))
    assert len(recordio.read_records(path).records) == 4
    (tmp_path / "y.rec").write_bytes(b"NOTARECFILE")
    with pytest.raises(recordio.RecordFileError, match="not a q2rl record file"):
        recordio.read_records(tmp_path / "y.rec")
