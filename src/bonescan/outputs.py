"""Reading the pipeline's own JSON outputs back (metrics/, reports/), for summaries, plans and cards.

Torch-free, so the commands that only read outputs start fast. A stage that has not run leaves no
file, and a run killed mid-write (or a hand-edited file) can leave a broken one: both read as None,
the second with a warning naming the file, so a summary or a model card shows "not run yet" or
"n/a" instead of failing on the last step of a long run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

__all__ = ["read_output_json"]

log = logging.getLogger(__name__)


def read_output_json(path: str | Path | None) -> dict | None:
    """The JSON object in `path`; None when there is no such file, or it is not a JSON object."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        log.warning("%s is not valid JSON (%s); read as missing", path, err)
        return None
    if not isinstance(value, dict):
        log.warning("%s holds a JSON %s, not an object; read as missing", path, type(value).__name__)
        return None
    return value
