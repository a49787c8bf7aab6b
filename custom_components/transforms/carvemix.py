"""CarveMix (Zhang et al., MICCAI 2021): carve a lesion-shaped region from one case into another.

A signed distance map D of the source lesion (negative inside, in mm) defines the carved region
``M = D < lambda``. Following the CarveMix paper, ``lambda = lambda_l + c (lambda_u - lambda_l)`` with
``c ~ Beta(alpha, alpha)`` (alpha = 1: uniform), ``lambda_l = -|min D| / 2`` (a region smaller than the
lesion) and ``lambda_u = |min D|`` (the lesion plus a margin as wide as its inner radius). The new
image takes the source's voxels inside M and the target's outside; the label likewise, so the
annotation is carried along with the carved tissue.

Since ``lambda <= lambda_u``, M lies in the lesion's bounding box grown by ``lambda_u + 1`` mm: D is
computed on that box only (:func:`signed_distance_box`, the same values as :func:`signed_distance` there),
once per source case: :class:`CarveMix` keeps it in an LRU cache of ``cache_size`` source cases keyed by a
digest of the source lesion (:mod:`custom_components.transforms.case_cache`). A draw then compares D with
``lambda`` on the box and copies the target with the carved voxels replaced.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, Transform
from monai.utils import convert_to_dst_type
from scipy import ndimage

from custom_components.data.keys import SynthesisKeys
from custom_components.transforms.case_cache import CaseCache, grow_box, label_digest, tight_box


def signed_distance(mask: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Signed Euclidean distance to the boundary of ``mask``: negative inside, positive outside.

    Uses CarveMix's convention: a voxel's distance is measured to the nearest voxel of the other
    side minus one voxel, so boundary voxels on either side are at 0.

    Args:
        mask: boolean 3D lesion mask (non-empty).
        spacing: voxel size per axis (mm); default 1.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("CarveMix needs a source lesion: the source label is empty")
    inside = ndimage.distance_transform_edt(mask, sampling=spacing)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
    return np.where(mask, -(inside - 1.0), outside - 1.0).astype(np.float32)


@dataclass
class CarveMixCaseInvariants:
    """The part of a source lesion's signed distance that a draw can carve.

    Attributes:
        box: slices of the box (every voxel outside has ``D > |min D|``, so it is never carved).
        distance: :func:`signed_distance` on ``box``, float32.
        depth: ``|min D|`` (``lambda_u``).
    """

    box: tuple[slice, ...]
    distance: np.ndarray
    depth: float


def signed_distance_box(
    mask: np.ndarray, spacing: Sequence[float] | None = None, tight: tuple[slice, ...] | None = None
) -> CarveMixCaseInvariants:
    """:func:`signed_distance` on the only box a carved region can reach, and ``|min D|``.

    The distance inside the lesion is computed on its bounding box grown by one voxel (the nearest
    outside voxel of a lesion voxel is never farther than the box's margin), which bounds ``|min D|``;
    the distance outside on the bounding box grown by that bound plus one voxel and 1 mm (all lesion
    voxels are in the box, so the distances are exact). The values on the box equal those of
    :func:`signed_distance` on the whole volume, and voxels outside the box have ``D > |min D|``.

    Args:
        mask: boolean lesion mask (non-empty).
        spacing: voxel size per axis (mm); default 1.
        tight: the mask's bounding box when already known.
    """
    mask = np.asarray(mask, dtype=bool)
    if tight is None:
        tight = tight_box(mask)
    if tight is None:
        raise ValueError("CarveMix needs a source lesion: the source label is empty")
    steps = [1.0] * mask.ndim if spacing is None else [float(s) for s in np.broadcast_to(spacing, (mask.ndim,))]
    inner = grow_box(tight, 1, mask.shape)
    inside = ndimage.distance_transform_edt(mask[inner], sampling=spacing)
    # min D >= min(1 - max inside distance, -1): outside distances are >= 0
    bound = max(abs(1.0 - float(inside.max())), 1.0)
    margins = [int(math.ceil((bound + 1.0) / s)) + 1 for s in steps]
    box = grow_box(tight, margins, mask.shape)
    les = mask[box]
    outside = ndimage.distance_transform_edt(~les, sampling=spacing)
    inside_box = np.zeros(les.shape)
    offset = tuple(slice(i.start - b.start, i.stop - b.start) for i, b in zip(inner, box, strict=True))
    inside_box[offset] = inside
    distance = np.where(les, -(inside_box - 1.0), outside - 1.0).astype(np.float32)
    return CarveMixCaseInvariants(box=box, distance=distance, depth=abs(float(distance.min())))


def carve_region(distance: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """The carved region ``D < lambda`` for a draw ``c`` in [0, 1]; returns (mask, lambda).

    Args:
        distance: signed distance map of the source lesion (negative inside).
        c: a Beta(alpha, alpha) draw mapping linearly onto [lambda_l, lambda_u].
    """
    lam = carve_lambda(abs(float(distance.min())), c)
    return distance < lam, lam


def carve_lambda(depth: float, c: float) -> float:
    """``lambda = lambda_l + c (lambda_u - lambda_l)`` with ``lambda_l = -depth / 2``, ``lambda_u = depth``.

    Args:
        depth: ``|min D|`` of the source lesion's signed distance.
        c: a Beta(alpha, alpha) draw in [0, 1].
    """
    lam_l, lam_u = -depth / 2.0, depth
    return lam_l + float(c) * (lam_u - lam_l)


class CarveMix(Randomizable, Transform):
    """Mix a target case with a source case inside a lesion-shaped region of the source.

    Args:
        alpha: parameter of the Beta(alpha, alpha) distribution of ``c`` (CarveMix uses 1).
        spacing: voxel size used for the signed distance (mm); default 1 per axis.
        cache_size: how many source cases' signed distances (:class:`CarveMixCaseInvariants`) are kept,
            least recently used evicted first; 0 recomputes them on every call. Outputs are the same
            either way.
    """

    def __init__(self, alpha: float = 1.0, spacing: Sequence[float] | None = None, cache_size: int = 16) -> None:
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        self.alpha = alpha
        self.spacing = spacing
        self.cache = CaseCache(cache_size)
        self._c = 0.5

    def randomize(self, data: Any = None) -> None:
        self._c = float(self.R.beta(self.alpha, self.alpha))

    def source_invariants(self, source_label: np.ndarray | torch.Tensor) -> CarveMixCaseInvariants:
        """The source lesion's signed distance on its box, from the cache when the lesion was seen before.

        Args:
            source_label: the source case's label (1, *spatial); its lesion is ``label > 0``.
        """
        src_lab = np.asarray(source_label.detach().cpu() if isinstance(source_label, torch.Tensor) else source_label)
        mask = src_lab[0] > 0
        tight = tight_box(mask)
        if tight is None:
            raise ValueError("CarveMix needs a source lesion: the source label is empty")
        key = label_digest(mask[tight], mask.shape, tight) if self.cache.enabled else b""
        inv = self.cache.get(key) if self.cache.enabled else None
        if inv is None:
            inv = signed_distance_box(mask, self.spacing, tight)
            self.cache.put(key, inv)
        return inv

    def __call__(
        self,
        image: np.ndarray | torch.Tensor,
        label: np.ndarray | torch.Tensor,
        source_image: np.ndarray | torch.Tensor,
        source_label: np.ndarray | torch.Tensor,
        randomize: bool = True,
    ) -> tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor, dict[str, float]]:
        """Return the mixed (image, label) in the types of the inputs, and the draw (c, lambda, voxels).

        Args:
            image, label: target case, channel first (C, *spatial) and (1, *spatial).
            source_image, source_label: source case on the same grid; its lesion is carved.
            randomize: draw a new ``c`` first.
        """
        if randomize:
            self.randomize()
        img = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image)
        lab = np.asarray(label.detach().cpu() if isinstance(label, torch.Tensor) else label)
        src_img = np.asarray(source_image.detach().cpu() if isinstance(source_image, torch.Tensor) else source_image)
        src_lab = np.asarray(source_label.detach().cpu() if isinstance(source_label, torch.Tensor) else source_label)
        if img.shape != src_img.shape or lab.shape != src_lab.shape:
            raise ValueError(
                f"CarveMix needs cases on one grid: target image {img.shape} / label {lab.shape}, "
                f"source image {src_img.shape} / label {src_lab.shape}"
            )
        inv = self.source_invariants(src_lab)
        lam = carve_lambda(inv.depth, self._c)
        region = inv.distance < lam  # the carved region, on the box (nothing outside it is carved)
        new_img = self._paste(img, src_img, inv.box, region)
        new_lab = self._paste(lab, src_lab, inv.box, region)
        info = {"c": self._c, "lambda": lam, "voxels": int(region.sum())}
        return convert_to_dst_type(new_img, image)[0], convert_to_dst_type(new_lab, label)[0], info

    @staticmethod
    def _paste(target: np.ndarray, source: np.ndarray, box: tuple[slice, ...], region: np.ndarray) -> np.ndarray:
        """``np.where(region[None], source, target)`` with ``region`` given on ``box`` only (False elsewhere)."""
        out = np.array(target, dtype=np.result_type(source, target), copy=True)
        view = out[(slice(None), *box)]
        view[:, region] = source[(slice(None), *box)][:, region]
        return out


class CarveMixd(MapTransform, Randomizable):
    """Dictionary CarveMix: the current case is the target, a random case of ``source`` the source.

    Args:
        keys: the image and label keys, in that order.
        source: cases to carve from (datalist items or preloaded dictionaries).
        loader: callable turning a ``source`` item into a dictionary with the same keys, on the
            target's grid and preprocessing (for example the bundle's load/normalise Compose).
        prob: probability of mixing a given sample.
        alpha: Beta(alpha, alpha) parameter.
        spacing: voxel size for the signed distance (mm).
        flag_key: key set to True when the sample was mixed (the trainer treats it as synthetic).
        cache_size: source cases whose signed distance is kept (see :class:`CarveMix`); the source is
            still loaded on every draw, and the cache is keyed by its lesion, not by its index.
    """

    def __init__(
        self,
        keys: KeysCollection,
        source: Sequence[Mapping[Hashable, Any]],
        loader: Callable[[Mapping[Hashable, Any]], Mapping[Hashable, Any]] | None = None,
        prob: float = 1.0,
        alpha: float = 1.0,
        spacing: Sequence[float] | None = None,
        flag_key: str = SynthesisKeys.SYNTHETIC,
        cache_size: int = 16,
    ) -> None:
        MapTransform.__init__(self, keys)
        if len(self.keys) != 2:
            raise ValueError(f"CarveMixd needs exactly two keys (image, label), got {self.keys}")
        if len(source) == 0:
            raise ValueError("CarveMixd needs at least one source case")
        self.source = list(source)
        self.loader = loader
        self.prob = prob
        self.flag_key = flag_key
        self.mixer = CarveMix(alpha=alpha, spacing=spacing, cache_size=cache_size)
        self._do = False
        self._index = 0

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> CarveMixd:
        super().set_random_state(seed, state)
        self.mixer.set_random_state(state=self.R)
        return self

    def randomize(self, data: Any = None) -> None:
        self._do = self.R.rand() < self.prob
        self._index = int(self.R.randint(len(self.source)))
        self.mixer.randomize()

    def warm(self, data: Mapping[Hashable, Any]) -> None:
        """Fill the cache with the invariants of ``data``'s lesion as a source (the bundle's sources are its real
        cases), without drawing (see :meth:`CarveMix.source_invariants`)."""
        self.mixer.source_invariants(data[self.keys[1]])

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        d.setdefault(self.flag_key, False)
        if not self._do:
            return d
        image_key, label_key = self.keys
        src = self.source[self._index]
        src = dict(self.loader(src)) if self.loader is not None else dict(src)
        d[image_key], d[label_key], _ = self.mixer(
            d[image_key], d[label_key], src[image_key], src[label_key], randomize=False
        )
        d[self.flag_key] = True
        return d
