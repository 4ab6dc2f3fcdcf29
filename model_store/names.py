"""Validation of model names, versions and aliases, and parsing of `name@version|alias` references.

Every check is a full match (`re.fullmatch`): `$` would also match before a final newline, and
`str.isdigit` accepts non-ASCII digits."""

from __future__ import annotations

import re
from dataclasses import dataclass

from model_store.errors import InvalidName

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
ALIAS_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
DIGITS_RE = re.compile(r"[0-9]+")
DEFAULT_ALIAS = "production"


def is_number(text: str) -> bool:
    """True for ASCII digits only (a version number)."""
    return DIGITS_RE.fullmatch(text) is not None


def validate_name(name: str) -> str:
    """Return `name` when it is a safe model name (lowercase, digits, `.`, `_`, `-`; no separators)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
        raise InvalidName(
            f"invalid model name {name!r}: use 1-64 characters of a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit"
        )
    return name


def validate_alias(alias: str) -> str:
    """Return `alias` when it matches `[a-z0-9-]+` and is not a bare number (numbers are versions)."""
    if not isinstance(alias, str) or not ALIAS_RE.fullmatch(alias) or is_number(alias):
        raise InvalidName(f"invalid alias {alias!r}: use 1-40 characters of a-z, 0-9 and '-', not only digits")
    return alias


def validate_version(version: int | str) -> int:
    """Return the version as a positive int."""
    if isinstance(version, bool):
        raise InvalidName(f"invalid version {version!r}")
    if isinstance(version, str):
        if not is_number(version):
            raise InvalidName(f"invalid version {version!r}: versions are positive integers")
        version = int(version)
    if not isinstance(version, int) or version < 1 or version > 10**9:
        raise InvalidName(f"invalid version {version!r}: versions are positive integers")
    return version


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference: exactly one of `version` and `alias` is set."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        return f"{self.name}@{self.version if self.version is not None else self.alias}"


def parse_ref(ref: str, default_alias: str = DEFAULT_ALIAS) -> ModelRef:
    """Parse `name`, `name@3` or `name@staging`; a bare name means `name@<default_alias>`."""
    if not isinstance(ref, str) or ref.count("@") > 1:
        raise InvalidName(f"invalid model reference {ref!r}: expected NAME, NAME@VERSION or NAME@ALIAS")
    name, at, tail = ref.partition("@")
    validate_name(name)
    if at and not tail:
        raise InvalidName(f"invalid model reference {ref!r}: nothing after '@'")
    if not tail:
        return ModelRef(name, alias=validate_alias(default_alias))
    if is_number(tail):
        return ModelRef(name, version=validate_version(tail))
    return ModelRef(name, alias=validate_alias(tail))
