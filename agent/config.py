"""Configuration: one TOML file, then ``MEDISYNC_AGENT_<SECTION>_<KEY>`` environment variables, then CLI flags.

Every value is converted to its field's type in :mod:`agent.settings` and range-checked; any problem becomes a
:class:`~agent.errors.ConfigError` whose message is one line naming where the value came from (``file:line``,
environment variable or flag), the key, what is wrong and what is allowed. The password never enters the
settings: :func:`agent.api.secret.load_credentials` reads it (systemd credential or a private file).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import msgspec

from agent.config_rules import CREDENTIAL_FREE_KEYS, RULES, check_cross_field, has_userinfo, mask_userinfo
from agent.errors import ConfigError
from agent.settings import AgentSettings

DEFAULT_CONFIG_PATH = Path("/etc/medisync-agent/agent.toml")
ENV_PREFIX = "MEDISYNC_AGENT_"
CONFIG_PATH_ENV = ENV_PREFIX + "CONFIG"
PASSWORD_ENV = ENV_PREFIX + "PASSWORD"
EXAMPLE_HINT = "`medisync-agent config example` lists every key"

OriginKind = Literal["default", "file", "env", "flag"]


@dataclass(frozen=True)
class Origin:
    """Where a setting's effective value came from."""

    kind: OriginKind
    where: str
    """Human-readable location: ``path:line``, ``environment variable NAME``, ``--set key`` or ``default``."""


@dataclass(frozen=True)
class LoadedConfig:
    settings: AgentSettings
    origins: Mapping[str, Origin]
    """``section.key`` -> where its value came from, for every field."""
    path: Path | None
    """The file that was read; None when the default file does not exist (all defaults)."""


def section_types() -> dict[str, type[msgspec.Struct]]:
    """``section name`` -> its settings struct, in declaration order."""
    return {f.name: f.type for f in msgspec.structs.fields(AgentSettings)}


def field_types() -> dict[str, dict[str, Any]]:
    """``section`` -> ``key`` -> field type."""
    return {sec: {f.name: f.type for f in msgspec.structs.fields(cls)} for sec, cls in section_types().items()}


def describe_type(tp: Any) -> str:
    """What a person may write for a field of type ``tp``."""
    if get_origin(tp) is Literal:
        choices = [repr(c) if isinstance(c, str) else str(c) for c in get_args(tp)]
        return "one of " + ", ".join(choices)
    if get_origin(tp) is tuple:
        return 'a list of strings, e.g. ["/usr/local/bin/hook", "--flag"] (in the environment or --set: as JSON)'
    names = {str: "a string", bool: "true or false", int: "an integer", float: "a number"}
    return names.get(tp, str(tp))


def _short(value: object) -> str:
    text = repr(value) if not isinstance(value, bool) else str(value).lower()
    if isinstance(value, tuple):  # as the TOML list it was written as
        text = msgspec.json.encode(list(value)).decode()
    text = mask_userinfo(text)  # an error message never repeats a password
    return text if len(text) <= 40 else text[:37] + "..."


def convert_value(key: str, value: object, tp: Any, where: str, *, from_text: bool) -> Any:
    """Convert one value to its field type; ``from_text`` values (env, flags) are parsed leniently from strings."""
    if from_text and tp is bool and isinstance(value, str):
        value = value.strip().lower()
    if from_text and get_origin(tp) is tuple and isinstance(value, str):
        with contextlib.suppress(msgspec.DecodeError):  # not JSON: reported below as the wrong type
            value = msgspec.json.decode(value.strip() or "[]")  # a list from the environment or --set is JSON
    try:
        converted = msgspec.convert(value, tp, strict=not from_text)
    except msgspec.ValidationError:
        problem = "not a valid choice" if get_origin(tp) is Literal else "wrong type"
        raise ConfigError(f"{where}: {key} = {_short(value)}: {problem} (allowed: {describe_type(tp)})") from None
    if isinstance(converted, float) and converted != converted:  # NaN passes every range comparison
        raise ConfigError(f"{where}: {key} = {_short(value)}: not a number (allowed: {describe_type(tp)})")
    return converted


# --- locating keys in the file (tomllib reports no positions) ---------------------------------------------------

_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")


def _bare(name: str) -> str:
    return re.escape(name).join((r"(?:", r"|\"" + re.escape(name) + r"\"|'" + re.escape(name) + r"')"))


