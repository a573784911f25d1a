"""Typed configs: nested dataclasses with defaults in code, YAML overrides, ``dotted.key=value``.

Unknown keys and values of the wrong type are errors that name the key (and the file). ``to_dict`` /
``from_dict`` round-trip a config through plain dicts (what is saved with runs and handed to Ray).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
import types
import typing
from pathlib import Path
from typing import Any, Iterator, TypeVar

import yaml

C = TypeVar("C")


class ConfigError(ValueError):
    """A config key is unknown or a value does not fit its field."""


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false are booleans, so ``mode: off`` stays the string ``"off"``."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", __import__("re").compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def yaml_load(text: str) -> Any:
    """Parse config YAML (booleans are only true/false)."""
    return yaml.load(text, Loader=_Loader)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict of a dataclass config (tuples become lists)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            v = to_dict(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} fits none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = yaml_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} items, got {value!r}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        seq = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(seq) if origin is tuple else seq
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an int, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[C], data: dict[str, Any], where: str = "") -> C:
    """Build dataclass ``cls`` from a (partial) nested dict; missing keys keep their defaults.

    Raises:
        ConfigError: a key ``cls`` has no field for, or a value of the wrong type.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key{'s' if len(unknown) > 1 else ''} "
            + ", ".join(f"'{prefix}{k}'" for k in unknown)
            + f" (valid: {', '.join(sorted(names))})"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            # Merge a partial mapping over the field's own defaults.
            default = _default_of(cls, name)
            base = to_dict(default) if default is not None else {}
            kwargs[name] = from_dict(tp, deep_merge(base, value), key)
        else:
            kwargs[name] = _coerce(value, tp, key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:  # a dataclass's own __post_init__ check
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None


def _default_of(cls: type, name: str) -> Any:
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                return f.default_factory()  # type: ignore[misc]
    return None


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``, recursively for nested mappings."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[1,2]"]`` -> ``{"a": {"b": 1}, "c": [1, 2]}``; values parse as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form dotted.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier one")
        node[parts[-1]] = value
    return out


def shipped_configs() -> Path:
    """The configs shipped inside the package (``emgscale/configs/``: ``models/``, ``fingers/``, the
    experiments), found with :mod:`importlib.resources`, so an installed wheel has them too."""
    return Path(str(importlib.resources.files("emgscale") / "configs"))


def config_path(path: "str | Path") -> Path:
    """``path``, or the shipped config it names: a relative ``configs/...`` path that does not exist here
    is read from :func:`shipped_configs` (``configs/models/tds_small.yaml`` works from a checkout, from any
    working folder and from an installed wheel; a file of that name in the working folder wins)."""
    p = Path(path)
    if p.exists() or p.is_absolute() or len(p.parts) < 2 or p.parts[0] != "configs":
        return p
    shipped = shipped_configs().joinpath(*p.parts[1:])
    return shipped if shipped.exists() else p


def load_yaml(path: "str | Path") -> dict[str, Any]:
    """Read a YAML override file (empty file -> ``{}``; a ``configs/...`` path may name a shipped config,
    :func:`config_path`), with errors that name the file."""
    path = config_path(path)
    try:
        data = yaml_load(path.read_text()) or {}
    except FileNotFoundError:
        hint = ("; an override needs '=' (key=value)" if path.suffix not in (".yaml", ".yml")
                and "=" not in str(path) else "")
        raise ConfigError(f"{path}: no such config file{hint}") from None
    except (UnicodeDecodeError, IsADirectoryError) as e:
        what = "a folder" if isinstance(e, IsADirectoryError) else "not a text YAML file (binary?)"
        raise ConfigError(f"{path}: {what}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping")
    return data


def build_config(cls: type[C], files: list["str | Path"] = (), overrides: list[str] = (),
                 base: dict[str, Any] | None = None) -> C:
    """Defaults of ``cls``, then each YAML file in order, then ``dotted.key=value`` overrides."""
    merged: dict[str, Any] = dict(base or {})
    for f in files:
        try:
            data = load_yaml(f)
            from_dict(cls, deep_merge(merged, data))  # validate now so the error names the file
        except ConfigError as e:
            raise ConfigError(f"{f}: {e}") if not str(e).startswith(str(f)) else e from None
        merged = deep_merge(merged, data)
    merged = deep_merge(merged, parse_overrides(list(overrides)))
    return from_dict(cls, merged)


def save_config(cfg: Any, path: "str | Path") -> None:
    """Write the resolved config as YAML, atomically."""
    from emgscale.common import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


# ----------------------------------------------------------------------------- value checks
#: A rule for one field: ``">0"``, ``">=0"``, ``">=1"``, ``">=-1"``, ``"[0,1]"``, ``"[0,1)"``, ``"any"``
#: (any finite number), ``"file"`` / ``"dir"`` / ``"path"`` (must exist; URLs are not checked), a tuple
#: of allowed values, or a callable returning a problem (or None).
Rule = Any

_BOUNDS = {">0": (0, None, False, True), ">=0": (0, None, True, True), ">=1": (1, None, True, True),
           ">=-1": (-1, None, True, True), "[0,1]": (0, 1, True, True), "[0,1)": (0, 1, True, False),
           "any": (None, None, True, True)}


