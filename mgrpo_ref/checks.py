"""Checks of configuration values: each bad value is one line naming the field, the value
and what is allowed.

Every settings dataclass of the package (``TrainConfig`` and the sections it holds:
``RewardConfig``, ``Limits``, ``LoraSettings``) checks its own fields in ``__post_init__``
with these functions, so a bad value is refused when the object is built, before anything
runs or is written. A section's errors are re-raised by ``TrainConfig`` with the section's
name in front (``reward.b2``).
"""

from __future__ import annotations

import math
from numbers import Integral, Real


class ConfigError(ValueError):
    """A configuration value that is not allowed: ``<field>=<value> is invalid: <rule>``."""

    def __init__(self, field: str, value, rule: str):
        self.field, self.value, self.rule = field, value, rule
        super().__init__(f"{field}={value!r} is invalid: {rule}")

    def within(self, section: str) -> "ConfigError":
        """The same error with the section's name in front of the field (``reward.b2``)."""
        return ConfigError(f"{section}.{self.field}", self.value, self.rule)


def check_int(field: str, value, minimum: int | None = None, maximum: int | None = None) -> None:
    """An integer (not a bool) in [minimum, maximum]."""
    ok = isinstance(value, Integral) and not isinstance(value, bool)
    if ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum):
        return
    raise ConfigError(field, value, "must be an integer" + _range(minimum, maximum, False, False))


def check_number(field: str, value, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> None:
    """A finite real number (not a bool) in the range; ``*_open`` excludes that end."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and (low is None or (value > low if low_open else value >= low)) \
            and (high is None or (value < high if high_open else value <= high)):
        return
    raise ConfigError(field, value, "must be a finite number" + _range(low, high, low_open, high_open))


def check_choice(field: str, value, choices: tuple) -> None:
    """One of ``choices``."""
    if isinstance(value, str) and value in choices:
        return
    raise ConfigError(field, value, f"must be one of {', '.join(map(repr, choices))}")


def check_text(field: str, value) -> None:
    """A non-empty string."""
    if isinstance(value, str) and value.strip():
        return
    raise ConfigError(field, value, "must be a non-empty string")


def _range(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high:g}"
    return ""
