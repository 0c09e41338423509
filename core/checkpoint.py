"""Checkpoints without pickle: a JSON header (metadata, format version, checksum) + a msgpack pytree.

File layout:  b"Q2RLCKPT" | uint32 LE header length | header JSON | payload (flax.serialization msgpack).
The header records the payload size and SHA-256, so a truncated or corrupted file is detected on load.
Writes go to a temporary file that is fsynced and then renamed over the target: a crash mid-save leaves
the previous checkpoint intact.

    save_checkpoint("runs/x/policy.ckpt", {"params": params}, metadata={"step": 10})
    ckpt = load_checkpoint("runs/x/policy.ckpt")        # ckpt.state (nested dicts of numpy), ckpt.metadata

    save_checkpoint("runs/x/checkpoint/learner.ckpt", state, meta, keep=3, number=updates)  # the last 3 states
    kept_checkpoints("runs/x/checkpoint/learner.ckpt")  # learner-<number>.ckpt, newest first: to fall back on
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import struct as binary
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import serialization

from q2rl.config import ConfigError, from_dict, to_dict
from q2rl.core.normalization import ObsNormalizer
from q2rl.core.policies import BCPolicy, PolicyConfig, make_policy_net
from q2rl.recordio import atomic_write, fsync_dir

MAGIC = b"Q2RLCKPT"
FORMAT_VERSION = 1
BC_POLICY_KIND = "bc_policy"
BC_POLICY_FILENAME = "policy.ckpt"
_LEN = binary.Struct("<I")


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted, or of another format version or kind."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """What `load_checkpoint` returns: the restored state (nested dicts of numpy arrays) and the metadata."""

    state: Any
    metadata: dict


def encode_checkpoint(tree: Any, metadata: Mapping[str, Any] | None = None) -> bytes:
    """The bytes of a checkpoint holding `tree` (any flax-serialisable pytree) and JSON-able `metadata`."""
    payload = serialization.msgpack_serialize(serialization.to_state_dict(jax.device_get(tree)))
    header = {
        "format_version": FORMAT_VERSION,
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "metadata": dict(metadata or {}),
    }
    header_bytes = json.dumps(header, sort_keys=True).encode()
    return MAGIC + _LEN.pack(len(header_bytes)) + header_bytes + payload


def save_checkpoint(path: str | Path, tree: Any, metadata: Mapping[str, Any] | None = None, keep: int = 1,
                    number: int = 0) -> Path:
    """Atomically write `tree` + `metadata` to `path`; returns the path.

    With keep > 1 the last `keep` states stay: each is written as <stem>-<number><suffix> beside `path` (e.g.
    learner-000001200.ckpt for update 1200; a later save with the same number replaces it), `path` becomes a
    second name of the newest (a hard link, no second copy), and older ones beyond `keep` are deleted. When
    `path` is lost or damaged, `kept_checkpoints(path)` lists the earlier states to fall back on."""
    path = Path(path)
    data = encode_checkpoint(tree, metadata)
    if keep <= 1:
        atomic_write(path, data)
        return path
    numbered = path.with_name(f"{path.stem}-{number:09d}{path.suffix}")
    atomic_write(numbered, data)
    link = path.with_name(f".{path.name}.link")
    link.unlink(missing_ok=True)
    try:
        os.link(numbered, link)
        os.replace(link, path)  # atomic: readers see the previous newest state or this one
        fsync_dir(path.parent)
    except OSError:  # a file system without hard links: a second copy
        link.unlink(missing_ok=True)
        atomic_write(path, data)
    for old in kept_checkpoints(path)[keep:]:
        old.unlink(missing_ok=True)
    return path


def kept_checkpoints(path: str | Path) -> list[Path]:
    """The states `save_checkpoint(path, ..., keep=K)` keeps beside `path` (<stem>-<number><suffix>), newest first
    by the time they were written."""
    path = Path(path)
    pattern = re.compile(rf"{re.escape(path.stem)}-\d+{re.escape(path.suffix)}")
    kept = [p for p in path.parent.glob(f"{path.stem}-*{path.suffix}") if pattern.fullmatch(p.name)]
    return sorted(kept, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)


def _read_header(path: Path, data: bytes) -> tuple[dict, int]:
    if not data.startswith(MAGIC):
        raise CheckpointError(f"{path}: not a q2rl checkpoint (bad magic bytes); is it the right file?")
    start = len(MAGIC) + _LEN.size
    if len(data) < start:
        raise CheckpointError(f"{path}: truncated checkpoint ({len(data)} bytes, header missing)")
    (header_len,) = _LEN.unpack_from(data, len(MAGIC))
    if len(data) < start + header_len:
        raise CheckpointError(f"{path}: truncated checkpoint ({len(data)} bytes, header cut short)")
    try:
        header = json.loads(data[start:start + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: corrupted checkpoint header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupted checkpoint header (not a JSON object)")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r}, this q2rl reads version {FORMAT_VERSION}; "
            "re-create it with this version of q2rl"
        )
    missing = {"payload_bytes", "payload_sha256", "metadata"} - set(header)
    if missing:
        raise CheckpointError(f"{path}: corrupted checkpoint header (no {', '.join(sorted(missing))})")
    return header, start + header_len


def read_metadata(path: str | Path) -> dict:
    """Only the metadata of a checkpoint (validates the header, not the payload)."""
    path = Path(path)
    with _open(path) as f:
        head = f.read(len(MAGIC) + _LEN.size)
        if len(head) == len(MAGIC) + _LEN.size and head.startswith(MAGIC):
            head += f.read(_LEN.unpack_from(head, len(MAGIC))[0])
    return _read_header(path, head)[0]["metadata"]


def _open(path: Path):
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint file does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file") from None


def load_checkpoint(path: str | Path, target: Any = None) -> Checkpoint:
    """Read and verify a checkpoint; with `target`, the state is restored into that pytree's structure."""
    path = Path(path)
    with _open(path) as f:
        data = f.read()
    header, offset = _read_header(path, data)
    payload = data[offset:]
    if len(payload) != header["payload_bytes"]:
        raise CheckpointError(
            f"{path}: truncated or padded checkpoint (payload {len(payload)} bytes, expected "
            f"{header['payload_bytes']}); the save was probably interrupted"
        )
    if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
        raise CheckpointError(f"{path}: corrupted checkpoint (payload checksum mismatch)")
    try:
        state = serialization.msgpack_restore(payload)
        if target is not None:
            state = serialization.from_state_dict(target, state)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: checkpoint does not match the expected structure ({e})") from None
    return Checkpoint(state=state, metadata=header["metadata"])


