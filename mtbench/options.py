"""Checks of single option values: type and range, each failure a one-line ``MtbenchError``
naming the option, the value given and what is allowed.

Used where the options are declared (trainer, tasks, models, combiners) so that ``mtbench``
rejects a bad value before any run starts. A boolean is never accepted as a number, and a
number is always finite.

:class:`Option` declares an option once (default, one-line doc, check); :func:`integer`,
:func:`number` and :func:`boolean` turn the checks above into such declarations' checks.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mtbench.errors import MtbenchError


def _bad(key: str, value: Any, allowed: str) -> MtbenchError:
    return MtbenchError(f"{key} must be {allowed} (got {value!r})")


def _bounds(minimum: float | None, maximum: float | None, min_open: bool, max_open: bool) -> str:
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if min_open else '>='} {minimum:g}")
    if maximum is not None:
        parts.append(f"{'<' if max_open else '<='} {maximum:g}")
    return " and ".join(parts)


def check_int(
    key: str, value: Any, minimum: int | None = None, maximum: int | None = None, optional: bool = False
) -> int | None:
    """An integer (not a bool, not a float) in [minimum, maximum]; ``None`` too if ``optional``."""
    if value is None and optional:
        return None
    bounds = _bounds(minimum, maximum, False, False)
    allowed = ("null or " if optional else "") + "an integer" + (f" {bounds}" if bounds else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _bad(key, value, allowed)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise _bad(key, value, allowed)
    return int(value)


def check_number(
    key: str,
    value: Any,
    minimum: float | None = None,
    maximum: float | None = None,
    min_open: bool = False,
    max_open: bool = False,
    optional: bool = False,
) -> float | None:
    """A finite number (not a bool) within the bounds (``*_open``: the bound itself excluded)."""
    if value is None and optional:
        return None
    bounds = _bounds(minimum, maximum, min_open, max_open)
    allowed = ("null or " if optional else "") + "a finite number" + (f" {bounds}" if bounds else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise _bad(key, value, allowed)
    number = float(value)
    if minimum is not None and (number < minimum or (min_open and number == minimum)):
        raise _bad(key, value, allowed)
    if maximum is not None and (number > maximum or (max_open and number == maximum)):
        raise _bad(key, value, allowed)
    return number


def check_bool(key: str, value: Any) -> bool:
    """true or false (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise _bad(key, value, "true or false")
    return value


def check_str(key: str, value: Any, optional: bool = False) -> str | None:
    """A non-empty string (a path, a name); ``None`` too if ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise _bad(key, value, ("null or " if optional else "") + "a non-empty string")
    return value


def check_choice(key: str, value: Any, allowed: tuple[str, ...], lower: bool = False) -> str:
    """One of ``allowed`` (compared in lower case when ``lower``)."""
    text = value.lower() if lower and isinstance(value, str) else value
    if not isinstance(text, str) or text not in allowed:
        raise MtbenchError(f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")
    return text


def import_target(key: str, path: Any) -> Any:
    """The object a dotted path names (``my.module.build``, ``torch.optim.AdamW``): the module
    is imported and the last part read from it; a one-line error naming ``key`` otherwise."""
    import importlib

    text = str(path)
    module, _, attr = text.rpartition(".")
    if not module or not attr:
        raise MtbenchError(
            f"{key}={text!r} is not a dotted path to an importable object (e.g. my_package.my_module.name)"
        )
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise MtbenchError(
            f"{key}={text!r} cannot be imported ({type(e).__name__}: {e}); check the module is on PYTHONPATH and spells the name"
        ) from None


# ----------------------------------------------------------------------------------------------
# declared options
# ----------------------------------------------------------------------------------------------

#: ``check(key, value, owner)``: the value to use, or a one-line ``MtbenchError`` naming ``key``;
#: ``owner`` is the object the option belongs to (a combiner: its ``name`` and ``num_tasks``)
Check = Callable[[str, Any, Any], Any]


@dataclass(frozen=True)
class Option:
    """One option, declared once: its default, a one-line description and its check.

    ``check`` (None: any value) gets the option's full key (``combiner.leak``), the value and
    the owner, and returns the value to use (e.g. a number as a float) or raises a one-line
    ``MtbenchError``. The config files list the same keys with the same defaults (a test
    compares them).
    """

    default: Any
    doc: str = ""
    check: Check | None = None

    def validate(self, key: str, value: Any, owner: Any = None) -> Any:
        return value if self.check is None else self.check(key, value, owner)

    def replace(self, **changes: Any) -> Option:
        """A copy with other fields (e.g. another default for a subclass)."""
        return dataclasses.replace(self, **changes)


def integer(minimum: int | None = None, maximum: int | None = None, optional: bool = False) -> Check:
    """A check: :func:`check_int`."""
    return lambda key, value, owner: check_int(key, value, minimum, maximum, optional)


def number(
    minimum: float | None = None,
    maximum: float | None = None,
    min_open: bool = False,
    max_open: bool = False,
    optional: bool = False,
) -> Check:
    """A check: :func:`check_number`."""
    return lambda key, value, owner: check_number(key, value, minimum, maximum, min_open, max_open, optional)


def boolean() -> Check:
    """A check: :func:`check_bool`."""
    return lambda key, value, owner: check_bool(key, value)
