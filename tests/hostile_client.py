"""A client of the learner built only from protos/q2rl.proto, without q2rl: it streams good transitions with every
kind of bad value between them (tests/test_hostile_client.py runs it as its own process).

    python hostile_client.py STUBS_DIR ADDRESS '{"config_hash": ..., "token": ..., "protocol_version": 3,
                                                 "state_dim": 17, "kinds": ["NaN action", ...]}'

STUBS_DIR holds q2rl_pb2.py and q2rl_pb2_grpc.py from `python -m grpc_tools.protoc`. Episodes have 4 steps, one
per seq (episode = seq // 4), and a report after their last step. For each kind, from the next seq n the learner
stores, the client sends one batch [n, n + 1, BAD, n + 3, report] (a bad report or item goes after n + 1 instead),
reconnects, and sends the good batch [n .. n + 3, report]. It prints one JSON line per kind: the refusal's code
and details, the seq the learner stores after it, and the acks of the good batch. It first resends the 5 items up
to what the learner stores (duplicates, after a learner restart).
"""

from __future__ import annotations

import json
import math
import struct
import sys
from typing import Callable

import grpc

ACTOR = "hostile-0"
L = 4  # steps per episode


def main(argv: list[str]) -> None:
    stubs, address, args = argv[0], argv[1], json.loads(argv[2])
    sys.path.insert(0, stubs)
    import q2rl_pb2 as pb
    import q2rl_pb2_grpc as rpc

    token = [("q2rl-token", args["token"])]
    channel = grpc.insecure_channel(address)
    stub = rpc.LearnerStub(channel)
    send_raw = channel.stream_stream("/q2rl.v1.Learner/SendTransitions", request_serializer=None,
                                     response_deserializer=pb.Ack.FromString)  # raw bytes: garbage items too
    dim = args["state_dim"]

    def tensor(values: list, dtype: str = "float32", shape: list | None = None) -> "pb.Tensor":
        fmt = {"float32": "f", "float64": "d", "uint8": "B"}[dtype]
        return pb.Tensor(dtype=dtype, shape=shape or [len(values)], data=struct.pack(f"<{len(values)}{fmt}", *values))

    def state(episode: int, step: int) -> "pb.Tensor":
        return tensor([episode + step / 8 + i / 1000 for i in range(dim)])

    def transition(seq: int) -> "pb.Transition":
        episode, step = divmod(seq, L)
        return pb.Transition(
            actor_id=ACTOR, episode_id=episode, step=step, seq=seq, obs=pb.Observation(state=state(episode, step)),
            action=tensor([0.5] * 7), reward=-1.0, terminated=False, truncated=step == L - 1,
            next_obs=pb.Observation(state=state(episode, step + 1)), a_bc=tensor([0.5] * 7),
            a_rl=tensor([-0.5] * 7), q_bc=1.0, q_rl=2.0, source=pb.ACTION_SOURCE_RL, param_version=seq)

    def report(episode: int) -> "pb.EpisodeReport":
        return pb.EpisodeReport(actor_id=ACTOR, episode_id=episode, length=L, undiscounted_return=-4.0,
                                bc_share=0.0, after_seq=episode * L + L - 1)

    def good_items(first: int, last: int) -> list[bytes]:
        items = []
        for seq in range(first, last + 1):
            items.append(pb.Item(transition=transition(seq)).SerializeToString())
            if seq % L == L - 1:
                items.append(pb.Item(report=report(seq // L)).SerializeToString())
        return items

    def spoil_report(field: str, value: float) -> Callable[[int], bytes]:
        def bad(n: int) -> bytes:
            r = report(n // L)
            setattr(r, field, value)
            return pb.Item(report=r).SerializeToString()
        return bad

    spoil_transition = {  # kind -> how seq n + 2 (step 2 of its episode) is spoiled
        "action bytes": lambda m: setattr(m.action, "data", m.action.data[:-4]),
        "6-D action": lambda m: m.action.CopyFrom(tensor([0.5] * 6)),
        "NaN action": lambda m: m.action.CopyFrom(tensor([math.nan] * 7)),
        "float64 a_rl": lambda m: m.a_rl.CopyFrom(tensor([0.5] * 7, "float64")),
        "unset a_bc": lambda m: m.ClearField("a_bc"),
        "unspecified source": lambda m: setattr(m, "source", pb.ACTION_SOURCE_UNSPECIFIED),
        "short state": lambda m: m.obs.state.CopyFrom(tensor([0.0] * (dim - 1))),
        "NaN next state": lambda m: m.next_obs.state.CopyFrom(tensor([math.nan] * dim)),
        "camera on a state-only run": lambda m: m.obs.images["depth"].CopyFrom(tensor([0] * 48, "uint8", [4, 4, 3])),
        "infinite reward": lambda m: setattr(m, "reward", math.inf),
        "NaN q_rl": lambda m: setattr(m, "q_rl", math.nan),
        "other actor": lambda m: setattr(m, "actor_id", "intruder"),
        "step jump": lambda m: setattr(m, "step", 3),
        "obs is not the previous next_obs": lambda m: m.obs.state.CopyFrom(tensor([9.0] * dim)),
        "next images promised without cameras": lambda m: setattr(m, "next_images_in_next_transition", True),
    }
    bad_items = {  # kind -> the bad item that goes after seq n + 1
        "report with a NaN return": spoil_report("undiscounted_return", math.nan),
        "report with bc_share 2": spoil_report("bc_share", 2.0),
        "empty item": lambda n: b"",
        "garbage item": lambda n: b"\xff" * 12,
    }

    def hello() -> "pb.HandshakeReply":
        reply = stub.Handshake(pb.HandshakeRequest(
            protocol_version=args["protocol_version"], config_hash=args["config_hash"], actor_id=ACTOR,
            token=args["token"], next_seq=1 << 40, acked_floor=-1), metadata=token, timeout=60, wait_for_ready=True)
        assert reply.accepted, reply.reason
        return reply

    def send(items: list[bytes], session: str) -> dict:
        batch = b"".join(b"\x0a" + _varint(len(raw)) + raw for raw in items)  # TransitionBatch.items, field 1
        try:
            acks = send_raw(iter([batch]), metadata=[("q2rl-session", session), *token], timeout=30)
            return {"acks": [a.stored_seq for a in acks]}
        except grpc.RpcError as e:
            return {"code": e.code().name, "details": e.details()}

    reply = hello()
    stored = reply.stored_seq
    if stored >= 0:  # resend what is stored already: all duplicates
        print(json.dumps({"kind": "resend", **send(good_items(max(0, stored - 4), stored), reply.session_id)}))
    for kind in args["kinds"]:
        n = stored + 1
        good = good_items(n, n + 3)
        if kind in spoil_transition:
            m = transition(n + 2)
            spoil_transition[kind](m)
            batch, bad_seq = good[:2] + [pb.Item(transition=m).SerializeToString()] + good[3:], n + 2
        else:
            batch, bad_seq = good[:2] + [bad_items[kind](n)] + good[2:], None
        refused = send(batch, reply.session_id)
        reply = hello()  # the stream was cut: reconnect, and learn what is stored
        after = reply.stored_seq
        accepted = send(good, reply.session_id)
        stored = accepted.get("acks", [stored])[-1]
        print(json.dumps({"kind": kind, "first_seq": n, "bad_seq": bad_seq, **refused, "stored_after": after,
                          "good_acks": accepted.get("acks"), "good_error": accepted.get("details")}), flush=True)
    assert not any(name == "q2rl" or name.startswith("q2rl.") for name in sys.modules), "a q2rl import"


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


if __name__ == "__main__":
    main(sys.argv[1:])
