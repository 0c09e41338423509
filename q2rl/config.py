"""Configs as frozen dataclasses, loaded from YAML and validated once, with errors that name the field.

Every config class is a frozen dataclass whose fields carry a one-line help text:

    @dataclasses.dataclass(frozen=True)
    class SacConfig:
        lr: float = doc(3e-4, "Adam learning rate of actor and critic.")

`load_config(SacConfig, "configs/x.yaml", overrides=["lr=1e-4"])` reads the file, applies `a.b.c=value`
overrides (values parsed as YAML), builds the nested dataclasses, and raises `ConfigError` naming the
dotted field path and what to do for unknown keys, wrong types, or values a `validate()` method rejects.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is missing, misspelled, of the wrong type, or out of range."""


def doc(default: Any, help_text: str, secret: bool = False, **kwargs: Any) -> Any:
    """A dataclass field with a default and a one-line help text (shown by `--help` and in errors). A `secret`
    field is left out of `to_dict` (so of every dumped config.yaml and summary) and of the dataclass's repr."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple or a default_factory for mutable defaults")
    metadata = {"help": help_text, "secret": secret}
    if secret:
        kwargs.setdefault("repr", False)
    if dataclasses.is_dataclass(default) and not isinstance(default, type):
        return dataclasses.field(default_factory=lambda: default, metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def field_help(cls: type, name: str) -> str:
    """The help text of a config field ('' when it has none)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("help", "")
    return ""


_RULES = {"> 0": lambda v: v > 0, ">= 0": lambda v: v >= 0, ">= 1": lambda v: v >= 1, "finite": lambda v: True}


def check_numbers(cfg: Any, rule: str, *names: str) -> None:
    """Raise ConfigError naming the first of the fields `names` of `cfg` that is not a finite number obeying `rule`
    ("> 0", ">= 0", ">= 1" or "finite"); None (a preset's placeholder) passes, and a tuple is checked element-wise.
    The message gives the field's default as an example of a valid value."""
    for name in names:
        value = getattr(cfg, name)
        values = value if isinstance(value, tuple) else (value,)
        if all(v is None or (math.isfinite(v) and _RULES[rule](v)) for v in values):
            continue
        default = next((f.default for f in dataclasses.fields(cfg) if f.name == name), dataclasses.MISSING)
        example = "" if default in (dataclasses.MISSING, None) else f" (the default is {default!r})"
        wanted = "a finite number" if rule == "finite" else f"{rule}"
        each = " in every entry" if isinstance(value, tuple) else ""
        raise ConfigError(f"{name}: {value!r} must be {wanted}{each}{example}")


