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


def test_images_travel_zlib_compressed_and_come_back_bit_exact():
    rng = np.random.default_rng(7)
    t = make_episode("a0", 0, 0, 1, rng, images=True)[0]
    frame = np.zeros((84, 84, 3), np.uint8)  # a sim-like frame: flat colours
    frame[20:40, 30:50] = (200, 30, 30)
    images = {"wrist": frame, "front": rng.integers(0, 256, (84, 84, 3), dtype=np.uint8)}  # and one of noise
    t = type(t)(**{**t.__dict__, "obs": {**t.obs, "images": images}})
    m = wire.encode_transition(t)
    assert m.obs.images["wrist"].encoding == "zlib" and len(m.obs.images["wrist"].data) < frame.nbytes / 10
    assert m.obs.state.encoding == "" and m.action.encoding == ""  # only images are compressed
    back, _ = wire.decode_transition(pb.Transition.FromString(m.SerializeToString()))
    for name, image in images.items():
        np.testing.assert_array_equal(back.obs["images"][name], image)
        assert back.obs["images"][name].dtype == np.uint8


def test_damaged_or_oversized_zlib_tensor_is_a_clear_error():
    import zlib

    good = wire.tensor_proto(np.arange(192, dtype=np.uint8).reshape(8, 8, 3), compress=True)
    damaged = pb.Tensor(dtype="uint8", shape=[8, 8, 3], data=good.data[:-4], encoding="zlib")
    with pytest.raises(wire.WireError, match="img: zlib data (is damaged|does not inflate)"):
        wire.tensor_from_proto(damaged, "img")
    # a small message that would inflate to a megabyte: refused after inflating no more than the shape's 4 bytes
    bomb = pb.Tensor(dtype="uint8", shape=[4], data=zlib.compress(b"\0" * (1 << 20)), encoding="zlib")
    with pytest.raises(wire.WireError, match="does not inflate to exactly the 4 bytes its dtype and shape say"):
        wire.tensor_from_proto(bomb, "img")
    short = pb.Tensor(dtype="uint8", shape=[300], data=good.data, encoding="zlib")
    with pytest.raises(wire.WireError, match="exactly the 300 bytes"):
        wire.tensor_from_proto(short, "img")
    with pytest.raises(wire.WireError, match="img: unknown encoding 'lz4' \\(raw or zlib\\)"):
        wire.tensor_from_proto(pb.Tensor(dtype="uint8", shape=[1], data=b"x", encoding="lz4"), "img")


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


INCARNATION = 0x5EED


