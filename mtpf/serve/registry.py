"""Apps that survive a restart: the served apps (name → folder), written atomically after every change.

`mtpf serve RELEASE` keeps the list in a small JSON file beside the release (`.RELEASE.serve-apps.json`, or
`--apps_state FILE`); the next start of the same command serves them again. A crash mid-write leaves the previous
complete file (temporary file, then rename), so nothing that was acknowledged is lost.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mtpf.io import atomic_write_text

logger = logging.getLogger(__name__)


def default_state_file(release: str) -> Path:
    folder = Path(release).resolve()
    return folder.parent / f".{folder.name}.serve-apps.json"


class AppRegistry:
    """The persisted {app name: app folder} of one server."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None

    def load(self) -> dict[str, str]:
        """The apps of the last run (none without a file); an unreadable file is reported, not guessed at."""
        if self.path is None or not self.path.is_file():
            return {}
        try:
            apps = json.loads(self.path.read_text(encoding="utf-8"))["apps"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{self.path}: not a readable list of served apps ({err}); fix or delete it.") from err
        if not isinstance(apps, dict) or not all(isinstance(v, str) for v in apps.values()):
            raise ValueError(f"{self.path}: `apps` must map app names to folders.")
        return dict(apps)

    def save(self, apps: dict[str, str]) -> None:
        if self.path is not None:
            atomic_write_text(self.path, json.dumps({"apps": dict(sorted(apps.items()))}, indent=2) + "\n")
