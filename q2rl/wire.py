"""The codec between q2rl's Python types and the wire schema (protos/q2rl.proto). No pickle anywhere.

    item = encode_item_transition(t, omit_next_images=True)   # bytes; spooled and sent verbatim
    batch = frame_batch([item, ...])                          # TransitionBatch bytes, built by concatenation
    for raw in split_batch(batch): kind, obj = decode_item(raw)

    chunks = encode_parameter_set(version, {"policy": p, "critic": q, "value": v}, incarnation=board_id)  # per publish
    assembler = ParameterAssembler(); done = assembler.add(chunk)   # a ParameterSet when complete

Arrays travel as (dtype, shape, raw bytes); decoded arrays are read-only views of the received bytes. A parameter
subset travels as a ParameterSubset message (named arrays), so a client in any language decodes it with protobuf.
Images go once per frame: a transition may leave out its next_obs images when the next transition of the
same episode carries that frame as its obs; `FrameLinker` puts them back on the receiving side.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Any, Mapping, NamedTuple

import numpy as np

from q2rl.interfaces import EpisodeReport, Grants, Transition

try:
    from q2rl.protos import q2rl_pb2 as pb
except ImportError as e:  # the stubs are generated at build time, not committed
    raise ImportError("q2rl gRPC stubs are missing: run `make protos` (or `make setup`) in the repository") from e

PROTOCOL_VERSION = 4  # its history is in the header of protos/q2rl.proto
SERVICE_NAME = "q2rl.v1.Learner"
SESSION_METADATA_KEY = "q2rl-session"
TOKEN_METADATA_KEY = "q2rl-token"  # on every call when the learner has a token (protos/q2rl.proto)
DEFAULT_CHUNK_BYTES = 1 << 20  # well under gRPC's default 4 MiB receive limit

_SOURCE_TO_PB = {"bc": pb.ACTION_SOURCE_BC, "rl": pb.ACTION_SOURCE_RL, "human": pb.ACTION_SOURCE_HUMAN}
_SOURCE_FROM_PB = {v: k for k, v in _SOURCE_TO_PB.items()}
_ALLOWED_DTYPES = frozenset(
    {"float16", "float32", "float64", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "bool"}
)


@dataclasses.dataclass(frozen=True)
class Keepalive:
    """HTTP/2 keepalive: a peer that does not answer a ping within `timeout_ms` is cut (its RPCs cancelled)."""

    time_ms: int = 10_000
    timeout_ms: int = 5_000
    handshake_timeout_ms: int = 10_000  # a connection that never completes the HTTP/2/TLS handshake is closed

    def client_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.keepalive_time_ms", self.time_ms),
            ("grpc.keepalive_timeout_ms", self.timeout_ms),
            # every HTTP/2 ping (also the flow-control ones) must be answered within the timeout (default 60 s)
            ("grpc.http2.ping_timeout_ms", self.timeout_ms),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]

    def server_options(self) -> list[tuple[str, int]]:
        """The client's keepalive settings plus the server's tolerance of client pings and its handshake limit."""
        return self.client_options() + [
            ("grpc.http2.min_recv_ping_interval_without_data_ms", max(100, self.time_ms // 2)),
            ("grpc.http2.min_ping_interval_without_data_ms", max(100, self.time_ms // 2)),
            ("grpc.http2.max_ping_strikes", 0),
            ("grpc.server_handshake_timeout_ms", self.handshake_timeout_ms),
        ]


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """Server PEM files for TLS; with `client_ca` the server also requires and checks client certificates."""

    cert_chain: str
    private_key: str
    client_ca: str = ""


@dataclasses.dataclass(frozen=True)
class ClientTls:
    """Actor-side PEM files: the CA that signed the learner's certificate, and optionally a client cert/key."""

    root_ca: str
    cert_chain: str = ""
    private_key: str = ""
    target_name_override: str = ""  # when the certificate names a host other than the address dialled


class WireError(ValueError):
    """A message that does not decode into a valid q2rl object (wrong dtype, size mismatch, missing field)."""


# ----------------------------------------------------------------------------------------------- tensors


