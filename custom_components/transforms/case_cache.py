"""Per-case caches of what online synthesis computes from a real case's label and image.

Online synthesis (DTSS, CarveMix) derives a new sample from a real case every epoch. Most of its work
depends only on the case (the lesion's distance maps, nearest-lesion classes, deformation area, class
voxel pools, healthy reference); only the draws are new. :class:`CaseCache` keeps those per-case
*invariants* in a least-recently-used cache bounded by a number of cases.

Key: :func:`label_digest`, a SHA-256 of the label's content restricted to its bounding box (with the
volume's shape, the box and the dtype): everything outside the box is background, so the digest
identifies the label exactly, costs one pass over the volume (the bounding box the transforms need
anyway) plus a hash of the box, and needs no case id: two cases with the same shape but different
labels get different keys, and a case whose label changed gets a new key (never stale invariants).
Values that also depend on the image are stored with a digest of the image's values they read, checked
on every hit (see the transforms).

Processes: the cache is an attribute of the transform, so every DataLoader worker has its own (a fork
copies the parent's entries, copy-on-write; a worker's new entries stay in that worker). Pickling (spawn
workers, ``copy.deepcopy``) carries the settings but no entries.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np


def tight_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of the ``True`` voxels of a boolean mask, or ``None`` when there are none.

    A 3D mask takes one pass over the volume (then a pass over the box's columns) instead of one per axis.
    """
    if mask.ndim != 3:
        hits = [np.flatnonzero(mask.any(axis=tuple(b for b in range(mask.ndim) if b != a))) for a in range(mask.ndim)]
        if any(h.size == 0 for h in hits):
            return None
        return tuple(slice(int(h[0]), int(h[-1]) + 1) for h in hits)
    plane = mask.any(axis=2)
    rows = np.flatnonzero(plane.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(plane.any(axis=0))
    b0, b1 = slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)
    depth = np.flatnonzero(mask[b0, b1].any(axis=(0, 1)))
    return b0, b1, slice(int(depth[0]), int(depth[-1]) + 1)


def grow_box(box: tuple[slice, ...], margin: int | Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
    """``box`` grown by ``margin`` voxels (one number, or one per axis) on every side, clipped to ``shape``."""
    margins = [int(margin)] * len(box) if isinstance(margin, (int, np.integer)) else [int(m) for m in margin]
    return tuple(
        slice(max(b.start - m, 0), min(b.stop + m, int(n))) for b, m, n in zip(box, margins, shape, strict=True)
    )


def label_digest(label_box: np.ndarray, shape: tuple[int, ...], box: tuple[slice, ...]) -> bytes:
    """SHA-256 identifying a label from its bounding-box crop.

    Args:
        label_box: the label (or lesion mask) restricted to ``box``; zero everywhere outside ``box``.
        shape: spatial shape of the whole label.
        box: the box's slices in the whole label.

    Returns:
        32-byte digest of the shape, the box, the dtype and the box's values.
    """
    h = hashlib.sha256()
    h.update(repr((tuple(int(s) for s in shape), [(s.start, s.stop) for s in box], str(label_box.dtype))).encode())
    h.update(np.ascontiguousarray(label_box).data)
    return h.digest()


def array_digest(*arrays: np.ndarray) -> bytes:
    """SHA-256 of the shapes, dtypes and values of ``arrays`` (C order)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(repr((a.shape, str(a.dtype))).encode())
        h.update(a.data)
    return h.digest()


def nbytes_of(value: Any) -> int:
    """Bytes held by the numpy arrays in ``value`` (an array, a container, or an object's ``__dict__``)."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, dict):
        return sum(nbytes_of(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(nbytes_of(v) for v in value)
    if hasattr(value, "__dict__"):
        return nbytes_of(vars(value))
    return 0


class CaseCache:
    """Least-recently-used cache of per-case invariants, bounded by a number of cases.

    Args:
        max_cases: the most cases kept; adding one more evicts the least recently used. 0 disables
            the cache (nothing is stored, every lookup misses).
    """

    def __init__(self, max_cases: int) -> None:
        if int(max_cases) < 0:
            raise ValueError(f"the cache size must be a non-negative number of cases, got {max_cases}")
        self.max_cases = int(max_cases)
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        """Whether the cache stores anything (``max_cases > 0``)."""
        return self.max_cases > 0

    def get(self, key: Hashable, check: Callable[[Any], bool] | None = None) -> Any | None:
        """The entry stored under ``key`` (now the most recently used), or ``None``.

        Args:
            key: the case's key.
            check: called with the entry; when it returns False the entry is treated as absent (a miss).
        """
        with self._lock:
            value = self._entries.get(key)
            if value is None or (check is not None and not check(value)):
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: Any) -> None:
        """Store ``value`` under ``key``, evicting the least recently used entries beyond ``max_cases``."""
        if not self.enabled:
            return
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_cases:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Remove every entry (the hit and miss counts are kept)."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached arrays."""
        with self._lock:
            return sum(nbytes_of(v) for v in self._entries.values())

    def __getstate__(self) -> dict[str, Any]:
        # settings travel (spawned workers, deepcopy), entries and the lock do not
        return {"max_cases": self.max_cases}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_cases"])  # type: ignore[misc]