def _number_problem(value: float, rule: str) -> str | None:
    lo, hi, lo_closed, hi_closed = _BOUNDS[rule]
    if not math.isfinite(value):
        return "must be a finite number"
    if ((lo is not None and (value < lo or (value == lo and not lo_closed)))
            or (hi is not None and (value > hi or (value == hi and not hi_closed)))):
        return f"must be {'in ' + rule.replace(',', ', ') if rule.startswith('[') else rule.replace('>', '> ').replace('> =', '>= ')}"
    return None


def _path_problem(value: str, kind: str) -> str | None:
    if "://" in value or value.startswith("pipe:") or "{" in value:
        return None  # a URL or a pattern: the reader says when it cannot open it
    p = Path(value)
    if kind == "file" and not p.is_file():
        return "no such folder (expected a file)" if p.is_dir() else "no such file"
    if kind == "dir" and not p.is_dir():
        return "is a file, not a folder" if p.exists() else "no such folder"
    if kind == "path" and not p.exists():
        return "no such file or folder"
    return None


def _default_rule(key: str) -> str:
    leaf = key.rsplit(".", 1)[-1]
    if "dropout" in leaf:
        return "[0,1)"
    if leaf.endswith("_prob"):
        return "[0,1]"
    return ">=0"


def _leaves(cfg: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    for f in dataclasses.fields(cfg):
        key = f"{where}.{f.name}" if where else f.name
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, key)
        elif value is not None:
            yield key, value


def check_values(cfg: Any, rules: dict[str, Rule]) -> None:
    """Check every field of a dataclass config against ``rules``, before any work is done.

    Every number (and every number in a list) must be finite and, unless a rule says otherwise, >= 0
    (``*dropout*`` in [0, 1), ``*_prob`` in [0, 1]). ``rules`` maps a dotted key — or an ``fnmatch``
    pattern such as ``model.*layers`` — to a :data:`Rule`; an exact key wins over patterns, and the
    first matching pattern over the default. Unset (None) fields are not checked; paths are checked
    after every other field.

    Raises:
        ConfigError: ``<key>=<value>: <problem>`` for the first field that breaks its rule.
    """
    import fnmatch

    checks = []
    for key, value in _leaves(cfg):
        rule = rules.get(key)
        if rule is None:
            rule = next((r for pat, r in rules.items() if "*" in pat and fnmatch.fnmatchcase(key, pat)), None)
        checks.append((rule in ("file", "dir", "path"), key, value, rule))
    for is_path, key, value, rule in sorted(checks, key=lambda c: c[0]):  # stable: paths last
        problem = None
        if is_path:
            problem = _path_problem(str(value), rule)
        elif callable(rule):
            problem = rule(value)
        elif isinstance(rule, tuple):
            if value not in rule:
                problem = f"must be one of {', '.join(map(str, rule))}"
        else:
            for item in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(item, (int, float)) and not isinstance(item, bool):
                    problem = _number_problem(item, rule or _default_rule(key))
                    if problem:
                        break
        if problem:
            raise ConfigError(f"{key}={value!r}: {problem}")


# ----------------------------------------------------------------------------- values that run commands
#: URL schemes WebDataset opens by running a command through a shell (``webdataset.gopen``: ``pipe:``).
SHELL_SCHEMES = ("pipe",)
_URL_STRIPPED = {ord(c): None for c in "\t\r\n"}  # what urllib drops from a URL before parsing it


def runs_a_command(value: Any) -> bool:
    """True when ``value`` is a string (or holds one) that WebDataset would open by running a shell
    command — a ``pipe:`` URL in any spelling urllib accepts — or that its ``::`` lists, brace or
    ``$WDS_`` variable expansion could turn into one (braces or ``$`` before the first colon)."""
    if isinstance(value, (list, tuple)):
        return any(runs_a_command(v) for v in value)
    if not isinstance(value, str):
        return False
    from urllib.parse import urlsplit

    for part in value.split("::"):
        part = part.translate(_URL_STRIPPED).lstrip("".join(map(chr, range(33))))
        head, colon, _ = part.partition(":")
        if colon and (any(c in head for c in "{}$") or urlsplit(part).scheme in SHELL_SCHEMES):
            return True
    return False


def check_stored_values(cfg: Any, source: "str | Path", trusted: Any = None, prefix: str = "") -> None:
    """Refuse a config read from a file the run did not write (a checkpoint's stored config, another run's
    ``config.yaml``) when one of its values would run a command (:func:`runs_a_command`).

    Such values are accepted only from the user's own command line or YAML files: ``trusted`` is the
    config those give, and a value equal to its value there is the user's own.

    Args:
        cfg: the dataclass config built from the stored values.
        source: the file they came from (for the message).
        trusted: the dataclass config of the user's own files and overrides, if any.
        prefix: the section ``cfg`` is, for the message (``data``).

    Raises:
        ConfigError: naming the first such key, its value and the file.
    """
    mine = dict(_leaves(trusted, prefix)) if trusted is not None else {}
    for key, value in _leaves(cfg, prefix):
        if runs_a_command(value) and mine.get(key) != value:
            shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "...'"
            raise ConfigError(f"{source}: {key}={shown} would run a shell command, and a value read from a stored "
                              f"config is data, not a command: give {key}=... on your own command line or YAML "
                              "if you trust it")