# numpy's dtype.name is computed in Python (microseconds); these lookups are hash-table fast.
_NAME_OF_DTYPE = {np.dtype(n).newbyteorder("<"): n for n in _ALLOWED_DTYPES} | {np.dtype(n): n for n in _ALLOWED_DTYPES}
_DTYPE_OF_NAME = {n: np.dtype(n).newbyteorder("<") for n in _ALLOWED_DTYPES}


def _wire_array(array: Any) -> tuple[str, np.ndarray]:
    """The dtype name a Tensor names and the array with a little-endian dtype; WireError for a dtype not allowed."""
    a = np.asarray(array)
    name = _NAME_OF_DTYPE.get(a.dtype)
    if name is None:
        if a.dtype.byteorder == ">" and a.dtype.newbyteorder("<") in _NAME_OF_DTYPE:
            a = a.astype(a.dtype.newbyteorder("<"))
            name = _NAME_OF_DTYPE[a.dtype]
        else:
            raise WireError(f"cannot send dtype {a.dtype} (allowed: {sorted(_ALLOWED_DTYPES)})")
    return name, a


# Camera images travel zlib-compressed at level 1: lossless, ~0.04 ms per 84x84 frame on an idle core here, 25x smaller
# for sim frames, 1.45x with camera-like noise (bench/storage.py); the episode store keeps them as they came.
IMAGE_COMPRESSION_LEVEL = 1


def tensor_proto(array: Any, compress: bool = False) -> "pb.Tensor":
    """A Tensor message of a numpy-compatible array (little-endian, C order), its bytes zlib-compressed if
    `compress`."""
    name, a = _wire_array(array)
    if compress:
        return pb.Tensor(dtype=name, shape=a.shape, data=zlib.compress(a.tobytes(), IMAGE_COMPRESSION_LEVEL),
                         encoding="zlib")
    return pb.Tensor(dtype=name, shape=a.shape, data=a.tobytes())


def tensor_to_proto(array: Any, out: "pb.Tensor") -> None:
    """Write a numpy-compatible array into an existing Tensor message."""
    out.CopyFrom(tensor_proto(array))


def tensor_from_proto(t: "pb.Tensor", what: str = "tensor") -> np.ndarray:
    """A read-only numpy view of a Tensor message's bytes; raises WireError if dtype or size are wrong."""
    dtype = _DTYPE_OF_NAME.get(t.dtype)
    shape = tuple(t.shape)
    data = t.data
    if dtype is None:
        raise WireError(f"{what}: missing, or unknown dtype {t.dtype!r}")
    if min(shape, default=0) < 0:  # two negative sizes would multiply to a positive byte count
        raise WireError(f"{what}: shape {shape} has a negative size")
    if t.encoding == "zlib":
        data = _inflate(data, math.prod(shape) * dtype.itemsize, what)
    elif t.encoding:
        raise WireError(f"{what}: unknown encoding {t.encoding!r} (raw or zlib)")
    if len(data) != math.prod(shape) * dtype.itemsize:
        raise WireError(
            f"{what}: {len(data)} bytes do not fit dtype {t.dtype} shape {shape} "
            f"({math.prod(shape) * dtype.itemsize} bytes)"
        )
    a = np.frombuffer(data, dtype=dtype)
    return a if len(shape) == 1 else a.reshape(shape)


