"""Units of configuration values: one rule per kind, for every setting of that kind.

:mod:`ingest.config` parses every ``INGEST_*`` variable of a kind with the same
function here, and the CLI's options (``--older-than 24h``, ``--chunk-size 16MiB``)
use them too. Each ``format_*`` writes a value so that its ``parse_*`` reads it back
exactly (the README's defaults are written with them).

Durations
    A decimal number and a unit: ``500ms``, ``30s``, ``15m``, ``1.5h``, ``7d``; a bare
    number is seconds. Units are lower case (``M`` could be read as months). A
    setting held in whole seconds (:func:`parse_seconds`) refuses a value that is
    not a whole number of seconds (``1500ms``, ``0.5``) instead of rounding it.

Sizes
    A decimal number and a unit, case-insensitive: ``KiB MiB GiB TiB PiB`` (also
    ``Ki Mi Gi Ti Pi``) are powers of 1024, ``kB MB GB TB PB`` powers of 1000, ``B``
    or none bytes. A bare ``K M G T P`` is refused: docker reads ``16g`` as 16 GiB and
    Kubernetes reads ``16G`` as 16 000 000 000 bytes, so whichever we chose, someone would
    get a limit 7 % off without noticing. With the ``B`` or ``iB`` spelled out the
    IEC/SI standards settle it. A fraction is accepted when it comes to a whole
    number of bytes (``1.5GiB``), otherwise refused (``1.1KiB``), like whole seconds.

Counts, numbers, booleans, file modes
    Counts are plain integers (``1000``; ``1k`` is refused); numbers plain decimals;
    booleans ``1/true/yes/on`` or ``0/false/no/off`` (any case); file modes octal
    permission bits, with or without a leading ``0`` or ``0o`` (``640`` is ``0o640``).

Every refusal is a :class:`ValueError` whose message quotes the text.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from fractions import Fraction

__all__ = [
    "DURATION_UNITS",
    "SIZE_UNITS",
    "format_bool",
    "format_duration",
    "format_mode",
    "format_number",
    "format_size",
    "parse_bool",
    "parse_count",
    "parse_duration",
    "parse_mode",
    "parse_number",
    "parse_seconds",
    "parse_size",
]

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"

#: Seconds per duration unit; "" (a bare number) is seconds.
DURATION_UNITS: dict[str, Fraction] = {
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
    "d": Fraction(86400),
}
_DURATION_RE = re.compile(rf"\s*{_NUMBER}\s*([a-zA-Z]*)\s*")
# Longest unit first: format_duration picks the largest that divides the value.
_DURATION_FORMAT = ("d", "h", "m", "s")

_PREFIXES = "kmgtp"
#: Bytes per size unit (lower case; parsing ignores case). "" and "b" are bytes.
SIZE_UNITS: dict[str, int] = {"": 1, "b": 1}
for _power, _prefix in enumerate(_PREFIXES, 1):
    SIZE_UNITS[_prefix + "ib"] = SIZE_UNITS[_prefix + "i"] = 1024**_power
    SIZE_UNITS[_prefix + "b"] = 1000**_power
_SIZE_RE = re.compile(rf"\s*{_NUMBER}\s*([a-zA-Z]*)\s*")
# How format_size spells each unit.
_BINARY = [(1024**p, f"{c.upper()}iB") for p, c in enumerate(_PREFIXES, 1)][::-1]
_DECIMAL = [(1000**p, ("k" if c == "k" else c.upper()) + "B") for p, c in enumerate(_PREFIXES, 1)]
_DECIMAL.reverse()


def _quantity(text: str, pattern: re.Pattern[str], what: str) -> tuple[str, str]:
    """The number and the unit of ``text``, as written."""
    m = pattern.fullmatch(text)
    if not m:
        raise ValueError(f"not a {what}: {text!r}")
    return m.group(1), m.group(2)


def _finite(value: Fraction, text: str, what: str) -> float:
    try:
        seconds = float(value)
    except OverflowError:
        raise ValueError(f"{what} too large: {text!r}") from None
    if not math.isfinite(seconds):
        raise ValueError(f"{what} too large: {text!r}")
    return seconds


def _duration(text: str) -> Fraction:
    number, unit = _quantity(text, _DURATION_RE, "duration")
    if unit and unit not in DURATION_UNITS:
        raise ValueError(f"unknown duration unit {unit!r} in {text!r} (use ms, s, m, h or d)")
    return Fraction(number) * DURATION_UNITS[unit or "s"]


def parse_duration(text: str) -> float:
    """``"24h"`` → 86400.0, ``"500ms"`` → 0.5; a bare number is seconds."""
    return _finite(_duration(text), text, "duration")


def parse_seconds(text: str) -> int:
    """A duration that must be a whole number of seconds: ``"7d"`` → 604800;
    ``"1.5"`` and ``"1500ms"`` are refused, not rounded."""
    seconds = _duration(text)
    if seconds.denominator != 1:
        raise ValueError(f"not a whole number of seconds: {text!r}")
    return seconds.numerator


def format_duration(seconds: float) -> str:
    """The shortest exact spelling: 604800 → ``"7d"``, 0.5 → ``"500ms"``, 0 → ``"0"``."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a duration: {seconds!r}")
    # The shortest decimal that reads back as the same float (repr's digits).
    exact = Fraction(Decimal(repr(float(seconds))))
    if exact == 0:
        return "0"
    for unit in _DURATION_FORMAT:
        count = exact / DURATION_UNITS[unit]
        if count.denominator == 1:
            return f"{count.numerator}{unit}"
    ms = exact * 1000
    if ms.denominator == 1:
        return f"{ms.numerator}ms"
    return f"{Decimal(repr(float(seconds))):f}s"