def _type_name(tp: Any) -> str:
    """How --help names a field's type: 'a' | 'b' for a Literal, int | None for an optional field."""
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against the annotation `tp` and convert where lossless (int -> float, list -> tuple)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} fits none of {tp}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{path}: {value!r} is not one of {_type_name(tp)}")
        return value
    if origin in (tuple, typing.Tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        key_tp, val_tp = get_args(tp)
        return {_coerce(k, key_tp, path): _coerce(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return _build(tp, value, path)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: type[T], data: Any, path: str) -> T:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping of fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = path or cls.__name__
        raise ConfigError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; known fields: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, f in fields.items():
        sub = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{sub}: required field is missing ({f.metadata.get('help', 'no help')})")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as e:
            raise ConfigError(f"{path}.{e}" if path else str(e)) from None
    return obj


def from_dict(cls: type[T], data: dict | None) -> T:
    """Build and validate a config dataclass from a plain mapping."""
    return _build(cls, data or {}, "")


def _set_path(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        child = node.get(k)
        if child is None:
            child = node[k] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: {k} is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'a.b=3' -> ('a.b', 3); the value is parsed as YAML so lists and booleans work."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected the form section.field=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from a file, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if data is None:  # an empty file, or comments only: most likely a mistake, not "all defaults"
        raise ConfigError(
            f"config file {path} is empty: put the sections and fields to set in it as a YAML mapping (e.g. "
            "`env: {sim: {task: pick_cube}}`; configs/ holds complete examples), or write `{}` for all defaults"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of sections")
    return data


def read_yaml_with_overrides(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> dict:
    """A YAML mapping from a file (or {}) with `a.b=value` overrides applied (not yet validated)."""
    data = read_yaml(path) if path is not None else {}
    for text in overrides:
        key, value = parse_override(text)
        _set_path(data, key, value)
    return data


def merged(base: dict, updates: dict) -> dict:
    """`base` with `updates` laid over it, section by section (neither is modified)."""
    out = dict(base)
    for key, value in updates.items():
        out[key] = merged(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> T:
    """Load `cls` from a YAML file (or defaults), apply `a.b=value` overrides, validate."""
    return build_config(cls, read_yaml(path) if path is not None else {}, overrides, path)


class OverrideError(ConfigError):
    """A command-line override (section.field=value) is malformed, names no field, or gives a bad value. Its
    message names the argument, not the YAML file: the typo is on the command line."""

    def __init__(self, text: str, message: str) -> None:
        super().__init__(f"argument {text!r}: {message}")


def check_override(cls: type, text: str) -> tuple[str, Any]:
    """(dotted key, value) of one override, checked against `cls` before it touches the data: the key names a
    field (a close spelling is suggested when not) and the value has the field's type. OverrideError otherwise."""
    try:
        key, value = parse_override(text)
    except ConfigError:
        raise OverrideError(text, "expected the form section.field=value (e.g. agent.utd=4)") from None
    tp: Any = cls
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(tp):  # a mapping-typed field: its keys are checked when the config is built
            break
        names = sorted(f.name for f in dataclasses.fields(tp) if f.init)
        if part not in names:
            where = ".".join(parts[:i])
            close = difflib.get_close_matches(part, names, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f"; it has {', '.join(names)}"
            raise OverrideError(text, f"no field {part} in {where}{hint}" if where else f"no section {part}{hint}")
        tp = typing.get_type_hints(tp)[part]
    else:
        try:
            value = _coerce(value, tp, key)
        except ConfigError as e:
            raise OverrideError(text, str(e)) from None
        if dataclasses.is_dataclass(value):  # a whole section given as a mapping: keep it a mapping for merging
            value = to_dict(value)
    return key, value


def _blamed_override(message: str, keys: dict[str, str]) -> str | None:
    """The override (text) a validation message is about: the one whose field the message names."""
    field = message.split(":", 1)[0].split(" ", 1)[0].rstrip(",")  # e.g. "agent.utd, batch_size ... must be"
    return next((text for key, text in reversed(keys.items()) if field == key or field.startswith(key + ".")), None)


def build_config(cls: type[T], data: dict, overrides: typing.Sequence[str] = (),
                 source: str | Path | None = None) -> T:
    """`cls` from a mapping read from `source` (a file, for messages) with command-line overrides applied and
    checked one by one; an error is named after the argument it comes from, or after the file."""
    keys: dict[str, str] = {}
    data_as_read, data = data, copy.deepcopy(data)  # the caller's mapping stays as read
    for text in overrides:
        key, value = check_override(cls, text)
        try:
            _set_path(data, key, value)
        except ConfigError as e:
            raise OverrideError(text, str(e).split(": ", 1)[-1]) from None
        keys[key] = text
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        text = _blamed_override(str(e), keys)
        if text is not None:
            raise OverrideError(text, str(e)) from None
        if keys and _valid(cls, data_as_read):
            # A rule across fields that only the overrides break: the file is not to blame.
            raise ConfigError(f"{e} (from the command line: {' '.join(keys.values())}"
                              f"{f'; {source} alone is valid' if source is not None else ''})") from None
        where = f" in {source}" if source is not None else (" (from the command line)" if keys else "")
        raise ConfigError(f"{e}{where}") from None


def _valid(cls: type, data: dict) -> bool:
    try:
        from_dict(cls, data)
    except ConfigError:
        return False
    return True


def to_dict(cfg: Any) -> dict:
    """A plain, YAML-safe mapping (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v) if not f.metadata.get("secret")}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def config_hash(cfg: Any) -> str:
    """A stable short hash of a config: `canonical_hash` of its `to_dict`."""
    return canonical_hash(to_dict(cfg))


# ------------------------------------------------------------------------------------- canonical JSON (RFC 8785)
# The handshake's config hash is computed on this form (protos/q2rl.proto): a client in any language reproduces
# it byte for byte, which Python's json.dumps (its float spelling, its spacing) would not let it do.


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 (JSON Canonicalization Scheme) UTF-8 bytes of a JSON value built of dicts with string keys,
    lists/tuples, strings, ints, floats, bools and None: keys sorted by UTF-16 code units, no whitespace, strings
    escaped as ECMAScript's JSON.stringify does, numbers as ECMAScript's Number-to-string. ValueError for NaN, an
    infinity, an int beyond 2**53 (not exact as a JSON number) or a lone surrogate; TypeError for other types."""
    try:
        return _jcs(value).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("canonical JSON: a string holds a lone surrogate, which I-JSON (RFC 7493) forbids") from None


def canonical_hash(value: Any) -> str:
    """The first 16 hex digits of the SHA-256 of `canonical_json(value)`."""
    return hashlib.sha256(canonical_json(value)).hexdigest()[:16]


def _jcs(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):  # before int: bool is an int in Python
        return "true" if v else "false"
    if isinstance(v, int):
        if abs(v) > 2**53:
            raise ValueError(f"canonical JSON: the integer {v} has no exact JSON (IEEE double) form")
        return _es_number(float(v))
    if isinstance(v, float):
        return _es_number(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # escapes exactly what JSON.stringify escapes
    if isinstance(v, dict):
        if not all(isinstance(k, str) for k in v):
            raise TypeError(f"canonical JSON: object keys must be strings, not {sorted(map(repr, v))}")
        keys = sorted(v, key=lambda k: k.encode("utf-16-be"))  # UTF-16 code unit order, as RFC 8785 sorts
        return "{" + ",".join(f"{_jcs(k)}:{_jcs(v[k])}" for k in keys) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_jcs(x) for x in v) + "]"
    raise TypeError(f"canonical JSON: {type(v).__name__} is not a JSON value")


def _es_number(x: float) -> str:
    """ECMAScript's Number::toString(x) (RFC 8785's number form): the shortest digits that round-trip, written
    without exponent for 1e-7 <= |x| < 1e21 (100.0 -> "100", 1e-7 -> "1e-7", 1e21 -> "1e+21", -0.0 -> "0")."""
    if not math.isfinite(x):
        raise ValueError(f"canonical JSON: {x} is not a JSON number")
    if x == 0:
        return "0"
    if x < 0:
        return "-" + _es_number(-x)
    # repr gives the shortest round-tripping digits (closest to x among them), as ECMAScript requires
    mantissa, _, exponent = repr(x).partition("e")
    whole, _, fraction = mantissa.partition(".")
    all_digits = whole + fraction
    lead = len(all_digits) - len(all_digits.lstrip("0"))
    digits = all_digits.strip("0")
    k, n = len(digits), len(whole) + int(exponent or 0) - lead  # x = 0.digits * 10**n, as the spec names them
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * -n + digits
    mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
    return f"{mantissa}e{'+' if n > 1 else '-'}{abs(n - 1)}"


def config_differences(ours: str | bytes, theirs: str | bytes) -> list[tuple[str, str, str]]:
    """(dotted path, our value, their value) of every field that differs between two JSON config documents, values
    as canonical JSON ("absent" where a side lacks the field), sorted by path. Lists compare whole."""
    a, b = _json_leaves(json.loads(ours)), _json_leaves(json.loads(theirs))
    shown = [(path, *(_jcs(side[path]) if path in side else "absent" for side in (a, b)))
             for path in sorted(a.keys() | b.keys())]
    return [(path, mine, other) for path, mine, other in shown if mine != other]  # canonical: 1 == 1.0, not true


def _json_leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        return {prefix: value}
    leaves: dict[str, Any] = {}
    for key, v in value.items():
        leaves.update(_json_leaves(v, f"{prefix}.{key}" if prefix else key))
    return leaves


def dump_yaml(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def describe(cls: type, prefix: str = "") -> list[str]:
    """One line per field, `section.field (type, default): help` — the text behind `--help`."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines.extend(describe(tp, name + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else "required"
        lines.append(f"{name} ({_type_name(tp)}, default {default!r}): {f.metadata.get('help', '')}")
    return lines
