"""The training policy: which posts may be used for AI training, and why not.

A versioned TOML file, validated once at start; ``decide`` is a pure function of a
post, the policy and whether the author objected on the post's platform. No Kafka.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from streams.core.iso3166 import ALPHA2

DEFAULT_POLICY_PATH = Path(__file__).resolve().parent / "default_policy.toml"

PLATFORMS = ("FACEBOOK", "INSTAGRAM")
VISIBILITIES = ("PUBLIC", "FRIENDS", "PRIVATE")


class Outcome(StrEnum):
    """What happened to a post (the ``Outcome`` enum of the Decision schema)."""

    PUBLISHED = "PUBLISHED"
    BLOCKED = "BLOCKED"
    RETRACTED = "RETRACTED"


class Reason(StrEnum):
    """Why, in the order the rules are checked (the ``Reason`` enum of Decision)."""

    ELIGIBLE = "ELIGIBLE"
    NOT_PUBLIC = "NOT_PUBLIC"
    MINOR = "MINOR"
    COUNTRY_EXCLUDED = "COUNTRY_EXCLUDED"
    PLATFORM_EXCLUDED = "PLATFORM_EXCLUDED"
    OBJECTED = "OBJECTED"


class PolicyError(ValueError):
    """A policy file that cannot be used; the message is one line for the operator."""


@dataclass(frozen=True)
class Policy:
    """A validated policy."""

    version: str
    countries: frozenset[str]
    visibilities: frozenset[str]
    platforms: frozenset[str]
    adults_only: bool

    def reason(self, post: Mapping[str, Any], objected: bool) -> Reason:
        """The first rule ``post`` fails, or ``ELIGIBLE``; ``objected`` is the author's
        consent state on the post's platform."""
        return self.reason_of(
            post["visibility"],
            post["author_is_adult"],
            post["author_country"],
            post["platform"],
            objected,
        )

    def reason_of(
        self,
        visibility: str,
        author_is_adult: bool,
        author_country: str,
        platform: str,
        objected: bool,
    ) -> Reason:
        """``reason`` from the post's fields the rules read."""
        if visibility not in self.visibilities:
            return Reason.NOT_PUBLIC
        if self.adults_only and not author_is_adult:
            return Reason.MINOR
        if author_country not in self.countries:
            return Reason.COUNTRY_EXCLUDED
        if platform not in self.platforms:
            return Reason.PLATFORM_EXCLUDED
        if objected:
            return Reason.OBJECTED
        return Reason.ELIGIBLE


def decide(policy: Policy, post: Mapping[str, Any], objected: bool) -> tuple[Outcome, Reason]:
    """The live decision for a post: ``(PUBLISHED, ELIGIBLE)`` or ``(BLOCKED, reason)``."""
    reason = policy.reason(post, objected)
    return (Outcome.PUBLISHED if reason is Reason.ELIGIBLE else Outcome.BLOCKED), reason


_KEYS = {"version", "countries", "visibilities", "platforms", "adults_only"}


def _string_list(
    data: Mapping[str, Any], key: str, allowed: frozenset[str] | tuple[str, ...], what: str
) -> frozenset[str]:
    value = data[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"'{key}' must be a list of strings")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        hint = " (the United Kingdom is GB)" if "UK" in unknown else ""
        raise PolicyError(f"'{key}' has unknown {what} {', '.join(unknown)}{hint}")
    return frozenset(value)


def parse_policy(data: Mapping[str, Any]) -> Policy:
    """Validate a decoded TOML document into a ``Policy``."""
    missing = sorted(_KEYS - set(data))
    if missing:
        raise PolicyError(f"missing key(s): {', '.join(missing)}")
    extra = sorted(set(data) - _KEYS)
    if extra:
        raise PolicyError(f"unknown key(s): {', '.join(extra)}")
    version = data["version"]
    if not isinstance(version, str) or not version.strip():
        raise PolicyError("'version' must be a non-empty string")
    if not isinstance(data["adults_only"], bool):
        raise PolicyError("'adults_only' must be true or false")
    return Policy(
        version=version.strip(),
        countries=_string_list(data, "countries", ALPHA2, "ISO 3166-1 alpha-2 code(s)"),
        visibilities=_string_list(data, "visibilities", VISIBILITIES, "visibility value(s)"),
        platforms=_string_list(data, "platforms", PLATFORMS, "platform(s)"),
        adults_only=data["adults_only"],
    )


def load_policy(path: str | Path | None = None) -> Policy:
    """Read and validate a policy file (the packaged default when ``path`` is None)."""
    source = Path(path) if path else DEFAULT_POLICY_PATH
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {source}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PolicyError(f"policy file {source} is not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"policy file {source} is not valid TOML: {exc}") from None
    try:
        return parse_policy(data)
    except PolicyError as exc:
        raise PolicyError(f"policy file {source}: {exc}") from None
