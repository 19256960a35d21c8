"""Command-line flags generated from the profile dataclasses, in the manner of ``HfArgumentParser``.

A setting is defined once, as a field of a section of :class:`prunepriv.config.Profile`
with its default. A subcommand that takes the settings of a section gets one flag per
field (``finetune.learning_rate`` → ``--learning-rate``), plus ``--profile NAME`` (whose
values become the defaults) and ``--set section.key=value`` for any other key. Values
are checked by the same validation as a profile file, so a bad flag is one line and
exit status 2 before any model is loaded.
"""
from __future__ import annotations

import argparse
import inspect
import io
import math
import re
import tokenize
from dataclasses import fields
from functools import lru_cache
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from prunepriv.config import (
    ACCOUNTANTS,
    CALIBRATION_SOURCES,
    PRECISIONS,
    Profile,
    load_profile,
)
from prunepriv.errors import ConfigError

SCALARS = ("seed", "device", "precision", "model")     # the profile's top-level settings that commands take
CHOICES = {"precision": PRECISIONS, "accountant": ACCOUNTANTS, "calibration": CALIBRATION_SOURCES}   # settings whose values form a closed set


@lru_cache(maxsize=None)
def field_help(cls: type) -> dict[str, str]:
    """The comment after each field of a profile dataclass (``lr: float = 2e-3  # Adam learning rate``):
    the field's one definition carries its help text too."""
    helps: dict[str, str] = {}
    pending: str | None = None
    for tok in tokenize.generate_tokens(io.StringIO(inspect.getsource(cls)).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 4 and pending is None:
            pending = tok.string
        elif tok.type == tokenize.COMMENT and pending:
            helps[pending] = tok.string.lstrip("#").strip()
        elif tok.type == tokenize.NEWLINE:
            pending = None
    return helps


def _scalar(hint: Any):
    """A converter for one value of type ``hint`` (``inf`` accepted for floats)."""
    if get_origin(hint) is Union:
        inner = next(a for a in get_args(hint) if a is not type(None))
        convert = _scalar(inner)
        return lambda text: None if text.lower() in ("none", "null") else convert(text)
    if hint is float:
        return lambda text: math.inf if text.lower() in ("inf", ".inf", "infinity") else float(text)
    return hint


def _converter(hint: Any):
    if get_origin(hint) is list:
        (item,) = get_args(hint)
        convert = _scalar(item)
        return lambda text: [convert(x) for x in text.replace(",", " ").split()]
    return _scalar(hint)


def add_section_flags(parser: argparse.ArgumentParser, section: str | None, exclude: tuple[str, ...] = (),
                      aliases: dict[str, tuple[str, ...]] | None = None, profile: str | None = None) -> None:
    """One flag per field of a profile section (``None``: the top-level :data:`SCALARS`).

    Flags default to "not given", so that the profile's value applies; ``dest`` is the
    dotted profile key, read back by :func:`profile_from_args`. The defaults shown are
    those of ``profile`` (the subcommand's default ``--profile``), else the built-in ones.
    """
    cls = Profile if section is None else get_type_hints(Profile)[section]
    hints = get_type_hints(cls)
    loaded = load_profile(profile) if profile else Profile()
    defaults = loaded if section is None else getattr(loaded, section)
    title = "run settings" if section is None else f"{section} settings"
    shown_from = f"profile {profile!r}" if profile else "the built-in defaults"
    group = parser.add_argument_group(f"{title} (default: the --profile's value; shown: {shown_from})")
    helps = field_help(cls)
    for f in fields(cls):
        if f.name in exclude or (section is None and f.name not in SCALARS):
            continue
        flag = "--" + f.name.replace("_", "-")
        names = (flag, *(aliases or {}).get(f.name, ()))
        default = getattr(defaults, f.name)
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        dest = f.name if section is None else f"{section}.{f.name}"
        text = f"{helps.get(f.name, '')} (default: {shown})".strip().replace("%", "%%")
        if hints[f.name] is bool:
            group.add_argument(*names, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=text)
        else:
            group.add_argument(*names, dest=dest, type=_converter(hints[f.name]), default=argparse.SUPPRESS,
                               choices=CHOICES.get(f.name), metavar=f.name.upper(), help=text)


def add_profile_flags(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--profile`` and ``--set``: where every setting not given as a flag comes from."""
    parser.add_argument("--profile", default=default,
                        help="profile name (prunepriv/profiles/NAME.yaml) or YAML path whose settings are the defaults"
                             + (f" (default: {default})" if default else " (default: the built-in defaults)"))
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="any profile setting, e.g. --set memorization.n_samples=8 (repeatable)")


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part} is not a section")
        node[leaf] = value
    return out


def parse_settings(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` → ``{"a.b": 1, "c": "x"}`` (values read as YAML)."""
    flat = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set wants KEY=VALUE, got {item!r}")
        try:
            flat[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"--set {key.strip()}: cannot read the value {text!r}") from None
    return flat


def flag_of(key: str) -> str:
    """The flag :func:`add_section_flags` gives a dotted profile key: ``finetune.batch_size`` → ``--batch-size``."""
    return "--" + key.rsplit(".", 1)[-1].replace("_", "-")


def profile_from_args(args: argparse.Namespace) -> Profile:
    """The profile of ``--profile`` with the generated flags and ``--set`` values applied, validated; an error
    about a setting the user gave as a flag names that flag (``--batch-size``), not the profile key."""
    flags = {k: v for k, v in vars(args).items() if "." in k or k in SCALARS}
    given = dict(flags)
    given.update(parse_settings(getattr(args, "settings", [])))
    try:
        return load_profile(getattr(args, "profile", None), _nest(given))
    except ConfigError as exc:
        message = str(exc)
        for key in sorted(flags, key=len, reverse=True):
            named = re.compile(rf"(?<![\w.]){re.escape(key)}(?!\w)")
            if named.search(message):
                raise ConfigError(named.sub(flag_of(key), message, count=1)) from None
        raise