def find_line(text: str, section: str, key: str | None) -> int | None:
    """1-based line where ``section.key`` (or the ``[section]`` table itself when key is None) is defined."""
    key_in_table = re.compile(r"^\s*" + _bare(key or "") + r"\s*[=.]") if key else None
    dotted = re.compile(r"^\s*" + _bare(section) + (r"\s*\.\s*" + _bare(key) if key else "") + r"\s*[=.]")
    table: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            table = header.group(1).replace(" ", "").replace('"', "").replace("'", "")
            if key is None and table.split(".")[0] == section:
                return number
            if key is not None and table == f"{section}.{key}":
                return number
            continue
        if table is None and dotted.match(line):
            return number
        if key_in_table is not None and table == section and key_in_table.match(line):
            return number
    return None


# --- layers ---------------------------------------------------------------------------------------------------


def _read_toml(path: Path) -> tuple[dict[str, Any], str]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{bad_line}: not valid TOML: the file is not UTF-8 text") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = re.search(r"\s*\(at (?:line (\d+), column \d+|end of document)\)$", message)
        line = match.group(1) if match and match.group(1) else str(text.count("\n") + 1)
        detail = message[: match.start()] if match else message
        raise ConfigError(f"{path}:{line}: not valid TOML: {detail}") from None
    except RecursionError:  # tomllib recurses per nesting level
        raise ConfigError(f"{path}: not valid TOML: values nested too deeply") from None


def _unknown(where: str, key: str, known: list[str], *, what: str | None = None) -> ConfigError:
    import difflib  # only for a mistyped key: the daemon never loads it (tests/test_cli_imports.py)

    last = key.rsplit(".", 1)[-1]
    guess = difflib.get_close_matches(last, known, n=1)
    hint = f"did you mean {guess[0]!r}? " if guess else ""
    return ConfigError(f"{where}: {what or f'unknown key {key!r}'} ({hint}{EXAMPLE_HINT})")


def _file_layer(path: Path, types: dict[str, dict[str, Any]]) -> dict[str, tuple[Any, Origin]]:
    data, text = _read_toml(path)
    values: dict[str, tuple[Any, Origin]] = {}

    def where(section: str, key: str | None) -> str:
        line = find_line(text, section, key)
        return f"{path}:{line}" if line is not None else str(path)

    for section, table in data.items():
        if section not in types:
            raise _unknown(where(section, None), section, list(types))
        if not isinstance(table, dict):
            raise ConfigError(f"{where(section, None)}: {section!r} must be a table written as [{section}]")
        for key, value in table.items():
            location = where(section, key)
            if key not in types[section]:
                raise _unknown(location, f"{section}.{key}", list(types[section]))
            converted = convert_value(f"{section}.{key}", value, types[section][key], location, from_text=False)
            values[f"{section}.{key}"] = (converted, Origin("file", location))
    return values


def _env_layer(environ: Mapping[str, str], types: dict[str, dict[str, Any]]) -> dict[str, tuple[Any, Origin]]:
    if PASSWORD_ENV in environ:
        raise ConfigError(
            f"environment variable {PASSWORD_ENV} is not a setting: the password comes from the file named by "
            "api.password_file (mode 0600) or the systemd credential 'password'"
        )
    values: dict[str, tuple[Any, Origin]] = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name == CONFIG_PATH_ENV:
            continue
        where = f"environment variable {name}"
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("_")
        if section not in types or key not in types[section]:
            known = [f"{s}_{k}".upper() for s in types for k in types[s]]
            raise _unknown(where, name, [ENV_PREFIX + k for k in known], what="unknown setting")
        dotted = f"{section}.{key}"
        values[dotted] = (convert_value(dotted, environ[name], types[section][key], where, from_text=True),
                          Origin("env", where))
    return values


def _flag_layer(flags: Mapping[str, object], types: dict[str, dict[str, Any]]) -> dict[str, tuple[Any, Origin]]:
    values: dict[str, tuple[Any, Origin]] = {}
    for dotted, value in flags.items():
        where = f"--set {dotted}"
        section, _, key = dotted.partition(".")
        if section not in types or key not in types[section]:
            raise _unknown(where, dotted, [f"{s}.{k}" for s in types for k in types[s]])
        tp = types[section][key]
        values[dotted] = (convert_value(dotted, value, tp, where, from_text=isinstance(value, str)),
                          Origin("flag", where))
    return values


