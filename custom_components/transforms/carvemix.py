"""CarveMix (Zhang et al., MICCAI 2021): carve a lesion-shaped region from one case into another.

A signed distance map D of the source lesion (negative inside, in mm) defines the carved region
``M = D < lambda``. Following the CarveMix paper, ``lambda = lambda_l + c (lambda_u - lambda_l)`` with
``c ~ Beta(alpha, alpha)`` (alpha = 1: uniform), ``lambda_l = -|min D| / 2`` (a region smaller than the
lesion) and ``lambda_u = |min D|`` (the lesion plus a margin as wide as its inner radius). The new
image takes the source's voxels inside M and the target's outside; the label likewise, so the
annotation is carried along with the carved tissue.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, Transform
from monai.utils import convert_to_dst_type
from scipy import ndimage


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


def carve_region(distance: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """The carved region ``D < lambda`` for a draw ``c`` in [0, 1]; returns (mask, lambda).

    Args:
        distance: signed distance map of the source lesion (negative inside).
        c: a Beta(alpha, alpha) draw mapping linearly onto [lambda_l, lambda_u].
    """
    depth = abs(float(distance.min()))
    lam_l, lam_u = -depth / 2.0, depth
    lam = lam_l + float(c) * (lam_u - lam_l)
    return distance < lam, lam


class CarveMix(Randomizable, Transform):
    """Mix a target case with a source case inside a lesion-shaped region of the source.

    Args:
        alpha: parameter of the Beta(alpha, alpha) distribution of ``c`` (CarveMix uses 1).
        spacing: voxel size used for the signed distance (mm); default 1 per axis.
    """

    def __init__(self, alpha: float = 1.0, spacing: Sequence[float] | None = None) -> None:
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        self.alpha = alpha
        self.spacing = spacing
        self._c = 0.5

    def randomize(self, data: Any = None) -> None:
        self._c = float(self.R.beta(self.alpha, self.alpha))

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
        distance = signed_distance(src_lab[0] > 0, self.spacing)
        region, lam = carve_region(distance, self._c)
        new_img = np.where(region[None], src_img, img)
        new_lab = np.where(region[None], src_lab, lab)
        info = {"c": self._c, "lambda": lam, "voxels": int(region.sum())}
        return convert_to_dst_type(new_img, image)[0], convert_to_dst_type(new_lab, label)[0], info


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
    """

    def __init__(
        self,
        keys: KeysCollection,
        source: Sequence[Mapping[Hashable, Any]],
        loader: Callable[[Mapping[Hashable, Any]], Mapping[Hashable, Any]] | None = None,
        prob: float = 1.0,
        alpha: float = 1.0,
        spacing: Sequence[float] | None = None,
        flag_key: str = "is_synthetic",
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
        self.mixer = CarveMix(alpha=alpha, spacing=spacing)
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
