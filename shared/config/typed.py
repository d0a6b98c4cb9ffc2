"""YAML mappings into frozen, typed dataclasses: each field coerced by its type hint, and
every unknown, missing or mistyped key an error that names the dotted key and the file."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from shared.errors import ConfigError

EXCERPT = 80  # characters of a bad value an error message shows


class _NoAliases(yaml.SafeLoader):
    """YAML without aliases: `*name` would let a few lines expand into gigabytes (the
    "billion laughs"), and a config never needs one. Anchors alone are harmless."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            what = f"aliases (*{event.anchor}) are not allowed: write the value out"
            raise yaml.composer.ComposerError(None, None, what, event.start_mark)
        return super().compose_node(parent, index)


def load_yaml(text: str) -> Any:
    """Parse one YAML document safely and without aliases (a yaml.YAMLError otherwise)."""
    return yaml.load(text, Loader=_NoAliases)


def excerpt(value: Any) -> str:
    """repr(value), cut to EXCERPT characters: an error message stays one readable line."""
    text = repr(value)
    return text if len(text) <= EXCERPT else f"{text[:EXCERPT]}... ({len(text)} characters)"


def plain(value: Any) -> Any:
    """A YAML-safe copy: tuples to lists, paths to strings, numbers to plain floats."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float):  # a float subclass (an Eps) as the plain number
        return float(value)
    return value


def set_dotted(raw: dict[str, Any], dotted: str, value: Any, path: Path) -> None:
    """Set `a.b.c` in a nested mapping (an override given on the command line)."""
    node = raw
    parts = dotted.split(".")
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{path}: cannot override {dotted!r}: {p!r} is not a mapping")
        node = nxt
    node[parts[-1]] = value


def build(cls: type, raw: Any, where: str, source: str) -> Any:
    """An instance of dataclass `cls` from mapping `raw` at dotted key `where`."""
    label = where or "<top level>"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: key {label!r} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"{source}: unknown key {key!r}; allowed here: {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{where}.{name}" if where else name
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{source}: missing required key {key!r}")
            continue
        kwargs[name] = coerce(hints[name], raw[name], key, source)
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ConfigError(f"{source}: {where + '.' if where else ''}{e}") from None


def coerce(tp: Any, value: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:  # a free value (a study variant's override), checked where it is applied
        return value

    def bad(expected: str) -> ConfigError:
        return ConfigError(
            f"{source}: key {key!r} must be {expected}, got {excerpt(value)} ({type(value).__name__})"
        )

    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(inner[0], value, key, source)
    if origin is Literal:
        if value not in args:
            raise bad(f"one of {list(args)}")
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build(tp, value, key, source)
    if origin is tuple:
        if not isinstance(value, list):
            raise bad("a list")
        return tuple(coerce(args[0], v, f"{key}[{i}]", source) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise bad("a mapping")
        return {str(k): coerce(args[1], v, f"{key}.{k}", source) for k, v in value.items()}
    parse = getattr(tp, "parse_config_value", None)
    if parse is not None:  # a value with its own notation (an eps written as k/255)
        try:
            return parse(value)
        except ValueError as e:
            raise bad(str(e)) from None
    if tp is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise bad("a path string")
        return Path(value).expanduser().absolute()
    raise ConfigError(f"{source}: key {key!r} has an unsupported type {tp!r}")  # pragma: no cover