def _check_rules(values: Mapping[str, Any], origins: Mapping[str, Origin]) -> None:
    for dotted in CREDENTIAL_FREE_KEYS:
        if has_userinfo(values[dotted]):  # the value is not repeated: it holds a password
            raise ConfigError(
                f"{origins[dotted].where}: {dotted}: an address with a user name or password ('user:password@') is "
                "refused; write it without them (the password belongs in api.password_file or the systemd credential)"
            )
    for dotted, rule in RULES.items():
        value = values[dotted]
        if not rule.accepts(value):
            where = origins[dotted].where
            problem = "not valid" if isinstance(value, str | tuple) else "out of range"
            raise ConfigError(f"{where}: {dotted} = {_short(value)}: {problem} (allowed: {rule.allowed})")
    relation = check_cross_field(values)
    if relation is not None:
        dotted, text = relation
        raise ConfigError(f"{origins[dotted].where}: {dotted} = {_short(values[dotted])}: {text}")


def resolve_config_path(path: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> tuple[Path, bool]:
    """The file to read and whether it was named explicitly (a missing explicit file is an error)."""
    if path is not None:
        return Path(path), True
    if environ.get(CONFIG_PATH_ENV):
        return Path(environ[CONFIG_PATH_ENV]), True
    return DEFAULT_CONFIG_PATH, False


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, object] | None = None,
) -> LoadedConfig:
    """Load and validate settings: defaults < TOML file < environment < ``flags`` (``section.key`` -> value).

    ``path`` None means ``$MEDISYNC_AGENT_CONFIG`` or else the default file, which may be absent (defaults apply).
    String flag values are parsed like environment values (``"30"`` for a number, ``"false"`` for a bool).
    """
    env = os.environ if environ is None else environ
    types = field_types()
    file_path, explicit = resolve_config_path(path, env)
    layers: dict[str, tuple[Any, Origin]] = {}
    used_path: Path | None = None
    if explicit or file_path.exists():
        if not file_path.exists():
            raise ConfigError(f"{file_path}: configuration file not found")
        layers.update(_file_layer(file_path, types))
        used_path = file_path
    layers.update(_env_layer(env, types))
    layers.update(_flag_layer(flags or {}, types))

    defaults = msgspec.to_builtins(AgentSettings())
    values = {f"{s}.{k}": v for s, table in defaults.items() for k, v in table.items()}
    origins = {dotted: Origin("default", "default") for dotted in values}
    for dotted, (value, origin) in layers.items():
        values[dotted], origins[dotted] = value, origin
    _check_rules(values, origins)
    nested = {sec: {k: values[f"{sec}.{k}"] for k in types[sec]} for sec in types}
    settings = msgspec.convert(nested, AgentSettings)
    return LoadedConfig(settings=settings, origins=origins, path=used_path)


# --- CLI helpers ----------------------------------------------------------------------------------------------


def parse_set_option(text: str) -> tuple[str, str]:
    """``section.key=value`` -> (``section.key``, ``value``)."""
    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise ConfigError(f"--set {text!r}: expected SECTION.KEY=VALUE, e.g. --set stream.enabled=false")
    return key.strip(), value


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE`` and repeatable ``--set SECTION.KEY=VALUE`` to a subcommand's parser."""
    parser.add_argument(
        "--config", metavar="FILE", default=None,
        help=f"configuration file (default: $MEDISYNC_AGENT_CONFIG or {DEFAULT_CONFIG_PATH}, which may be absent)",
    )
    parser.add_argument(
        "--set", metavar="SECTION.KEY=VALUE", action="append", default=[], dest="config_set",
        help="override one setting, after the file and MEDISYNC_AGENT_<SECTION>_<KEY> variables (repeatable)",
    )


def load_from_args(args: argparse.Namespace, flags: Mapping[str, object] | None = None) -> LoadedConfig:
    """Load with the options added by :func:`add_config_arguments`; ``flags`` (dedicated options) win last."""
    merged: dict[str, object] = dict(parse_set_option(item) for item in getattr(args, "config_set", []))
    merged.update(flags or {})
    return load_config(getattr(args, "config", None), flags=merged)