# ----------------------------------------------------------------------------------------------------------
# BC policies


def bc_policy_file(path: str | Path) -> Path:
    """A BC run directory or a checkpoint file -> the checkpoint file."""
    path = Path(path)
    return path / BC_POLICY_FILENAME if path.is_dir() else path


def save_bc_policy(path: str | Path, policy: BCPolicy, policy_cfg: PolicyConfig, state_dim: int,
                   action_dim: int, image_shapes: Mapping[str, Sequence[int]] | None = None,
                   extra: Mapping[str, Any] | None = None) -> Path:
    """Save a BC policy with everything needed to rebuild it (`load_bc_policy`); `extra` is free metadata."""
    metadata = {
        "kind": BC_POLICY_KIND,
        "policy": to_dict(policy_cfg),
        "camera_names": list(policy.camera_names),
        "state_dim": int(state_dim),
        "action_dim": int(action_dim),
        "image_shapes": {k: list(v) for k, v in (image_shapes or {}).items()},
        **dict(extra or {}),
    }
    tree = {"params": policy.params, "normalizer": policy.normalizer}
    return save_checkpoint(bc_policy_file(path), tree, metadata)


def load_bc_policy(path: str | Path) -> BCPolicy:
    """Rebuild a `BCPolicy` from a checkpoint file or a BC run directory (`runs/bc/NAME`)."""
    return load_bc_policy_with_metadata(path)[0]


def load_bc_policy_with_metadata(path: str | Path) -> tuple[BCPolicy, dict]:
    """`load_bc_policy` plus the checkpoint's metadata (policy config, shapes, training info)."""
    path = bc_policy_file(path)
    ckpt = load_checkpoint(path)
    meta = ckpt.metadata
    if meta.get("kind") != BC_POLICY_KIND:
        raise CheckpointError(f"{path}: holds a {meta.get('kind')!r} checkpoint, not a BC policy")
    return bc_policy_from_state(meta, ckpt.state, str(path)), meta


def bc_policy_from_state(meta: Mapping[str, Any], state: Mapping[str, Any], where: str) -> BCPolicy:
    """A `BCPolicy` from a BC checkpoint's metadata (policy config, action size, cameras) and its state
    ({params, normalizer}), wherever they are kept (a BC checkpoint, or an exported policy file: `where` names it)."""
    try:
        cfg = from_dict(PolicyConfig, meta["policy"])
        net = make_policy_net(cfg, meta["action_dim"], tuple(meta["camera_names"]))
        normalizer = ObsNormalizer(
            state_mean=np.asarray(state["normalizer"]["state_mean"], np.float32),
            state_std=np.asarray(state["normalizer"]["state_std"], np.float32),
        )
        params = state["params"]
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{where}: BC policy is missing or has a bad entry ({e})") from None
    return BCPolicy(module=net, params=params, normalizer=normalizer)
