"""The primitives of config validation: a bad value fails fast with its key's name.

Every component checks its own config section with these (`validate_config` next to the code
that reads the values); `sora_jax.config.validate` runs them all. A failed check raises
ValueError("config.<key>=<value>: <why>"). Nothing from sora_jax is imported here.
"""

from __future__ import annotations

from collections.abc import Sequence


def check(cond: bool, key: str, value, why: str):
    """Raises ValueError naming `config.<key>` and its value unless `cond` holds."""
    if not cond:
        raise ValueError(f"config.{key}={value!r}: {why}")


def lookup(config, key: str):
    """The value at a dotted key (e.g. 'dit.train.steps')."""
    value = config
    for part in key.split("."):
        value = value[part]
    return value


def positive(config, *keys: str):
    """Each dotted key holds a number > 0."""
    for key in keys:
        value = lookup(config, key)
        check(isinstance(value, (int, float)) and value > 0, key, value, "must be > 0")


def one_of(config, key: str, options: Sequence[str]):
    """The dotted key holds one of `options`."""
    value = lookup(config, key)
    check(value in options, key, value, f"must be one of {options}")