def _inflate(data: bytes, size: int, what: str) -> bytes:
    """zlib-compressed `data` that must inflate to exactly `size` bytes; never inflates more than that (a hostile
    client cannot make the learner allocate beyond what the shape says)."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, size + 1)
    except zlib.error as e:
        raise WireError(f"{what}: zlib data is damaged ({e})") from None
    if len(out) != size or not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
        raise WireError(f"{what}: zlib data does not inflate to exactly the {size} bytes its dtype and shape say")
    return out


# ------------------------------------------------------------------------------------------ observations


def _obs_proto(obs: Mapping[str, Any], with_images: bool, what: str) -> "pb.Observation":
    if len(obs) > 2 or "state" not in obs or (len(obs) == 2 and "images" not in obs):
        unknown = sorted(set(obs) - {"state", "images"})
        raise WireError(f"{what}: unknown observation keys {unknown}; the contract is state + images"
                        if unknown else f"{what}: observation has no 'state'")
    images = obs.get("images") if with_images else None
    if images:
        return pb.Observation(state=tensor_proto(obs["state"]),
                              images={k: tensor_proto(v, compress=True) for k, v in images.items()})
    return pb.Observation(state=tensor_proto(obs["state"]))


def _obs_from_proto(o: "pb.Observation", what: str) -> dict:
    obs: dict = {"state": tensor_from_proto(o.state, what + ".state")}
    if o.images:
        obs["images"] = {name: tensor_from_proto(t, f"{what}.images[{name}]") for name, t in sorted(o.images.items())}
    return obs


def same_frames(images_a: Mapping[str, Any] | None, images_b: Mapping[str, Any] | None) -> bool:
    """True if two image dicts hold the same frames (identity first, then contents)."""
    if not images_a or not images_b or set(images_a) != set(images_b):
        return False
    return all(images_a[k] is images_b[k] or np.array_equal(images_a[k], images_b[k]) for k in images_a)


# ------------------------------------------------------------------------------------ transitions, reports


def encode_transition(t: Transition, omit_next_images: bool = False) -> "pb.Transition":
    """A Transition message; `omit_next_images` leaves out next_obs images (the next transition carries them)."""
    source = _SOURCE_TO_PB.get(t.source)
    if source is None:
        raise WireError(f"transition seq {t.seq}: source {t.source!r} is not one of {sorted(_SOURCE_TO_PB)}")
    omit = bool(omit_next_images and t.next_obs.get("images"))
    return pb.Transition(
        actor_id=t.actor_id,
        episode_id=int(t.episode_id),
        step=int(t.step),
        seq=int(t.seq),
        obs=_obs_proto(t.obs, True, f"transition seq {t.seq} obs"),
        action=tensor_proto(t.action),
        reward=float(t.reward),
        terminated=bool(t.terminated),
        truncated=bool(t.truncated),
        next_obs=_obs_proto(t.next_obs, not omit, f"transition seq {t.seq} next_obs"),
        next_images_in_next_transition=omit,
        a_bc=tensor_proto(t.a_bc),
        a_rl=tensor_proto(t.a_rl),
        q_bc=float(t.q_bc),
        q_rl=float(t.q_rl),
        source=source,
        param_version=int(t.param_version),
    )


def decode_transition(m: "pb.Transition") -> tuple[Transition, bool]:
    """(Transition, next_images_pending): when pending, next_obs has no images yet (see FrameLinker)."""
    try:
        source = _SOURCE_FROM_PB[m.source]
        t = Transition(
            actor_id=m.actor_id,
            episode_id=m.episode_id,
            step=m.step,
            seq=m.seq,
            obs=_obs_from_proto(m.obs, "obs"),
            action=tensor_from_proto(m.action, "action"),
            reward=m.reward,
            terminated=m.terminated,
            truncated=m.truncated,
            next_obs=_obs_from_proto(m.next_obs, "next_obs"),
            a_bc=tensor_from_proto(m.a_bc, "a_bc"),
            a_rl=tensor_from_proto(m.a_rl, "a_rl"),
            q_bc=m.q_bc,
            q_rl=m.q_rl,
            source=source,
            param_version=m.param_version,
        )
    except KeyError:
        raise WireError(f"transition seq {m.seq}: unknown action source {m.source}") from None
    except WireError as e:
        raise WireError(f"transition seq {m.seq}: {e}") from None
    return t, m.next_images_in_next_transition


def encode_report(r: EpisodeReport, after_seq: int) -> "pb.EpisodeReport":
    """An EpisodeReport message; `after_seq` is the seq of the last transition sent before it."""
    return pb.EpisodeReport(after_seq=int(after_seq), **dataclasses.asdict(r))


def decode_report(m: "pb.EpisodeReport") -> EpisodeReport:
    fields = {f.name: getattr(m, f.name) for f in dataclasses.fields(EpisodeReport)}
    return EpisodeReport(**fields)


# ------------------------------------------------------------------------------- items and batch framing


def encode_item_transition(t: Transition, omit_next_images: bool = False) -> bytes:
    """The serialized Item carrying one transition: what the spool, the stream and the episode files hold."""
    # Item{transition = 1} framed by hand: saves copying a message full of image bytes once more
    data = encode_transition(t, omit_next_images).SerializeToString()
    return b"".join((_ITEM_TRANSITION_TAG, _varint(len(data)), data))


def encode_item_report(r: EpisodeReport, after_seq: int) -> bytes:
    return pb.Item(report=encode_report(r, after_seq)).SerializeToString()


def parse_item(raw: bytes) -> "pb.Item":
    """Parse one serialized Item; a WireError if it is not one."""
    item = pb.Item()
    try:
        item.ParseFromString(raw)
    except Exception as e:  # protobuf's DecodeError
        raise WireError(f"undecodable item ({len(raw)} bytes): {e}") from None
    if item.WhichOneof("kind") is None:
        raise WireError("item carries neither a transition nor a report")
    return item


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_ITEMS_TAG = b"\x0a"  # field 1 (TransitionBatch.items), wire type 2 (length-delimited)
_ITEM_TRANSITION_TAG = b"\x0a"  # field 1 (Item.transition), wire type 2


def frame_batch(items: list[bytes]) -> bytes:
    """The bytes of a TransitionBatch holding already-serialized Items (no re-encoding)."""
    parts = []
    for raw in items:
        parts += (_ITEMS_TAG, _varint(len(raw)), raw)
    return b"".join(parts)


def split_batch(data: bytes) -> list[bytes]:
    """The serialized Items of a TransitionBatch, as byte strings (inverse of frame_batch)."""
    items, pos, end = [], 0, len(data)
    view = memoryview(data)
    while pos < end:
        if data[pos] != 0x0A:
            raise WireError(f"TransitionBatch: unexpected field tag {data[pos]:#x} at byte {pos}")
        pos += 1
        length, shift = 0, 0
        while True:
            if pos >= end:
                raise WireError("TransitionBatch: truncated length")
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if pos + length > end:
            raise WireError("TransitionBatch: truncated item")
        items.append(bytes(view[pos : pos + length]))
        pos += length
    return items


# ------------------------------------------------------------------------------------- images once/frame


class FrameLinker:
    """Puts next_obs images back into transitions that left them to their successor (one per actor).

    `push(t, pending)` returns the transitions now complete, in order: a pending transition is held until the
    next transition of its episode arrives. `drop_pending()` returns the held one (cut episode) if any.
    """

    def __init__(self) -> None:
        self._held: Transition | None = None

    @property
    def held(self) -> Transition | None:
        return self._held

    def push(self, t: Transition, next_images_pending: bool) -> list[Transition]:
        done = []
        h = self._held
        if h is not None:
            self._held = None
            if h.episode_id == t.episode_id and t.step == h.step + 1 and t.obs.get("images"):
                done.append(dataclasses.replace(h, next_obs={**h.next_obs, "images": t.obs["images"]}))
            # else: the episode was cut before its successor came; the held transition has no next frame
        if next_images_pending:
            self._held = t
        else:
            done.append(t)
        return done

    def drop_pending(self) -> Transition | None:
        h, self._held = self._held, None
        return h


# ------------------------------------------------------------------------------------------- parameters


def _flatten(tree: Mapping, prefix: str, arrays: list[tuple[str, Any]], empty: list[str]) -> None:
    """The (path, leaf) pairs and the empty subtrees' paths of a tree of dicts (paths: keys joined by "/")."""
    for key, value in tree.items():
        if not isinstance(key, str) or not key or "/" in key:
            raise WireError(f"parameter tree key {key!r} under {prefix or '/'}: keys are non-empty strings without '/'")
        path = prefix + key
        if not isinstance(value, Mapping):
            arrays.append((path, value))
        elif value:
            _flatten(value, path + "/", arrays, empty)
        else:
            empty.append(path)  # a module without parameters: kept, so the tree's structure is exact


