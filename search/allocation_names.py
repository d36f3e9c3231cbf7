"""Layer name matching for pins, ranges, groups and keep-float lists.

A key is an exact module name or ``"re:PATTERN"`` (a full-match regular expression, as
in :class:`quantune.config.QuantConfig` overrides). A key that matches nothing is an
error, never silently ignored: a typo in a pin must not quietly drop the pin.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

from quantune.errors import UserInputError

REGEX_PREFIX = "re:"


def match_names(pattern: str, names: Sequence[str]) -> list[int]:
    """Indices of the names a key matches, in order.

    Args:
        pattern: An exact name, or ``"re:"`` followed by a regular expression that
            must match the whole name.
        names: The layer names of the problem.

    Returns:
        The matching indices (at least one).

    Raises:
        UserInputError: The key matches no layer (the message suggests close names),
            or the regular expression does not compile.
    """
    if not isinstance(pattern, str):
        raise UserInputError(f"layer keys must be strings, got {pattern!r}")
    if pattern.startswith(REGEX_PREFIX):
        try:
            regex = re.compile(pattern[len(REGEX_PREFIX):])
        except re.error as exc:
            raise UserInputError(f"bad regular expression in {pattern!r}: {exc}") from exc
        hits = [i for i, name in enumerate(names) if regex.fullmatch(name)]
    else:
        hits = [i for i, name in enumerate(names) if name == pattern]
    if not hits:
        close = difflib.get_close_matches(pattern.removeprefix(REGEX_PREFIX), names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserInputError(f"{pattern!r} matches no layer{hint}")
    return hits