def parse_size(text: str) -> int:
    """``"16GiB"`` → 17179869184, ``"3MB"`` → 3000000; a bare number is bytes.
    A bare ``K``/``M``/``G``/``T``/``P`` is refused as ambiguous."""
    number, unit = _quantity(text, _SIZE_RE, "size")
    key = unit.lower()
    if key and key in _PREFIXES:
        decimal = "k" if key == "k" else key.upper()
        raise ValueError(
            f"ambiguous size unit {unit!r} in {text!r}: write {number}{key.upper()}iB "
            f"(1024-based) or {number}{decimal}B (1000-based)"
        )
    if key not in SIZE_UNITS:
        raise ValueError(
            f"unknown size unit {unit!r} in {text!r} (use B, KiB, MiB, GiB, TiB, kB, MB, GB, TB)"
        )
    size = Fraction(number) * SIZE_UNITS[key]
    if size.denominator != 1:
        raise ValueError(f"not a size in whole bytes: {text!r}")
    return size.numerator


def format_size(size: int) -> str:
    """The shortest exact spelling, 1024-based on a tie: 16 << 30 → ``"16GiB"``,
    3000000 → ``"3MB"``, 1234 → ``"1234"``."""
    if size < 0:
        raise ValueError(f"not a size: {size!r}")
    if size == 0:
        return "0"
    candidates = [str(size)]
    for table in (_BINARY, _DECIMAL):
        for factor, unit in table:
            if size % factor == 0:
                candidates.append(f"{size // factor}{unit}")
                break
    return min(candidates, key=lambda c: len(c.rstrip("BKMGTPikb")))


def parse_count(text: str) -> int:
    """A plain decimal integer: ``"1000"``, ``"-1"``; ``"1k"`` is refused."""
    if not re.fullmatch(r"\s*[+-]?\d+\s*", text):
        raise ValueError(f"not a whole number: {text!r}")
    return int(text)


def parse_number(text: str) -> float:
    """A plain, finite decimal number: ``"1000"``, ``"2.5"``."""
    if not re.fullmatch(r"\s*[+-]?" + _NUMBER + r"\s*", text):
        raise ValueError(f"not a number: {text!r}")
    return _finite(Fraction(text.strip()), text, "number")


def format_number(value: float) -> str:
    """``1000.0`` → ``"1000"``, ``2.5`` → ``"2.5"``."""
    return f"{Decimal(repr(float(value))):f}".removesuffix(".0")


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_bool(text: str) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off``, in any case."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"not a boolean (true/false, yes/no, on/off, 1/0): {text!r}")


def format_bool(value: bool) -> str:
    return "true" if value else "false"


def parse_mode(text: str) -> int:
    """``"0640"``, ``"640"`` or ``"0o640"`` → 0o640: permission bits, always octal."""
    digits = text.strip().lower().removeprefix("0o")
    if not re.fullmatch(r"[0-7]{1,4}", digits):
        raise ValueError(f"not an octal file mode: {text!r}")
    return int(digits, 8)


def format_mode(mode: int) -> str:
    return f"{mode:04o}"