# Protobuf tags (field number << 3 | 2, length-delimited) of the fields framed by hand below.
_SUBSET_TENSORS_TAG = b"\x0a"  # ParameterSubset.tensors = 1
_NAMED_TENSOR_TAG = b"\x12"  # NamedTensor.tensor = 2
_TENSOR_DATA_TAG = b"\x1a"  # Tensor.data = 3


def _tensor_entry(path: str, array: Any) -> list:
    """One ParameterSubset.tensors entry (a NamedTensor) as byte strings to join: framed by hand so that the array's
    bytes are copied once, into the joined subset (nested messages copy them four times). The bytes are the ones
    protobuf writes (tests/test_wire.py checks it)."""
    name, a = _wire_array(array)
    data = memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
    data_field = [_TENSOR_DATA_TAG, _varint(len(data)), data] if len(data) else []  # proto3 leaves out empty bytes
    tensor = [pb.Tensor(dtype=name, shape=a.shape).SerializeToString(), *data_field]
    entry = [pb.NamedTensor(path=path).SerializeToString(), _NAMED_TENSOR_TAG, _varint(_length(tensor)), *tensor]
    return [_SUBSET_TENSORS_TAG, _varint(_length(entry)), *entry]


def _length(parts: list) -> int:
    return sum(len(part) for part in parts)


