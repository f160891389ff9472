"""``medisync-agent config``: show the effective configuration, print a commented example, check a file."""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import os
import sys
import textwrap
from collections.abc import Mapping

import msgspec

from agent import settings as settings_module
from agent.api.secret import MASK, load_credentials
from agent.archive.keys import describe as describe_sealing
from agent.config import (
    DEFAULT_CONFIG_PATH,
    ENV_PREFIX,
    LoadedConfig,
    add_config_arguments,
    describe_type,
    field_types,
    load_from_args,
)
from agent.config_rules import CREDENTIAL_FREE_KEYS, RULES, has_userinfo, mask_userinfo
from agent.errors import ConfigError
from agent.settings import AgentSettings

WIDTH = 118


def toml_value(value: object) -> str:
    """One TOML value for the scalar types settings use."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes are a subset of TOML basic-string escapes.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def field_docs() -> dict[str, dict[str, str]]:
    """``struct name`` -> ``field`` -> docstring, read from the settings module's source."""
    tree = ast.parse(inspect.getsource(settings_module))
    docs: dict[str, dict[str, str]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        fields: dict[str, str] = {}
        for current, following in zip(node.body, [*node.body[1:], None], strict=True):
            is_field = isinstance(current, ast.AnnAssign) and isinstance(current.target, ast.Name)
            if is_field and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
                assert isinstance(current, ast.AnnAssign) and isinstance(current.target, ast.Name)
                fields[current.target.id] = inspect.cleandoc(str(following.value.value))
        docs[node.name] = fields
    return docs


def _comment(text: str) -> list[str]:
    plain = " ".join(text.replace("``", "`").split())
    return ["# " + line for line in textwrap.wrap(plain, WIDTH - 2)]


def render_example() -> str:
    """A commented configuration file: every key with its documentation, allowed values and default."""
    docs = field_docs()
    defaults = msgspec.to_builtins(AgentSettings())
    lines = [
        f"# MediSync Edge Agent configuration ({DEFAULT_CONFIG_PATH}), from `medisync-agent config example`.",
        "# Every key is optional: each is shown commented out with its default; remove the '#' to change it.",
        f"# Environment variables {ENV_PREFIX}<SECTION>_<KEY> override this file, `--set SECTION.KEY=VALUE` both.",
        "# The password never goes here: see api.password_file.",
    ]
    for section, types in field_types().items():
        struct_name = type(getattr(AgentSettings(), section)).__name__
        lines += ["", f"[{section}]"]
        for key, tp in types.items():
            lines += _comment(docs.get(struct_name, {}).get(key, ""))
            rule = RULES.get(f"{section}.{key}")
            lines += _comment(f"Allowed: {rule.allowed if rule else describe_type(tp)}.")
            lines.append(f"#{key} = {toml_value(defaults[section][key])}")
    return "\n".join(lines) + "\n"


def _login_note(loaded: LoadedConfig, environ: Mapping[str, str]) -> str:
    try:
        load_credentials(loaded.settings.api, environ)
    except ConfigError as exc:
        return f"# login: not usable: {exc}"
    return f"# login: e-mail and password readable (password {MASK})"


def _without_userinfo(dotted: str, value: object) -> object:
    """``value`` with the ``user:password@`` of any address in it masked (validation refuses them in addresses;
    this makes sure ``config show`` never prints one, however a value got in)."""
    if not isinstance(value, str):
        return value
    masked = mask_userinfo(value)
    if dotted in CREDENTIAL_FREE_KEYS and "://" not in masked and has_userinfo(masked):
        return "***@" + masked.split("@", 1)[1]
    return masked


def render_effective(loaded: LoadedConfig, environ: Mapping[str, str]) -> str:
    """The effective settings as TOML, each value annotated with where it came from; the password masked."""
    source = str(loaded.path) if loaded.path else f"none ({DEFAULT_CONFIG_PATH} absent: defaults)"
    lines = [f"# Effective configuration. File: {source}", _login_note(loaded, environ),
             f"# recordings at rest: {describe_sealing(loaded.settings.archive)}"]
    values = msgspec.to_builtins(loaded.settings)
    for section, table in values.items():
        lines += ["", f"[{section}]"]
        for key, value in table.items():
            shown = toml_value(_without_userinfo(f"{section}.{key}", value))
            lines.append(f"{key} = {shown}  # {loaded.origins[f'{section}.{key}'].where}")
    return "\n".join(lines) + "\n"


def _show(args: argparse.Namespace) -> int:
    sys.stdout.write(render_effective(load_from_args(args), os.environ))
    return 0


def _example(args: argparse.Namespace) -> int:
    sys.stdout.write(render_example())
    return 0


def _check(args: argparse.Namespace) -> int:
    loaded = load_from_args(args)
    load_credentials(loaded.settings.api)
    where = loaded.path or f"defaults ({DEFAULT_CONFIG_PATH} absent)"
    print(f"configuration OK: {where}; login e-mail and password readable; recordings at rest: "
          f"{describe_sealing(loaded.settings.archive)}")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "config",
        help="show, check or print an example of the configuration",
        description=(
            "Configuration comes from one TOML file, then MEDISYNC_AGENT_<SECTION>_<KEY> environment variables, "
            "then --set flags. Errors exit with status 78 and name the file line, key and allowed values."
        ),
    )
    actions = parser.add_subparsers(dest="config_action", metavar="ACTION")
    show = actions.add_parser(
        "show", help="print the effective configuration as TOML, with where each value came from",
        description="Print the effective configuration as TOML; each value is annotated with its origin "
        "(default, file:line, environment variable or --set). The password is masked.",
    )
    add_config_arguments(show)
    show.set_defaults(func=_show)
    example = actions.add_parser(
        "example", help="print a commented example configuration file",
        description="Print a configuration file documenting every key, its allowed values and its default.",
    )
    example.set_defaults(func=_example)
    check = actions.add_parser(
        "check", help="validate the configuration and that the login e-mail and password can be read",
        description="Load the configuration and the login credentials; exit 0 when both are usable, 78 otherwise.",
    )
    add_config_arguments(check)
    check.set_defaults(func=_check)

    def _usage(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=_usage)
