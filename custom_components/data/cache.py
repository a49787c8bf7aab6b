"""A persistent cache of per-file data checks, keyed on (path, size, mtime), so a large dataset is read once.

The input checks of ``custom_components.data.validation`` decompress every image, label and mask file to
look for NaN/inf voxels, label values and empty labels. The result of that read (the list of problems, empty
when the file is sound) depends only on the file's bytes and on what was asked (the file's role, the label
convention, whether a tumour is required), so it is cached under that key together with the file's size and
modification time (ns). A file that changes gets a new key and is read again.

The cache is one JSON file (default ``$XDG_CACHE_HOME/custom_components/input_checks.json``, else
``~/.cache/...``; the environment variable ``CUSTOM_COMPONENTS_CHECK_CACHE`` names another file, or disables
the file cache when empty, keeping an in-process cache only). It is written atomically; concurrent writers
merge what is on disk before writing, and a lost entry only costs a re-read. A cache file that cannot be
read is ignored (never an error), so the cache can never make a check fail.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from custom_components.data.atomic import atomic_write_text

__all__ = ["DataCheckCache", "default_cache", "default_cache_path"]

CACHE_ENV = "CUSTOM_COMPONENTS_CHECK_CACHE"
CACHE_VERSION = 1
MAX_ENTRIES = 200_000


def default_cache_path() -> Path | None:
    """The cache file: ``$CUSTOM_COMPONENTS_CHECK_CACHE`` (empty: none), else the user's cache folder."""
    if CACHE_ENV in os.environ:
        value = os.environ[CACHE_ENV].strip()
        return Path(value).expanduser() if value else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "custom_components" / "input_checks.json"


class DataCheckCache:
    """Results of per-file data checks, in memory and (optionally) in a JSON file.

    Args:
        path: cache file (None: in-process only).
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._entries: dict[str, list[str]] = {}
        self._new: dict[str, list[str]] = {}
        self._loaded = False

    @staticmethod
    def key(path: str, role: str, labels: str | None, require_tumour: bool) -> str | None:
        """The cache key of a data check of ``path`` (None when the file cannot be stat'ed)."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        return json.dumps(
            [os.path.abspath(path), st.st_size, st.st_mtime_ns, role, labels, bool(require_tumour)],
            separators=(",", ":"),
        )

    def _read_file(self) -> dict[str, list[str]]:
        if self.path is None or not self.path.is_file():
            return {}
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(self.path.read_text())
            if (
                isinstance(data, dict)
                and data.get("version") == CACHE_VERSION
                and isinstance(data.get("entries"), dict)
            ):
                return {k: list(v) for k, v in data["entries"].items() if isinstance(v, list)}
        return {}

    def get(self, key: str | None) -> list[str] | None:
        """The cached problems for ``key`` (a copy), or None when not cached."""
        if key is None:
            return None
        if not self._loaded:
            self._entries.update(self._read_file())
            self._loaded = True
        value = self._entries.get(key)
        return None if value is None else list(value)

    def put(self, key: str | None, problems: list[str]) -> None:
        """Remember the problems found for ``key``."""
        if key is None:
            return
        self._entries[key] = list(problems)
        self._new[key] = list(problems)

    def save(self) -> None:
        """Merge new entries into the cache file (atomically); errors writing the cache are ignored."""
        if self.path is None or not self._new:
            return
        entries = {**self._read_file(), **self._new}
        if len(entries) > MAX_ENTRIES:  # keep the newest entries (dicts keep insertion order)
            entries = dict(list(entries.items())[-MAX_ENTRIES:])
        with contextlib.suppress(OSError):
            atomic_write_text(self.path, json.dumps({"version": CACHE_VERSION, "entries": entries}) + "\n")
            self._new.clear()


_DEFAULT: dict[str | None, DataCheckCache] = {}


def default_cache() -> DataCheckCache:
    """The process-wide cache for :func:`default_cache_path` (one object per path, so reads are shared)."""
    path = default_cache_path()
    key = None if path is None else str(path)
    if key not in _DEFAULT:
        _DEFAULT[key] = DataCheckCache(path)
    return _DEFAULT[key]