def encode_parameter_subset(tree: Any) -> bytes:
    """The serialized ParameterSubset of a parameter tree (jax or numpy leaves; flax structs and FrozenDicts are
    taken as their state dicts, the form `flax.serialization.from_state_dict` restores)."""
    from flax.serialization import to_state_dict

    state = to_state_dict(tree)
    if not isinstance(state, Mapping):
        raise WireError(f"a parameter subset is a tree of named arrays, not a {type(tree).__name__}")
    arrays: list[tuple[str, Any]] = []
    empty: list[str] = []
    _flatten(state, "", arrays, empty)
    parts = []
    for path, leaf in sorted(arrays, key=lambda pair: pair[0]):
        try:
            parts += _tensor_entry(path, leaf)
        except WireError as e:
            raise WireError(f"parameter {path}: {e}") from None
    parts.append(pb.ParameterSubset(empty_paths=sorted(empty)).SerializeToString())  # field 2, after field 1
    return b"".join(parts)


def _check_paths(paths: list[str], what: str) -> None:
    """Every path names one node: none empty or with an empty component, none twice, none a prefix of another."""
    seen: set[str] = set()
    for path in paths:
        if "" in path.split("/"):
            raise WireError(f"{what}: path {path!r} is empty or has an empty component")
        if path in seen:
            raise WireError(f"{what}: path {path!r} appears twice")
        seen.add(path)
    for path in paths:
        parts = path.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in seen:
                raise WireError(f"{what}: {prefix!r} is both a leaf (an array or an empty subtree) and the prefix "
                                f"of {path!r}")


def decode_parameter_subset(data: bytes | bytearray, what: str = "parameter subset") -> dict:
    """The nested dict of read-only numpy arrays of a serialized ParameterSubset; WireError if it is malformed."""
    m = pb.ParameterSubset()
    try:
        m.ParseFromString(data)
    except Exception as e:  # protobuf's DecodeError
        raise WireError(f"{what}: undecodable ({len(data)} bytes): {e}") from None
    _check_paths([t.path for t in m.tensors] + list(m.empty_paths), what)
    tree: dict = {}
    leaves = [(t.path, tensor_from_proto(t.tensor, f"{what} {t.path}")) for t in m.tensors]
    for path, value in leaves + [(path, {}) for path in m.empty_paths]:
        *parents, name = path.split("/")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[name] = value
    return tree


