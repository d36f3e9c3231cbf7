"""Reading user-supplied JSON files with errors that say what is wrong and what to do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quantune.errors import UserInputError


def read_json_file(path: str | Path, what: str, hint: str = "") -> Any:
    """Parse the JSON file ``path``; missing or invalid files raise :class:`UserInputError`.

    Args:
        path: the file.
        what: what the file is, for messages (``"Baseline report"``).
        hint: appended to the missing-file message (``"run quantune tune first"``).
    """
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"{what} {p} does not exist" + (f"; {hint}" if hint else "") + ".")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{what} {p} is not valid JSON (corrupt or truncated?): {exc}.") from exc
