"""BraTS label conventions and the project's internal convention.

Internal convention (identical in values to BraTS 2023):
    0 background, 1 NCR (necrosis, incl. non-enhancing core), 2 ED (oedema), 3 ET (enhancing).

Regions used by the BraTS metrics:
    ET = {3}, TC = {1, 3}, WT = {1, 2, 3}.
"""

from __future__ import annotations

import numpy as np

INTERNAL_CLASSES: dict[int, str] = {0: "background", 1: "NCR", 2: "ED", 3: "ET"}
INTERNAL_LABELS: tuple[int, ...] = (0, 1, 2, 3)
TUMOUR_CLASSES: tuple[int, ...] = (1, 2, 3)

# source value -> internal value, per convention
TO_INTERNAL: dict[str, dict[int, int]] = {
    "internal": {0: 0, 1: 1, 2: 2, 3: 3},
    "brats2023": {0: 0, 1: 1, 2: 2, 3: 3},
    "brats2021": {0: 0, 1: 1, 2: 2, 4: 3},
    "brats2015": {0: 0, 1: 1, 2: 2, 3: 1, 4: 3},
}
# internal value -> exported value, per convention (non-enhancing core exports as necrosis in 2015)
FROM_INTERNAL: dict[str, dict[int, int]] = {
    "internal": {0: 0, 1: 1, 2: 2, 3: 3},
    "brats2023": {0: 0, 1: 1, 2: 2, 3: 3},
    "brats2021": {0: 0, 1: 1, 2: 2, 3: 4},
    "brats2015": {0: 0, 1: 1, 2: 2, 3: 4},
}
CONVENTIONS: tuple[str, ...] = tuple(TO_INTERNAL)

# BraTS evaluation regions as sets of internal labels, in the order ET, TC, WT
REGIONS: dict[str, tuple[int, ...]] = {"ET": (3,), "TC": (1, 3), "WT": (1, 2, 3)}
REGION_NAMES: tuple[str, ...] = tuple(REGIONS)


def check_convention(convention: str) -> str:
    """Return ``convention`` if known, else raise a ValueError listing the known ones."""
    if convention not in TO_INTERNAL:
        raise ValueError(f"unknown label convention {convention!r}; expected one of {', '.join(CONVENTIONS)}")
    return convention


def allowed_values(convention: str) -> tuple[int, ...]:
    """Label values a volume in ``convention`` may contain."""
    return tuple(sorted(TO_INTERNAL[check_convention(convention)]))


def _remap(label: np.ndarray, table: dict[int, int], convention: str, direction: str) -> np.ndarray:
    values = np.unique(label)
    # integral float values (labels loaded as float32) are shown as integers
    unknown = [int(v) if float(v).is_integer() else v for v in values.tolist() if v not in table]
    if unknown:
        raise ValueError(
            f"label values {unknown} are not valid {direction} convention {convention!r} (allowed: {sorted(table)})"
        )
    lut = np.zeros(int(max(table)) + 1, dtype=np.uint8)
    for src, dst in table.items():
        lut[src] = dst
    return lut[np.asarray(label).astype(np.int64)]


def to_internal(label: np.ndarray, convention: str) -> np.ndarray:
    """Map a label volume from a BraTS convention to the internal one (uint8)."""
    return _remap(label, TO_INTERNAL[check_convention(convention)], convention, "for")


def from_internal(label: np.ndarray, convention: str) -> np.ndarray:
    """Map an internal label volume to a BraTS convention for export (uint8)."""
    return _remap(label, FROM_INTERNAL[check_convention(convention)], convention, "for export from internal to")