def encode_parameter_set(version: int, subsets: Mapping[str, Any], *, incarnation: int,
                         chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list["pb.ParameterChunk"]:
    """All chunks of one parameter set of the learner `incarnation` (nonzero); `subsets` maps name -> tree."""
    if not subsets:
        raise WireError("a parameter set needs at least one subset")
    if not 0 < incarnation < 1 << 64:
        raise WireError(f"incarnation {incarnation} is not a nonzero 64-bit number")
    chunks = []
    names = sorted(subsets)
    for si, name in enumerate(names):
        data = encode_parameter_subset(subsets[name])
        crc = zlib.crc32(data)
        n = max(1, -(-len(data) // chunk_bytes))
        view = memoryview(data)
        for ci in range(n):
            chunks.append(
                pb.ParameterChunk(
                    version=version,
                    subset=name,
                    subset_index=si,
                    num_subsets=len(names),
                    chunk_index=ci,
                    num_chunks=n,
                    data=bytes(view[ci * chunk_bytes : (ci + 1) * chunk_bytes]),
                    subset_bytes=len(data),
                    subset_crc32=crc,
                    incarnation=incarnation,
                )
            )
    return chunks


def encode_grants(grants: Grants) -> "pb.ParameterUpdate":
    """The parameter stream's pacing message."""
    return pb.ParameterUpdate(pacing=pb.PacingGrants(max_seq=dict(grants.max_seq),
                                                     new_actor_steps=grants.new_actor_steps))


def decode_grants(m: "pb.PacingGrants") -> Grants:
    return Grants(dict(m.max_seq), int(m.new_actor_steps))


class ParameterSet(NamedTuple):
    """A complete parameter set: named by (incarnation, version), since a restarted learner may reuse a version."""

    incarnation: int
    version: int
    subsets: dict[str, Any]  # subset name -> nested dict of read-only numpy arrays


class ParameterAssembler:
    """Reassembles a chunked parameter set (chunks arrive in order on one stream) into preallocated buffers;
    a chunk of another set discards an incomplete one, a stale chunk (an older version of the same incarnation than
    a set this assembler started or completed) is ignored."""

    def __init__(self) -> None:
        self._set: tuple[int, int] | None = None  # (incarnation, version) being assembled
        self._done: dict[str, bytearray] = {}
        self._buffer: bytearray | None = None
        self._subset, self._pos = "", 0
        self._completed: tuple[int, int] | None = None  # the newest set handed out

    def _stale(self, incarnation: int, version: int) -> bool:
        done, started = self._completed, self._set
        return ((done is not None and done[0] == incarnation and version <= done[1])
                or (started is not None and started[0] == incarnation and version < started[1]))

    def add(self, c: "pb.ParameterChunk") -> ParameterSet | None:
        """Take one chunk; the whole set when it is the last missing one."""
        if self._stale(c.incarnation, c.version):
            return None  # a stale chunk of a set we already moved past
        if self._set != (c.incarnation, c.version):
            self._set, self._done, self._buffer = (c.incarnation, c.version), {}, None
        where = f"parameter set v{c.version} subset {c.subset!r} chunk {c.chunk_index}/{c.num_chunks}"
        if c.chunk_index == 0:
            self._buffer, self._subset, self._pos = bytearray(c.subset_bytes), c.subset, 0
        elif self._buffer is None or c.subset != self._subset:
            raise WireError(f"{where}: arrived without the chunks before it")
        end = self._pos + len(c.data)
        if end > len(self._buffer):
            raise WireError(f"{where}: more bytes than the announced {c.subset_bytes}")
        self._buffer[self._pos : end] = c.data
        self._pos = end
        if c.chunk_index != c.num_chunks - 1:
            return None
        if self._pos != c.subset_bytes or zlib.crc32(self._buffer) != c.subset_crc32:
            raise WireError(f"{where}: size or CRC mismatch after reassembly")
        self._done[c.subset], self._buffer = self._buffer, None
        if c.subset_index != c.num_subsets - 1:
            return None
        if len(self._done) != c.num_subsets:
            raise WireError(f"parameter set v{c.version}: {len(self._done)} of {c.num_subsets} subsets arrived")
        complete, self._completed = self._done, self._set
        self._set, self._done = None, {}
        subsets = {name: decode_parameter_subset(data, f"parameter set v{c.version} subset {name!r}")
                   for name, data in complete.items()}
        return ParameterSet(c.incarnation, c.version, subsets)
