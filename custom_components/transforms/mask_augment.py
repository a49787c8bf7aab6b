"""TF-Aug mask augmentation: new tumour masks m_s from real masks m_r (Tumor Fabrication, section 2.1).

A synthetic mask is made from one or more real tumour masks (internal labels 1 NCR, 2 ED, 3 ET) of
the real tumour data. Each chosen mask is scaled, rotated and flipped about its own centre and
shifted; the results are combined, clipped to the healthy scan's brain mask, and rejected and
redrawn when too little of the tumour is left.

Choices where the paper is silent (all are arguments, with these defaults in the bundle):

* **Placement.** Real masks and prepared healthy scans share the real data's grid, so every
  component stays at its own (anatomically plausible) location plus a random shift of at most
  ``max_shift`` voxels per axis; combining masks then gives multi-focal or merged tumours.
* **Interpolation.** The nested BraTS regions of a mask (WT = {1, 2, 3}, TC = {1, 3}, ET = {3})
  are resampled separately (trilinear by default, ``interp_order``) and thresholded at 0.5, then
  relabelled (ET inside TC inside WT). This keeps the class nesting of the real mask and smooth
  boundaries under scaling and rotation; with scale 1, no rotation and an integer shift it is an
  exact copy.
* **Precedence.** Where components overlap, the class that comes first in ``precedence`` wins;
  the default ``(3, 1, 2)`` (ET > NCR > ED) keeps tumour cores on top of (inside) oedema.
* **Rejection.** After clipping to the brain, a mask is rejected when it has fewer than
  ``min_voxels`` voxels or less than ``min_fraction`` of the voxels of its source masks; at most
  ``max_retries`` draws are made, then a ``RuntimeError`` explains what to change.
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable, Transform
from monai.utils import convert_to_dst_type, convert_to_numpy
from scipy import ndimage

from custom_components.data.datalist import source_name
from custom_components.data.labels import REGIONS, TUMOUR_CLASSES, to_internal

# nested BraTS regions used for resampling, outermost first: WT, TC, ET
_REGIONS: tuple[tuple[int, ...], ...] = (REGIONS["WT"], REGIONS["TC"], REGIONS["ET"])
# the label a voxel gets when it is inside region k (and not inside region k + 1)
_REGION_LABEL: tuple[int, ...] = (2, 1, 3)


def _spatial(x: np.ndarray, what: str) -> np.ndarray:
    """Drop a leading channel of size 1; require a 3D volume."""
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3:
        raise ValueError(f"{what}: expected a 3D volume or (1, H, W, D), got shape {x.shape}")
    return x


def _affine_of(x: Any) -> np.ndarray | None:
    if isinstance(x, MetaTensor):
        return np.asarray(x.affine, dtype=np.float64)
    return None


@dataclass(frozen=True)
class SourceMask:
    """One real tumour mask, stored as its tumour bounding box.

    Attributes:
        name: where it came from (file path, or ``mask[i]`` for arrays).
        crop: internal labels inside the bounding box (uint8).
        origin: voxel index of the box's first corner in the full grid.
        grid: shape of the full grid.
        affine: voxel-to-world matrix of the grid, when known.
        voxels: number of tumour voxels.
    """

    name: str
    crop: np.ndarray
    origin: tuple[int, int, int]
    grid: tuple[int, int, int]
    affine: np.ndarray | None
    voxels: int

    @classmethod
    def from_array(cls, label: np.ndarray, name: str, affine: np.ndarray | None = None) -> SourceMask:
        """Crop an internal label volume to its tumour voxels.

        Raises:
            ValueError: naming ``name`` when the label is not 3D, holds values other than 0-3 or has no tumour.
        """
        label = _spatial(np.asarray(label), name)
        values = np.unique(label)
        bad = [v for v in values.tolist() if v not in (0, *TUMOUR_CLASSES)]
        if bad:
            raise ValueError(f"{name}: label values {bad} are not internal labels (0, 1 NCR, 2 ED, 3 ET)")
        tumour = label > 0
        if not tumour.any():
            raise ValueError(f"{name}: the tumour mask has no tumour voxels")
        idx = np.nonzero(tumour)
        lo = [int(i.min()) for i in idx]
        hi = [int(i.max()) + 1 for i in idx]
        crop = np.ascontiguousarray(label[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].astype(np.uint8))
        return cls(name, crop, tuple(lo), tuple(label.shape), affine, int(tumour.sum()))  # type: ignore[arg-type]


class MaskPool:
    """The real tumour masks TF-Aug draws from, kept as bounding-box crops (cheap to hold many).

    Args:
        masks: label volumes (numpy / torch, 3D or (1, H, W, D)) or NIfTI file paths.
        label_convention: convention of the values in ``masks`` (``internal``, ``brats2023``,
            ``brats2021``, ``brats2015``); they are mapped to the internal one.
        names: names used in provenance and errors (default: the file paths, or ``mask[i]``).

    Raises:
        ValueError / FileNotFoundError naming the file for a missing, unreadable or empty mask,
        values outside the convention, or masks on different grids.
    """

    def __init__(
        self,
        masks: Sequence[str | os.PathLike | NdarrayOrTensor],
        label_convention: str = "internal",
        names: Sequence[str] | None = None,
    ) -> None:
        if len(masks) == 0:
            raise ValueError("the tumour mask pool is empty: give at least one real tumour label")
        if names is not None and len(names) != len(masks):
            raise ValueError(f"got {len(names)} names for {len(masks)} masks")
        self.label_convention = label_convention
        self.entries: list[SourceMask] = []
        for i, m in enumerate(masks):
            if isinstance(m, str | os.PathLike):
                name = str(names[i]) if names is not None else os.fspath(m)
                path = os.fspath(m)
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"{path}: tumour label file not found")
                try:
                    img = nib.load(path)
                    data = np.asarray(img.dataobj)
                except Exception as e:  # nibabel raises many types for corrupt files
                    raise ValueError(f"{path}: cannot read the tumour label ({e})") from e
                affine = np.asarray(img.affine, dtype=np.float64)
            else:
                name = str(names[i]) if names is not None else f"mask[{i}]"
                data, affine = convert_to_numpy(m, wrap_sequence=True), _affine_of(m)
            data = _spatial(data, name)
            if np.issubdtype(data.dtype, np.floating) and (
                not np.all(np.isfinite(data)) or np.any(data != np.round(data))
            ):
                raise ValueError(f"{name}: label volume holds non-integer values")
            try:
                internal = to_internal(data.astype(np.int64), label_convention)
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from e
            self.entries.append(SourceMask.from_array(internal, name, affine))
        grids = {e.grid for e in self.entries}
        if len(grids) > 1:
            raise ValueError(
                f"tumour masks lie on different grids {sorted(grids)}; they must share the real data's grid "
                f"(first: {self.entries[0].name})"
            )

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> SourceMask:
        return self.entries[i]

    @property
    def grid(self) -> tuple[int, int, int]:
        """Shape of the grid every mask lies on."""
        return self.entries[0].grid

    @property
    def affine(self) -> np.ndarray | None:
        """Voxel-to-world matrix of the grid (of the first mask), when known."""
        return self.entries[0].affine

    def check_grid(self, shape: Sequence[int], affine: np.ndarray | None, name: str, atol: float = 1e-3) -> None:
        """Raise a ValueError naming ``name`` when a volume is not on the pool's grid.

        Args:
            shape: spatial shape of the volume.
            affine: its voxel-to-world matrix (skipped when it or the pool's is unknown).
            name: the volume's file name for the message.
            atol: tolerance on the affine (mm).
        """
        if tuple(int(s) for s in shape) != self.grid:
            raise ValueError(
                f"{name}: grid {tuple(int(s) for s in shape)} differs from the real tumour masks' grid {self.grid} "
                f"({self.entries[0].name}); prepare healthy scans into the real data's space first (prepare-healthy)"
            )
        if affine is not None and self.affine is not None and not np.allclose(affine, self.affine, atol=atol):
            raise ValueError(
                f"{name}: affine differs from the real tumour masks' affine ({self.entries[0].name}); "
                "prepare healthy scans into the real data's space first (prepare-healthy)"
            )


def _as_triple(value: float | Sequence[float], what: str) -> tuple[float, float, float]:
    if isinstance(value, int | float):
        return (float(value),) * 3
    vals = tuple(float(v) for v in value)
    if len(vals) != 3:
        raise ValueError(f"{what} must be one number or three (one per axis), got {value!r}")
    return vals  # type: ignore[return-value]


def _rotation_matrix(degrees: Sequence[float]) -> np.ndarray:
    """Rotation about the three voxel axes (applied x, then y, then z), angles in degrees."""
    ax, ay, az = (math.radians(float(d)) for d in degrees)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def component_matrix(scale: Sequence[float], rotate_deg: Sequence[float], flip: Sequence[bool]) -> np.ndarray:
    """The 3x3 voxel-space matrix of one component: rotation @ scaling @ flipping.

    Args:
        scale: scale factor per axis (> 1 enlarges the tumour).
        rotate_deg: rotation angle per axis in degrees.
        flip: whether each axis is mirrored about the tumour's centre.
    """
    flips = np.diag([-1.0 if f else 1.0 for f in flip])
    return _rotation_matrix(rotate_deg) @ np.diag([float(s) for s in scale]) @ flips


def place_component(
    source: SourceMask,
    matrix: np.ndarray,
    shift: Sequence[float],
    order: int = 1,
) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """Transform one source mask about its bounding-box centre and shift it, on the full grid.

    A voxel ``p`` of the output takes the label at ``c + matrix^-1 (p - c - shift)`` of the source,
    where ``c`` is the centre of the source's tumour bounding box.

    Args:
        source: the real mask.
        matrix: 3x3 voxel-space matrix (see :func:`component_matrix`).
        shift: translation in voxels per axis.
        order: spline order for the nested regions (0 nearest, 1 trilinear).

    Returns:
        ``(slices, labels)``: where in the grid the (clipped) component lies and its internal labels,
        or None when it falls entirely outside the grid.
    """
    n = np.asarray(source.crop.shape, dtype=np.float64)
    centre_crop = (n - 1.0) / 2.0
    centre_out = np.asarray(source.origin, dtype=np.float64) + centre_crop + np.asarray(shift, dtype=np.float64)
    # bounding box of the transformed crop (voxel extents +-0.5 around the voxel centres)
    corners = np.array(np.meshgrid(*[[-0.5, s - 0.5] for s in n], indexing="ij")).reshape(3, -1)
    moved = matrix @ (corners - centre_crop[:, None]) + centre_out[:, None]
    lo = np.maximum(np.floor(moved.min(axis=1)).astype(int), 0)
    hi = np.minimum(np.ceil(moved.max(axis=1)).astype(int) + 1, np.asarray(source.grid))
    if np.any(hi <= lo):
        return None
    inv = np.linalg.inv(matrix)
    # the regions are padded by one empty voxel so samples up to half a voxel beyond the crop's edge
    # read the edge voxel (nearest) or blend towards empty (trilinear) instead of falling outside
    offset = centre_crop + 1.0 + inv @ (lo - centre_out)
    out_shape = tuple(int(h - low) for low, h in zip(lo, hi, strict=True))
    labels = np.zeros(out_shape, dtype=np.uint8)
    for region, value in zip(_REGIONS, _REGION_LABEL, strict=True):
        inside = np.pad(np.isin(source.crop, region), 1)
        if not inside.any():
            continue
        if order == 0:
            res = ndimage.affine_transform(inside.astype(np.uint8), inv, offset, out_shape, order=0, cval=0) > 0
        else:
            res = ndimage.affine_transform(
                inside.astype(np.float32), inv, offset, out_shape, order=order, cval=0.0, prefilter=False
            )
            res = res >= 0.5
        labels[res] = value
    slices = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    return slices, labels


def combine(base: np.ndarray, patch: np.ndarray, precedence: Sequence[int]) -> np.ndarray:
    """Overlay ``patch`` on ``base`` (internal labels); where both are tumour the class that comes first in
    ``precedence`` wins. Returns the combined array (``base`` is modified in place and returned)."""
    rank = np.zeros(256, dtype=np.uint8)
    for r, c in enumerate(reversed(tuple(precedence))):
        rank[int(c)] = r + 1
    take = rank[patch] > rank[base]
    base[take] = patch[take]
    return base


class TumorMaskAugment(Randomizable, Transform):
    """Make a synthetic tumour mask m_s from real masks m_r, clipped to a healthy scan's brain mask.

    ``randomize()`` draws how many masks to combine, which ones, and per mask a scale, rotation,
    flips and a shift; ``__call__`` applies them, clips the result to the brain mask and, if the mask
    is too small, redraws (at most ``max_retries`` draws in total).

    Args:
        mask_pool: a :class:`MaskPool`, or label volumes / NIfTI files to build one from.
        label_convention: convention of ``mask_pool`` when it is not a MaskPool.
        num_masks: number of real masks combined: an int, or ``(min, max)`` drawn uniformly.
        scale_range: ``(min, max)`` scale factor (> 1 enlarges).
        isotropic: one scale for all axes; otherwise one per axis.
        rotate_range: maximum absolute rotation per axis in degrees (one number or three).
        flip_prob: probability of mirroring each axis about the tumour's centre.
        max_shift: maximum absolute shift per axis in voxels (one number or three).
        precedence: internal classes from highest to lowest priority where components overlap.
        min_voxels: reject masks with fewer tumour voxels inside the brain.
        min_fraction: reject masks with fewer than this fraction of their source masks' voxels.
        max_retries: maximum number of draws before raising.
        interp_order: 1 trilinear resampling of the nested regions, 0 nearest neighbour.
    """

    def __init__(
        self,
        mask_pool: MaskPool | Sequence[str | os.PathLike | NdarrayOrTensor],
        label_convention: str = "internal",
        num_masks: int | Sequence[int] = (1, 2),
        scale_range: Sequence[float] = (0.8, 1.2),
        isotropic: bool = True,
        rotate_range: float | Sequence[float] = 15.0,
        flip_prob: float = 0.5,
        max_shift: float | Sequence[float] = 10.0,
        precedence: Sequence[int] = (3, 1, 2),
        min_voxels: int = 50,
        min_fraction: float = 0.25,
        max_retries: int = 50,
        interp_order: int = 1,
    ) -> None:
        self.pool = mask_pool if isinstance(mask_pool, MaskPool) else MaskPool(mask_pool, label_convention)
        lo_n, hi_n = (int(num_masks), int(num_masks)) if isinstance(num_masks, int) else tuple(map(int, num_masks))
        if not 1 <= lo_n <= hi_n:
            raise ValueError(f"num_masks must be >= 1 (or a range 1 <= min <= max), got {num_masks!r}")
        self.num_masks = (lo_n, hi_n)
        lo_s, hi_s = (float(s) for s in scale_range)
        if not 0 < lo_s <= hi_s:
            raise ValueError(f"scale_range must satisfy 0 < min <= max, got {scale_range!r}")
        self.scale_range = (lo_s, hi_s)
        self.isotropic = bool(isotropic)
        self.rotate_range = _as_triple(rotate_range, "rotate_range")
        self.max_shift = _as_triple(max_shift, "max_shift")
        if any(v < 0 for v in (*self.rotate_range, *self.max_shift)):
            raise ValueError("rotate_range and max_shift must be >= 0")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.flip_prob = float(flip_prob)
        precedence = tuple(int(c) for c in precedence)
        if sorted(precedence) != sorted(TUMOUR_CLASSES):
            raise ValueError(f"precedence must order the classes {TUMOUR_CLASSES} (e.g. (3, 1, 2)), got {precedence}")
        self.precedence = precedence
        if min_voxels < 0 or not 0.0 <= min_fraction <= 1.0 or max_retries < 1:
            raise ValueError("need min_voxels >= 0, 0 <= min_fraction <= 1 and max_retries >= 1")
        self.min_voxels, self.min_fraction, self.max_retries = int(min_voxels), float(min_fraction), int(max_retries)
        if interp_order not in (0, 1):
            raise ValueError(f"interp_order must be 0 (nearest) or 1 (trilinear), got {interp_order}")
        self.interp_order = int(interp_order)
        self.params: dict[str, Any] = {}

    def randomize(self, data: Any = None) -> None:
        """Draw the masks to combine and each one's scale, rotation, flips and shift (stored in ``params``)."""
        n = int(self.R.randint(self.num_masks[0], self.num_masks[1] + 1))
        replace = n > len(self.pool)
        chosen = self.R.choice(len(self.pool), size=n, replace=replace)
        components = []
        for idx in chosen.tolist():
            if self.isotropic:
                scale = [float(self.R.uniform(*self.scale_range))] * 3
            else:
                scale = [float(self.R.uniform(*self.scale_range)) for _ in range(3)]
            rotate = [float(self.R.uniform(-r, r)) if r > 0 else 0.0 for r in self.rotate_range]
            flip = [bool(self.R.random_sample() < self.flip_prob) for _ in range(3)]
            shift = [int(self.R.randint(-int(s), int(s) + 1)) for s in self.max_shift]
            components.append(
                {
                    "source": self.pool[idx].name,
                    "index": int(idx),
                    "scale": scale,
                    "rotate_deg": rotate,
                    "flip": flip,
                    "shift": shift,
                }
            )
        self.params = {"components": components}

    def compose(self, brain_mask: np.ndarray | None = None) -> np.ndarray:
        """Apply the drawn ``params``: place each component, combine with ``precedence``, clip to the brain.

        Args:
            brain_mask: boolean brain mask on the pool's grid (None: no clipping).

        Returns:
            internal labels (uint8) on the pool's grid.
        """
        out = np.zeros(self.pool.grid, dtype=np.uint8)
        for comp in self.params["components"]:
            matrix = component_matrix(comp["scale"], comp["rotate_deg"], comp["flip"])
            placed = place_component(self.pool[comp["index"]], matrix, comp["shift"], self.interp_order)
            if placed is None:
                continue
            slices, labels = placed
            out[slices] = combine(out[slices], labels, self.precedence)
        if brain_mask is not None:
            out[~brain_mask] = 0
        return out

    def _accept(self, mask: np.ndarray) -> tuple[bool, int, int]:
        voxels = int(np.count_nonzero(mask))
        source = sum(self.pool[c["index"]].voxels for c in self.params["components"])
        need = max(self.min_voxels, int(math.ceil(self.min_fraction * source)))
        return voxels >= need and voxels > 0, voxels, need

    def __call__(
        self, brain_mask: NdarrayOrTensor | None = None, randomize: bool = True, name: str | None = None
    ) -> NdarrayOrTensor:
        """Make one synthetic mask.

        Args:
            brain_mask: the healthy scan's brain mask on the real masks' grid ((1, H, W, D) or (H, W, D));
                None keeps the whole grid.
            randomize: draw new parameters (with redraws); False reuses the last ``params`` as they are.
            name: the healthy scan's file, for error messages (default: from MetaTensor metadata).

        Returns:
            internal labels ``(1, H, W, D)`` (uint8), the type of ``brain_mask`` (MetaTensor metadata kept).
            ``params`` then also holds ``attempts`` and ``voxels``.

        Raises:
            ValueError: when the brain mask is not on the masks' grid or is empty.
            RuntimeError: when no acceptable mask was drawn in ``max_retries`` attempts.
        """
        if name is None and isinstance(brain_mask, MetaTensor):
            name = source_name(brain_mask)
        name = name or "brain mask"
        brain = None
        if brain_mask is not None:
            brain = _spatial(convert_to_numpy(brain_mask, wrap_sequence=True), name) > 0
            self.pool.check_grid(brain.shape, _affine_of(brain_mask), name)
            if not brain.any():
                raise ValueError(f"{name}: the brain mask is empty")
        if not randomize:
            if not self.params:
                raise RuntimeError("randomize=False but no parameters were drawn yet; call randomize() first")
            mask = self.compose(brain)
            _, voxels, _ = self._accept(mask)
        else:
            best = (0, 0)
            for attempt in range(1, self.max_retries + 1):
                self.randomize()
                mask = self.compose(brain)
                ok, voxels, need = self._accept(mask)
                best = max(best, (voxels, need))
                if ok:
                    self.params["attempts"] = attempt
                    break
            else:
                raise RuntimeError(
                    f"{name}: no synthetic tumour mask with enough voxels inside the brain after {self.max_retries} "
                    f"draws (best: {best[0]} voxels, needed {best[1]}: min_voxels={self.min_voxels}, "
                    f"min_fraction={self.min_fraction}); lower min_voxels / min_fraction, reduce max_shift, or "
                    "check that the healthy scan is in the real data's space"
                )
        self.params["voxels"] = voxels
        out = mask[None]
        if brain_mask is None:
            return out
        return convert_to_dst_type(
            out, brain_mask, dtype=torch.uint8 if isinstance(brain_mask, torch.Tensor) else np.uint8
        )[0]


class TumorMaskAugmentd(Randomizable, MapTransform):
    """Dictionary version of :class:`TumorMaskAugment`: adds a synthetic mask (and its ROI) to the data.

    Args:
        keys: the brain mask key (the mask is clipped to it; its metadata is copied to the outputs).
        mask_pool, label_convention, num_masks, scale_range, isotropic, rotate_range, flip_prob, max_shift,
            precedence, min_voxels, min_fraction, max_retries, interp_order: see :class:`TumorMaskAugment`.
        label_key: key of the synthetic mask written (internal labels, ``(1, H, W, D)``).
        roi_key: key of the binary ROI ``m_s > 0`` written (None: not written).
        params_key: key of the drawn parameters (JSON-serialisable dict, for provenance; None: not written).
        image_key: key whose metadata names the healthy scan in error messages (optional).
        allow_missing_keys: do not raise if the brain mask is absent (then the mask is not clipped).
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_pool: MaskPool | Sequence[str | os.PathLike | NdarrayOrTensor],
        label_convention: str = "internal",
        num_masks: int | Sequence[int] = (1, 2),
        scale_range: Sequence[float] = (0.8, 1.2),
        isotropic: bool = True,
        rotate_range: float | Sequence[float] = 15.0,
        flip_prob: float = 0.5,
        max_shift: float | Sequence[float] = 10.0,
        precedence: Sequence[int] = (3, 1, 2),
        min_voxels: int = 50,
        min_fraction: float = 0.25,
        max_retries: int = 50,
        interp_order: int = 1,
        label_key: str = "label",
        roi_key: str | None = "roi",
        params_key: str | None = "tf_aug_params",
        image_key: str | None = "image",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"TumorMaskAugmentd takes exactly one brain mask key, got {self.keys}")
        self.augment = TumorMaskAugment(
            mask_pool,
            label_convention,
            num_masks,
            scale_range,
            isotropic,
            rotate_range,
            flip_prob,
            max_shift,
            precedence,
            min_voxels,
            min_fraction,
            max_retries,
            interp_order,
        )
        self.label_key, self.roi_key, self.params_key, self.image_key = label_key, roi_key, params_key, image_key

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> TumorMaskAugmentd:
        super().set_random_state(seed, state)
        self.augment.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        """Draw new augmentation parameters (without the size check; ``__call__`` redraws as needed)."""
        self.augment.randomize(data)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, Any]:
        d = dict(data)
        key = self.keys[0]
        brain = d.get(key) if key in d else None
        if brain is None and not self.allow_missing_keys:
            raise KeyError(f"key {key!r} (brain mask) not found in the data")
        name = None
        image = d.get(self.image_key) if self.image_key else None
        if isinstance(image, MetaTensor):
            name = source_name(image)
        if name is None and isinstance(brain, MetaTensor):
            name = source_name(brain)
        mask = self.augment(brain, randomize=True, name=name)
        d[self.label_key] = mask
        if self.roi_key is not None:
            d[self.roi_key] = mask > 0 if not isinstance(mask, torch.Tensor) else (mask > 0).to(torch.uint8)
            if isinstance(d[self.roi_key], np.ndarray):
                d[self.roi_key] = d[self.roi_key].astype(np.uint8)
        if self.params_key is not None:
            d[self.params_key] = dict(self.augment.params)
        return d