def test_parameter_set_above_the_message_limit_is_chunked_and_reassembled_exactly():
    rng = np.random.default_rng(7)
    policy = {"dense": {"kernel": rng.standard_normal((1024, 1280)).astype(np.float32)}}  # 5.2 MB
    critic = {"heads": rng.standard_normal((5, 1024, 768)).astype(np.float32)}  # 15.7 MB
    chunks = wire.encode_parameter_set(4, {"policy": policy, "critic": critic, "value": {"b": np.zeros(3)}},
                                       incarnation=INCARNATION)
    assert max(c.ByteSize() for c in chunks) < 4 << 20
    assert {c.incarnation for c in chunks} == {INCARNATION}
    n_critic = sum(c.subset == "critic" for c in chunks)
    assert n_critic == -(-len(wire.encode_parameter_subset(critic)) // wire.DEFAULT_CHUNK_BYTES) >= 15
    assembler, done = wire.ParameterAssembler(), None
    for c in chunks:
        assert done is None
        done = assembler.add(pb.ParameterChunk.FromString(c.SerializeToString()))
    assert (done.incarnation, done.version) == (INCARNATION, 4) and sorted(done.subsets) == ["critic", "policy", "value"]
    np.testing.assert_array_equal(done.subsets["policy"]["dense"]["kernel"], policy["dense"]["kernel"])
    np.testing.assert_array_equal(done.subsets["critic"]["heads"], critic["heads"])


def test_a_newer_set_discards_a_partial_older_one_and_corruption_is_detected():
    small = {"policy": {"w": np.arange(3000, dtype=np.float32)}}
    v1 = wire.encode_parameter_set(1, small, incarnation=INCARNATION, chunk_bytes=1000)
    v2 = wire.encode_parameter_set(2, small, incarnation=INCARNATION, chunk_bytes=1000)
    a = wire.ParameterAssembler()
    for c in v1[:5]:
        assert a.add(c) is None
    results = [a.add(c) for c in v2] + [a.add(v1[5])]  # a stale chunk of v1 after v2 is ignored
    assert results[-2].version == 2 and results[-1] is None and all(r is None for r in results[:-2])
    with pytest.raises(wire.WireError, match="arrived without the chunks before it"):
        wire.ParameterAssembler().add(v2[1])
    bad = wire.encode_parameter_set(3, small, incarnation=INCARNATION, chunk_bytes=1000)
    bad[2].data = bytes(1000)
    with pytest.raises(wire.WireError, match="CRC mismatch"):
        for c in bad:
            a.add(c)


def test_a_set_of_another_incarnation_is_new_whatever_its_version():
    """A restarted learner numbers its sets afresh: its v1 (or the v1 of yet another learner) is a new set."""
    a = wire.ParameterAssembler()

    def send(version: int, incarnation: int, chunks: slice = slice(None)) -> list:
        tree = {"policy": {"w": np.full(3000, version, np.float32)}}
        return [a.add(c) for c in wire.encode_parameter_set(version, tree, incarnation=incarnation,
                                                            chunk_bytes=1000)[chunks]]

    assert send(5, 11)[-1][:2] == (11, 5)
    assert send(6, 11, slice(0, 2)) == [None, None]  # a partial v6
    assert send(1, 22)[-1][:2] == (22, 1)  # a lower number of another learner: new (and the partial v6 is dropped)
    assert send(1, 22)[-1] is None  # that set again: stale
    assert send(1, 33)[-1][:2] == (33, 1)  # the same number of yet another learner: new
    with pytest.raises(wire.WireError, match="incarnation 0 is not a nonzero"):
        wire.encode_parameter_set(1, {"policy": {}}, incarnation=0)


def test_a_parameter_subset_decodes_to_the_same_tree_of_arrays():
    rng = np.random.default_rng(8)
    tree = {
        "encoder": {},  # a module without parameters (a state-only run's encoder)
        "actor": {"params": {"Dense_0": {"kernel": rng.standard_normal((4, 3)).astype(np.float32),
                                         "bias": np.zeros(3, np.float16)}}},
        "stats": np.array(2.5),  # a scalar, float64
        "counts": {"n": np.arange(6, dtype=np.int64).reshape(2, 3), "mask": np.array([True, False]),
                   "pixels": rng.integers(0, 256, (2, 2, 3), dtype=np.uint8), "empty": np.zeros((0, 4), np.int32)},
        "big_endian": np.arange(3, dtype=">f4"),
        "transposed": np.arange(12, dtype=np.int16).reshape(3, 4).T,  # not C-contiguous
    }
    back = wire.decode_parameter_subset(wire.encode_parameter_subset(tree))
    assert back.keys() == tree.keys() and back["encoder"] == {}
    flat = lambda t, p="": ({f"{p}{k}": v for k, v in t.items() if not isinstance(v, dict)}
                            | {q: w for k, v in t.items() if isinstance(v, dict) for q, w in flat(v, f"{p}{k}/").items()})
    assert flat(back).keys() == flat(tree).keys()
    for path, a in flat(tree).items():
        b = flat(back)[path]
        np.testing.assert_array_equal(a, b)
        assert b.shape == a.shape and b.dtype.name == a.dtype.name and not b.flags.writeable, path


def test_parameter_subset_framing_is_the_protobuf_encoding():
    """The subset is framed by hand (one copy of the arrays): byte for byte what protobuf writes for the message."""
    tree = {"b": {"w": np.arange(6, dtype=">f4").reshape(2, 3), "none": np.zeros((0, 3), np.int8)},
            "a": np.array(1.5), "e": {}, "f": {}, "m": np.array([True, False]), "big": np.ones(70_000, np.uint8)}
    expected = pb.ParameterSubset(empty_paths=["e", "f"])
    for path, a in [("a", tree["a"]), ("b/none", tree["b"]["none"]), ("b/w", tree["b"]["w"]), ("big", tree["big"]),
                    ("m", tree["m"])]:
        expected.tensors.add(path=path, tensor=wire.tensor_proto(a))
    assert wire.encode_parameter_subset(tree) == expected.SerializeToString()


def test_the_documented_parameter_encoding_decodes_without_q2rl(tmp_path):
    """protos/q2rl.proto is the whole contract: a ParameterSubset our encoder wrote decodes with nothing but the
    generated stubs and numpy, in a process that never imports q2rl."""
    import json
    import subprocess
    import sys

    from process_util import generate_stubs

    rng = np.random.default_rng(9)
    tree = {"critic": {"params": {"kernel": rng.standard_normal((3, 2)).astype(np.float32),
                                  "step": np.array(7, np.int32)}},
            "encoder": {}, "flags": np.array([True, False, True])}
    (tmp_path / "subset.bin").write_bytes(wire.encode_parameter_subset(tree))
    stubs = generate_stubs(tmp_path / "stubs")
    client = f"""
import json, sys
import numpy as np
sys.path.insert(0, {str(stubs)!r})
import q2rl_pb2
m = q2rl_pb2.ParameterSubset.FromString(open({str(tmp_path / "subset.bin")!r}, "rb").read())
arrays = {{}}
for named in m.tensors:
    t = named.tensor
    dtype = np.dtype(t.dtype).newbyteorder("<")  # the documented encoding: little-endian, C order
    arrays[named.path] = [t.dtype, list(t.shape), np.frombuffer(t.data, dtype).reshape(tuple(t.shape)).tolist()]
assert not [name for name in sys.modules if name.split(".")[0] == "q2rl"]
print(json.dumps({{"arrays": arrays, "empty": list(m.empty_paths)}}))
"""
    done = subprocess.run([sys.executable, "-c", client], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout)
    assert got["empty"] == ["encoder"]
    expected = {"critic/params/kernel": tree["critic"]["params"]["kernel"],
                "critic/params/step": tree["critic"]["params"]["step"], "flags": tree["flags"]}
    assert list(got["arrays"]) == sorted(expected)  # sorted by path
    for path, a in expected.items():
        dtype, shape, values = got["arrays"][path]
        assert (dtype, shape) == (a.dtype.name, list(a.shape))
        np.testing.assert_array_equal(np.array(values, dtype), a)


@pytest.mark.parametrize("tensors, empty, why", [
    ([("a/b", "float32", [2], 8), ("a/b", "float32", [2], 8)], [], "subset: path 'a/b' appears twice"),
    ([("a", "float32", [2], 8), ("a/b", "float32", [2], 8)], [], "subset: 'a' is both a leaf .* the prefix of 'a/b'"),
    ([("a/b/c", "float32", [1], 4)], ["a/b"], "subset: 'a/b' is both a leaf .* the prefix of 'a/b/c'"),
    ([("", "float32", [1], 4)], [], "subset: path '' is empty"),
    ([("a//b", "float32", [1], 4)], [], "subset: path 'a//b' is empty or has an empty component"),
    ([("a/", "float32", [1], 4)], [], "subset: path 'a/' is empty or has an empty component"),
    ([], ["e", "e"], "subset: path 'e' appears twice"),
    ([("w", "float32", [3], 8)], [], r"subset w: 8 bytes do not fit dtype float32 shape \(3,\)"),
    ([("w", "object", [1], 8)], [], "subset w: missing, or unknown dtype 'object'"),
    ([("w", "float32", [-1, -1], 4)], [], r"subset w: shape \(-1, -1\) has a negative size"),
])
def test_a_malformed_parameter_subset_is_refused_with_what_is_wrong(tensors, empty, why):
    m = pb.ParameterSubset(empty_paths=empty)
    for path, dtype, shape, n_bytes in tensors:
        m.tensors.add(path=path, tensor=pb.Tensor(dtype=dtype, shape=shape, data=bytes(n_bytes)))
    with pytest.raises(wire.WireError, match=f"^parameter {why}"):
        wire.decode_parameter_subset(m.SerializeToString())


def test_undecodable_bytes_and_trees_that_cannot_travel_are_clear_errors():
    with pytest.raises(wire.WireError, match="parameter subset: undecodable \\(2 bytes\\)"):
        wire.decode_parameter_subset(b"\x0a\xff")
    with pytest.raises(wire.WireError, match="key 'a/b' under /: keys are non-empty strings without '/'"):
        wire.encode_parameter_subset({"a/b": np.zeros(1)})
    with pytest.raises(wire.WireError, match="parameter x/y: cannot send dtype object"):
        wire.encode_parameter_subset({"x": {"y": None}})
    with pytest.raises(wire.WireError, match="parameter z: cannot send dtype complex64"):
        wire.encode_parameter_subset({"z": np.zeros(2, np.complex64)})


def test_real_agent_parameters_survive_the_wire():
    """An agent's published subsets (flax structs, an empty encoder on a state-only run) go through the encoding
    and back onto the actor's template unchanged."""
    import jax

    from q2rl.config import from_dict
    from q2rl.core.agent_config import AgentConfig
    from q2rl.core.agents import make_agent
    from q2rl.core.parameters import apply_parameter_set, init_agent_params, publishable
    from q2rl.interfaces import example_obs

    cfg = from_dict(AgentConfig, {"algo": "rlpd", "hidden_dims": [8], "value_hidden_dims": [8], "ensemble_size": 2})
    agent = make_agent(cfg, 7, ())
    template = init_agent_params(agent, jax.random.PRNGKey(0), example_obs(5, {}), None)
    params = init_agent_params(agent, jax.random.PRNGKey(1), example_obs(5, {}), None)
    chunks = wire.encode_parameter_set(1, jax.device_get(publishable(params)), incarnation=INCARNATION)
    assembler = wire.ParameterAssembler()
    done = [assembler.add(c) for c in chunks][-1]
    restored = apply_parameter_set(template, done.subsets)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(params)


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
