"""Deformation Tumor Synthesis (DTSS) of the DSMA paper (section 3.1, eqs. 1-5).

DTSS derives a new tumour from a real one, online during training:

1. **Deformation area** (eq. 1) ``d = l * m``: ``l`` is the whole-tumour mask of the real label and
   ``m`` a threshold mask whose threshold comes from the lesion's size. The paper leaves ``m``
   open; here ``m`` keeps the voxels whose Euclidean distance to the outside of the lesion is at
   most ``tau = max(1, shell_fraction * R_eq)``, where ``R_eq = (3 |l| / 4 pi)^(1/3)`` is the radius of
   the sphere with the lesion's volume. ``d`` is therefore the lesion's outer shell, as thick as a
   fixed fraction of the lesion's size (one voxel for tiny lesions, ~4 voxels for a 30 ml
   whole tumour). Monomers are seeded there, so each one partly collides with the real tumour
   and partly grows out of it: the morphology changes at the lesion's surface while the new
   lesion stays attached to the old one. (A deeper ``d`` only retextures the interior; a ``d``
   outside the lesion would create detached tumours, which eq. 1's ``d = l * m`` rules out.)
2. **Monomers**: ellipsoids with semi-axes drawn uniformly in ``radius_range`` voxels per axis,
   elastically deformed by a smooth random displacement field (uniform random displacements of
   at most ``elastic_magnitude`` voxels on a ``elastic_grid``^3 control grid, linearly
   interpolated over the monomer's patch; a voxel ``x`` belongs to the monomer when
   ``x + u(x)`` lies inside the ellipsoid). Each monomer is cut to the brain (voxels above the
   channel minimum in some channel, or labelled) and to its connected part containing its seed,
   so every monomer is one piece touching the real lesion.
3. **Iterative synthesis**: ``iterations_range`` monomers are placed one after another. Voxels
   are filled with texture taken from the real lesion: each monomer voxel gets the intensities
   (all channels at once, so cross-modal correlation is kept) of a randomly drawn real-lesion
   voxel of its class. The tumour prototype ``t`` is an intensity offset (the fusion subtracts
   it, eq. 4) per channel:

   * monomer voxels outside the real tumour become tumour: ``t = i - v`` (``v`` the sampled
     texture, so the fused voxel takes the real lesion's texture); a later monomer paints over
     an earlier one there;
   * where a monomer collides with the real tumour, one action per monomer is drawn with
     ``collision_probs``: *retain* (``t`` unchanged), *overlap* (the monomer's tumour signal
     ``v - h`` is added, ``t -= collision_strength * (v - h)``: the texture moves further from
     healthy tissue) or *reduce* (it is subtracted, ``t += collision_strength * (v - h)``: the
     texture fades towards healthy tissue). ``h`` is the channel's healthy-tissue reference,
     the median of brain voxels near but outside the lesion. Reduce acts on the texture only:
     it never deletes labelled voxels, so the new lesion always contains the old one.

   ``T = t (x) g(sigma)`` (eq. 2) smooths the voxel-wise sampled texture. By default
   (``masked_blur``) the Gaussian is a normalised convolution within the prototype's own domain,
   separately over the grown voxels and over the collision voxels (``g * (t m) / g * m`` on each
   part ``m``): a plain convolution pulls in the zeros of ``t`` outside the monomers and on
   retained lesion voxels, and since the grown layers are only a few voxels thick it leaves most
   grown voxels half-way between healthy and lesion intensities although they are labelled
   tumour (TCGA-FG-6692, seed 0, 10 monomers: mean FLAIR of grown voxels 0.79 against 0.93 for the real
   oedema and 0.56 for healthy tissue; 0.92 with the masked blur). ``masked_blur=False`` gives
   the plain convolution of eq. 2.
4. **Fusion**. Labels (eq. 3, ``G_L = L + G_t``): the deformation tumour's label ``G_t`` is its
   support restricted to voxels outside the real tumour, each voxel taking the class of the
   nearest real-lesion voxel, so the sum stays in {0, 1, 2, 3} and the anatomy stays nested
   (new voxels next to oedema are oedema; ET/NCR only grow where they already touch the
   lesion's surface). Images (eqs. 4-5, :func:`fuse_image`): ``G_t = intensity_scale * T``,
   ``G_t' = G_t + n`` with ``n`` Gaussian noise of standard deviation ``noise_std`` times the
   channel's real-lesion standard deviation (so the noise has the same meaning for [-1, 1]
   images and z-scores), ``l' = (i - G_t') * l`` and ``i' = i * (1 - l) + l'`` where ``l`` is the
   fused lesion region (real whole tumour plus the monomers' support). With ``clip`` the fused
   voxels are clipped to the channel's input range (a [-1, 1] image stays in [-1, 1]). Voxels
   outside ``l`` are never written: image and label are bit-identical there.

All work is done on the lesion's bounding box plus the largest monomer's reach, so a
240x240x155 four-channel case takes a fraction of a second on one core. What depends only on the case
(the deformation area, the nearest-lesion classes of the distance transform, the class voxel pools,
the brain, the healthy reference and the lesion's standard deviation) is computed once per case and
kept in an LRU cache (``cache_size`` cases, keyed by a digest of the label, checked against a digest
of the image's box and channel range; :mod:`custom_components.transforms.case_cache`); each draw then
works on the monomers' box only. Outputs do not depend on the cache.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_data_type, convert_to_dst_type
from scipy import ndimage

from custom_components.data.keys import SynthesisKeys
from custom_components.data.labels import INTERNAL_LABELS, TUMOUR_CLASSES
from custom_components.transforms.case_cache import CaseCache, array_digest, grow_box, label_digest, tight_box

RETAIN, OVERLAP, REDUCE = 0, 1, 2


def fuse_image(
    image: NdarrayOrTensor,
    lesion: NdarrayOrTensor,
    deformation_tumour: NdarrayOrTensor,
    noise: NdarrayOrTensor | None = None,
) -> NdarrayOrTensor:
    """Image fusion of DTSS, eqs. 4-5: ``i' = i * (1 - l) + (i - (G_t + n)) * l``.

    Args:
        image: the real image ``i`` (C, *spatial) or any shape.
        lesion: the lesion region ``l``, broadcastable to ``image`` (boolean or weights in [0, 1]).
        deformation_tumour: the deformation tumour ``G_t``, broadcastable to ``image``.
        noise: Gaussian noise ``n`` added to ``G_t`` (``G_t' = G_t + n``); ``None`` for none.

    Returns:
        ``i'`` in the type of ``image``.
    """
    lesion_w = convert_to_dst_type(lesion, image, dtype=image.dtype)[0]
    g = convert_to_dst_type(deformation_tumour, image, dtype=image.dtype)[0]
    if noise is not None:
        g = g + convert_to_dst_type(noise, image, dtype=image.dtype)[0]
    fused_lesion = (image - g) * lesion_w  # eq. 4: l' = (i - G_t') . l
    return image * (1 - lesion_w) + fused_lesion  # eq. 5: i' = i . (1 - l) + l'


def deformation_area(lesion: np.ndarray, shell_fraction: float) -> tuple[np.ndarray, float]:
    """Deformation area ``d = l * m`` (eq. 1): the lesion's outer shell of size-dependent thickness.

    ``m`` keeps voxels at Euclidean distance ``<= tau`` from the outside of the lesion, with
    ``tau = max(1, shell_fraction * R_eq)`` and ``R_eq`` the radius of a sphere of the lesion's volume.

    Args:
        lesion: boolean lesion mask ``l`` (3D, non-empty).
        shell_fraction: thickness of the shell as a fraction of ``R_eq``.

    Returns:
        (``d`` as a boolean mask, the threshold ``tau`` in voxels).
    """
    lesion = np.asarray(lesion, dtype=bool)
    if not lesion.any():
        raise ValueError("the deformation area needs a lesion: the lesion mask is empty")
    r_eq = (3.0 * float(lesion.sum()) / (4.0 * math.pi)) ** (1.0 / 3.0)
    tau = max(1.0, shell_fraction * r_eq)
    depth = ndimage.distance_transform_edt(lesion)
    return lesion & (depth <= tau), tau


def monomer_mask(radii: Sequence[float], displacement: np.ndarray) -> np.ndarray:
    """An elastically deformed ellipsoid on a cubic patch centred on the monomer's seed.

    Voxel ``x`` (offset from the patch centre) is inside when ``sum_a ((x_a + u_a(x)) / r_a)^2 <= 1``.

    Args:
        radii: the three semi-axes in voxels.
        displacement: displacement field ``u`` (3, P, P, P), P odd (zeros: a plain ellipsoid).

    Returns:
        boolean mask (P, P, P).
    """
    size = displacement.shape[1]
    if displacement.shape != (3, size, size, size) or size % 2 == 0:
        raise ValueError(f"displacement must be (3, P, P, P) with P odd, got {displacement.shape}")
    offsets = np.arange(size, dtype=np.float32) - size // 2
    grids = np.meshgrid(offsets, offsets, offsets, indexing="ij")
    level = sum(((grids[a] + displacement[a]) / float(radii[a])) ** 2 for a in range(3))
    return level <= 1.0


def _displacement_field(control: np.ndarray, size: int) -> np.ndarray:
    """Linear interpolation of a (3, g, g, g) control grid onto a (3, size, size, size) patch."""
    g = control.shape[1]
    pos = np.linspace(0.0, g - 1.0, size)
    coords = np.stack(np.meshgrid(pos, pos, pos, indexing="ij"))
    return np.stack([ndimage.map_coordinates(control[a], coords, order=1) for a in range(3)]).astype(np.float32)


def _groups(pieces: Sequence[tuple[slice, ...]], reach: int, shape: Sequence[int]) -> list[tuple[slice, ...]]:
    """Boxes of groups of ``pieces``: pieces whose boxes grown by ``reach`` overlap share a group.

    Returns each group's bounding box grown by ``reach`` and clipped to ``shape``; the boxes of two groups
    are more than ``2 * reach`` voxels apart along some axis.
    """
    groups = [tuple((b.start, b.stop) for b in piece) for piece in pieces]
    merged = True
    while merged:
        merged = False
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                a, b = groups[i], groups[j]
                if all(x0 < y1 + 2 * reach and y0 < x1 + 2 * reach for (x0, x1), (y0, y1) in zip(a, b, strict=True)):
                    groups[i] = tuple((min(x0, y0), max(x1, y1)) for (x0, x1), (y0, y1) in zip(a, b, strict=True))
                    del groups[j]
                    merged = True
                    break
            if merged:
                break
    return [grow_box(tuple(slice(x0, x1) for x0, x1 in g), reach, shape) for g in groups]


@dataclass
class DTSSCaseInvariants:
    """What DTSS computes once per real case (on the lesion's box, see :class:`DeformationTumorSynthesis`).

    Attributes:
        image_digest: SHA-256 of the image's box and channel range these values were computed from.
        area_idx: flat box indices of the deformation area (eq. 1), int32.
        near_class: per box voxel, the class of its nearest real-lesion voxel (the EDT's indices), uint8.
        class_voxels: per tumour class, flat box indices of the real lesion's voxels of that class, int32.
        brain: brain of the box (voxels above the channel minimum in some channel, or lesion).
        healthy: per channel, the healthy-tissue reference ``h``.
        lesion_std: per channel, the standard deviation of the real lesion's intensities.
    """

    image_digest: bytes
    area_idx: np.ndarray
    near_class: np.ndarray
    class_voxels: dict[int, np.ndarray]
    brain: np.ndarray
    healthy: np.ndarray
    lesion_std: np.ndarray


class DeformationTumorSynthesis(RandomizableTransform):
    """DSMA's Deformation Tumor Synthesis: grow and retexture the real tumour of a case.

    See the module docstring for the method and the choices made where the paper is silent.
    Called as ``image, label = dtss(image, label)``; the inputs are not modified.

    Args:
        prob: probability of synthesising; otherwise the inputs are returned unchanged.
        radius_range: (r_min, r_max), range of a monomer's semi-axes in voxels (paper: [3, 5]).
        iterations_range: inclusive range of the number of monomers (paper: [3, 10]).
        sigma: standard deviation (voxels) of the Gaussian that blurs the prototype (eq. 2); 0: no blur.
        noise_std: standard deviation of the noise added to the deformation tumour (eq. 4's
            ``G_t'``), in units of the channel's real-lesion intensity standard deviation.
        shell_fraction: thickness of the deformation area (eq. 1) as a fraction of the lesion's
            equivalent-sphere radius (at least one voxel).
        elastic_magnitude: largest elastic displacement of a monomer's voxels, in voxels.
        elastic_grid: control points per axis of a monomer's displacement field.
        collision_probs: probabilities of (retain, overlap, reduce) when a monomer collides with
            the real tumour.
        collision_strength: fraction of the monomer's tumour signal ``v - h`` that overlap adds and
            reduce subtracts on collision voxels.
        intensity_scale: weight of the deformation tumour in the fusion, ``G_t = intensity_scale * T``
            (1: new voxels take the real lesion's texture; below 1: fainter new tumour).
        clip: clip fused voxels to each channel's input range.
        masked_blur: blur the prototype by normalised convolution within the grown voxels and
            within the collision voxels (default), instead of a plain convolution of ``t``.
        cache_size: how many cases' invariants (:class:`DTSSCaseInvariants`: deformation area,
            nearest-lesion classes, class voxel pools, brain, healthy reference, lesion standard
            deviation) this transform keeps, least recently used evicted first; 0 recomputes them
            on every call. Outputs are the same either way.
    """

    def __init__(
        self,
        prob: float = 1.0,
        radius_range: Sequence[float] = (3.0, 5.0),
        iterations_range: Sequence[int] = (3, 10),
        sigma: float = 1.0,
        noise_std: float = 0.1,
        shell_fraction: float = 0.2,
        elastic_magnitude: float = 1.0,
        elastic_grid: int = 4,
        collision_probs: Sequence[float] = (1 / 3, 1 / 3, 1 / 3),
        collision_strength: float = 0.5,
        intensity_scale: float = 1.0,
        clip: bool = True,
        masked_blur: bool = True,
        cache_size: int = 16,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        r_min, r_max = (float(r) for r in radius_range)
        if not 0 < r_min <= r_max:
            raise ValueError(f"radius_range must satisfy 0 < r_min <= r_max, got {tuple(radius_range)}")
        n_min, n_max = (int(n) for n in iterations_range)
        if not 1 <= n_min <= n_max:
            raise ValueError(f"iterations_range must satisfy 1 <= min <= max, got {tuple(iterations_range)}")
        probs = np.asarray(collision_probs, dtype=np.float64)
        if probs.shape != (3,) or (probs < 0).any() or not np.isclose(probs.sum(), 1.0):
            raise ValueError(f"collision_probs must be 3 non-negative numbers summing to 1, got {collision_probs}")
        for name, value in (
            ("sigma", sigma),
            ("noise_std", noise_std),
            ("elastic_magnitude", elastic_magnitude),
            ("collision_strength", collision_strength),
            ("intensity_scale", intensity_scale),
        ):
            if value < 0:
                raise ValueError(f"{name} must be non-negative, got {value}")
        if shell_fraction <= 0:
            raise ValueError(f"shell_fraction must be positive, got {shell_fraction}")
        if elastic_grid < 2:
            raise ValueError(f"elastic_grid must be at least 2, got {elastic_grid}")
        self.radius_range = (r_min, r_max)
        self.iterations_range = (n_min, n_max)
        self.sigma = float(sigma)
        self.noise_std = float(noise_std)
        self.shell_fraction = float(shell_fraction)
        self.elastic_magnitude = float(elastic_magnitude)
        self.elastic_grid = int(elastic_grid)
        self.collision_probs = probs / probs.sum()
        self.collision_strength = float(collision_strength)
        self.intensity_scale = float(intensity_scale)
        self.clip = bool(clip)
        self.masked_blur = bool(masked_blur)
        self.cache = CaseCache(cache_size)
        # half-width of a monomer's patch: the farthest a deformed monomer voxel can be from its seed
        self.patch_half = int(math.ceil(r_max + self.elastic_magnitude))
        self._n_monomers = 0
        self._seed_positions = np.zeros(0)
        self._radii = np.zeros((0, 3))
        self._controls = np.zeros((0, 3, self.elastic_grid, self.elastic_grid, self.elastic_grid))
        self._actions = np.zeros(0, dtype=np.int64)
        self._texture_seed = 0

    def randomize(self, data: Any = None) -> None:
        """Draw whether to synthesise and every random value of one synthesis.

        Draws the number of monomers, each monomer's seed position (a fraction of the way through
        the deformation area's voxels), semi-axes, elastic control displacements and collision
        action, and the seed of the generator that samples the voxel-level texture and noise.
        The draws do not depend on the data, so one ``randomize()`` can be replayed on any case
        with ``__call__(..., randomize=False)``.
        """
        super().randomize(None)
        if not self._do_transform:
            return
        n = int(self.R.randint(self.iterations_range[0], self.iterations_range[1] + 1))
        g, mag = self.elastic_grid, self.elastic_magnitude
        self._n_monomers = n
        self._seed_positions = self.R.uniform(0.0, 1.0, size=n)
        self._radii = self.R.uniform(self.radius_range[0], self.radius_range[1], size=(n, 3))
        self._controls = self.R.uniform(-mag, mag, size=(n, 3, g, g, g))
        # one uniform per monomer, mapped through the cumulative probabilities: the stream of draws
        # is the same whatever collision_probs are
        u = self.R.uniform(0.0, 1.0, size=n)
        self._actions = np.minimum(np.searchsorted(np.cumsum(self.collision_probs), u, side="right"), 2)
        self._texture_seed = int(self.R.randint(0, 2**31 - 1))

    def __call__(
        self, img: NdarrayOrTensor, label: NdarrayOrTensor, randomize: bool = True
    ) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        """Synthesise a derived case.

        Args:
            img: image (C, H, W, D), float (normalised, e.g. [-1, 1] brain intensities); every
                channel is fused with one shared geometry.
            label: label (1, H, W, D) or (H, W, D) in the internal convention (0 background,
                1 NCR, 2 ED, 3 ET) with at least one tumour voxel.
            randomize: draw new random values first (``False`` replays the last draw).

        Returns:
            (image, label) in the types of the inputs (MetaTensor metadata kept); the inputs
            themselves when the transform is skipped (``prob``).
        """
        image_np = convert_data_type(img, np.ndarray)[0]
        label_np = convert_data_type(label, np.ndarray)[0]
        label_sp, lesion, tight = self._check(image_np, label_np)
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img, label
        dtype = image_np.dtype if np.issubdtype(image_np.dtype, np.floating) else np.float32
        out_img = image_np.astype(dtype, copy=True)
        out_lab = label_np.copy()
        self._synthesise(out_img, out_lab.reshape(label_sp.shape), label_sp, lesion, tight)
        out_img_t = convert_to_dst_type(out_img, img, dtype=out_img.dtype)[0]
        out_lab_t = convert_to_dst_type(out_lab, label, dtype=out_lab.dtype)[0]
        return out_img_t, out_lab_t

    def warm(self, img: NdarrayOrTensor, label: NdarrayOrTensor) -> DTSSCaseInvariants:
        """Compute (or fetch) the case's invariants and keep them in the cache, without drawing.

        A process that forks DataLoader workers can warm the cache with the real cases first: every
        worker then starts with the parent's entries (copy-on-write).

        Args:
            img: image (C, H, W, D) as given to ``__call__``.
            label: label (1, H, W, D) or (H, W, D) as given to ``__call__``.
        """
        image_np = convert_data_type(img, np.ndarray)[0]
        label_sp, lesion, tight = self._check(image_np, convert_data_type(label, np.ndarray)[0])
        dtype = image_np.dtype if np.issubdtype(image_np.dtype, np.floating) else np.float32
        image_np = image_np.astype(dtype, copy=False)
        return self._case(image_np, label_sp, lesion, tight)[1]

    @staticmethod
    def check_inputs(image: NdarrayOrTensor, label: NdarrayOrTensor) -> np.ndarray:
        """Validate shapes and label values (ValueError); return the label as numpy without its channel axis."""
        image = convert_data_type(image, np.ndarray)[0]
        label = convert_data_type(label, np.ndarray)[0]
        return DeformationTumorSynthesis._check(image, label)[0]

    @staticmethod
    def _check(image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[slice, ...]]:
        """:meth:`check_inputs` on numpy arrays; also returns the lesion mask and its bounding box.

        The label's values are checked on the bounding box of its non-zero voxels (everything outside
        is 0), which gives the same verdict and the same [min, max] as a pass over the whole volume.
        """
        if image.ndim != 4:
            raise ValueError(f"DTSS needs a channel-first 3D image (C, H, W, D), got shape {image.shape}")
        if label.shape == (1, *image.shape[1:]):
            label_sp = label[0]
        elif label.shape == image.shape[1:]:
            label_sp = label
        else:
            raise ValueError(
                f"DTSS needs a label of shape (1, H, W, D) or (H, W, D) on the image's grid "
                f"{tuple(image.shape[1:])}, got {label.shape}"
            )
        nonzero = label_sp != 0
        tight = tight_box(nonzero)
        if tight is None:
            raise ValueError("DTSS needs a tumour to deform: the label has no tumour voxels (all background)")
        values = label_sp[tight]
        lo, hi = float(values.min()), float(values.max())
        if values.size < label_sp.size:  # zeros outside the box
            lo, hi = min(lo, 0.0), max(hi, 0.0)
        fractional = np.issubdtype(values.dtype, np.floating) and not np.array_equal(values, np.round(values))
        if lo < 0 or hi > max(INTERNAL_LABELS) or fractional:
            raise ValueError(
                f"DTSS needs labels in the internal convention {INTERNAL_LABELS} (values in [{lo}, {hi}] found); "
                "map BraTS labels first with MapBratsLabelsd"
            )
        return label_sp, nonzero, tight

    def _case(
        self, image: np.ndarray, label_sp: np.ndarray, lesion_full: np.ndarray, tight: tuple[slice, ...]
    ) -> tuple[tuple[slice, ...], DTSSCaseInvariants, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The case's box, its invariants (from the cache when the label and image match), the box's
        image values (C, N) in the image's dtype and the channel minimum and maximum."""
        n_ch = image.shape[0]
        flat = image.reshape(n_ch, -1)
        channel_min, channel_max = flat.min(axis=1), flat.max(axis=1)
        box = grow_box(tight, self.patch_half + 1, lesion_full.shape)
        les = lesion_full[box]
        shape = les.shape
        crop = np.ascontiguousarray(image[(slice(None), *box)]).reshape(n_ch, -1)
        key = image_digest = b""
        if self.cache.enabled:
            key = label_digest(label_sp[box], label_sp.shape, box)
            image_digest = array_digest(crop, channel_min, channel_max)
            cached = self.cache.get(key, check=lambda entry: entry.image_digest == image_digest)
            if cached is not None:
                return box, cached, crop, les, channel_min, channel_max
        # eq. 1: where monomers are seeded
        area, _ = deformation_area(les, self.shell_fraction)
        # nearest real-lesion voxel of every voxel (class of new voxels) and distance to the lesion
        dist_out, nearest = ndimage.distance_transform_edt(~les, return_indices=True)
        nearest_flat = np.ravel_multi_index(tuple(nearest), shape).ravel()
        lab_flat = label_sp[box].astype(np.int64).ravel()
        les_flat = les.ravel()
        brain = (crop.reshape(n_ch, *shape) > channel_min[:, None, None, None]).any(axis=0) | les
        img_flat = crop.astype(np.float64)
        inv = DTSSCaseInvariants(
            image_digest=image_digest,
            area_idx=np.flatnonzero(area).astype(np.int32),
            near_class=lab_flat[nearest_flat].astype(np.uint8),
            class_voxels={c: np.flatnonzero(lab_flat == c).astype(np.int32) for c in TUMOUR_CLASSES},
            brain=brain,
            healthy=self._healthy_reference(img_flat, les_flat, brain.ravel(), dist_out.ravel(), channel_min),
            lesion_std=img_flat[:, les_flat].std(axis=1),
        )
        self.cache.put(key, inv)
        return box, inv, crop, les, channel_min, channel_max

    def _synthesise(
        self,
        out_img: np.ndarray,
        out_lab_sp: np.ndarray,
        label_sp: np.ndarray,
        lesion_full: np.ndarray,
        tight: tuple[slice, ...],
    ) -> None:
        """Write the derived case into ``out_img`` / ``out_lab_sp`` (copies of the inputs), in place.

        Works on the lesion's box; the per-case values come from :meth:`_case`, the draws are applied
        on the monomers' box. The arithmetic is the same as on the whole box: only voxels that can
        change are computed.
        """
        n_ch = out_img.shape[0]
        box, inv, crop, les, channel_min, channel_max = self._case(out_img, label_sp, lesion_full, tight)
        shape = les.shape
        les_flat = les.ravel()

        # the monomers' voxels (box coordinates), in drawing order; no random numbers are used here
        half, size = self.patch_half, 2 * self.patch_half + 1
        monomers = []
        for k in range(self._n_monomers):
            origin = np.unravel_index(inv.area_idx[int(self._seed_positions[k] * inv.area_idx.size)], shape)
            mono = monomer_mask(self._radii[k], _displacement_field(self._controls[k], size))
            # the patch around the seed, clipped to the box
            lo = [max(int(s) - half, 0) for s in origin]
            hi = [min(int(s) + half + 1, n) for s, n in zip(origin, shape, strict=True)]
            patch = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
            local = tuple(slice(a - s + half, b - s + half) for a, b, s in zip(lo, hi, origin, strict=True))
            mono = mono[local] & inv.brain[patch]
            centre = tuple(int(s) - a for s, a in zip(origin, lo, strict=True))
            mono[centre] = True
            parts, _ = ndimage.label(mono)
            mono = parts == parts[centre]
            monomers.append(tuple(c + a for c, a in zip(np.nonzero(mono), lo, strict=True)))

        # the prototype lives on the monomers' box grown by the blur's reach (zero elsewhere)
        margin = int(math.ceil(4.0 * self.sigma)) + 1 if self.sigma > 0 else 0
        sub = grow_box(
            tuple(
                slice(min(int(m[a].min()) for m in monomers), max(int(m[a].max()) for m in monomers) + 1)
                for a in range(3)
            ),
            margin,
            shape,
        )
        sub_shape = tuple(s.stop - s.start for s in sub)
        rng = np.random.default_rng(self._texture_seed)
        proto = np.zeros((n_ch, math.prod(sub_shape)))  # the tumour prototype t, flattened
        support = np.zeros(sub_shape, dtype=bool)
        for k, coords in enumerate(monomers):
            idx = np.ravel_multi_index(coords, shape)
            sidx = np.ravel_multi_index(tuple(c - s.start for c, s in zip(coords, sub, strict=True)), sub_shape)
            # texture: all channels of a random real-lesion voxel of the voxel's class
            classes = inv.near_class[idx]
            texture = np.empty((n_ch, idx.size))
            for c in np.unique(classes):
                sel = classes == c
                pool = inv.class_voxels[int(c)]
                texture[:, sel] = crop[:, pool[rng.integers(0, pool.size, size=int(sel.sum()))]]
            inside = les_flat[idx]
            proto[:, sidx[~inside]] = crop[:, idx[~inside]].astype(np.float64) - texture[:, ~inside]
            if self._actions[k] != RETAIN:
                signal = self.collision_strength * (texture[:, inside] - inv.healthy[:, None])
                proto[:, sidx[inside]] += -signal if self._actions[k] == OVERLAP else signal
            support[coords[0] - sub[0].start, coords[1] - sub[1].start, coords[2] - sub[2].start] = True

        les_sub = les[sub]
        grown_sub = support & ~les_sub
        pieces = [
            tuple(slice(int(c.min()) - s.start, int(c.max()) + 1 - s.start) for c, s in zip(coords, sub, strict=True))
            for coords in monomers
        ]
        deformation = self.intensity_scale * self._blur(
            proto.reshape(n_ch, *sub_shape), grown_sub, support & les_sub, pieces
        )
        deformation = deformation.reshape(n_ch, -1)

        # l of eqs. 4-5: the fused lesion region, in the box's flat order
        support_box = np.zeros(shape, dtype=bool)
        support_box[sub] = support
        region_3d = les | support_box
        rc = np.nonzero(region_3d)
        region = np.ravel_multi_index(rc, shape)
        in_sub = np.ones(region.size, dtype=bool)
        for a, s in enumerate(sub):
            in_sub &= (rc[a] >= s.start) & (rc[a] < s.stop)
        g_t = np.zeros((n_ch, region.size))
        sub_idx = np.ravel_multi_index(tuple(c[in_sub] - s.start for c, s in zip(rc, sub, strict=True)), sub_shape)
        g_t[:, in_sub] = deformation[:, sub_idx]
        noise = rng.standard_normal((n_ch, region.size)) * (self.noise_std * inv.lesion_std[:, None])
        fused = fuse_image(crop[:, region].astype(np.float64), np.ones((1, region.size)), g_t, noise)
        if self.clip:
            np.clip(fused, channel_min[:, None], channel_max[:, None], out=fused)
        img_c = out_img[(slice(None), *box)]  # a view: fused voxels are written through it
        img_c[:, region_3d] = fused.astype(out_img.dtype)
        # eq. 3: new voxels take the class of the nearest real-lesion voxel (all of them lie in the sub-box)
        lab_view = out_lab_sp[box][sub]
        lab_view[grown_sub] = inv.near_class.reshape(shape)[sub][grown_sub].astype(out_lab_sp.dtype)

    def _blur(
        self, proto: np.ndarray, grown: np.ndarray, collided: np.ndarray, pieces: Sequence[tuple[slice, ...]]
    ) -> np.ndarray:
        """Eq. 2, ``T = t (x) g(sigma)``, on the monomers' box (``t`` is zero outside the monomers).

        The box must reach ``ceil(4 sigma) + 1`` voxels beyond the monomers (or the array's edge), so
        the truncated Gaussian sees every non-zero voxel. With ``masked_blur`` the convolution is
        normalised within the grown voxels and within the collision voxels separately,
        ``T = g * (t m) / g * m`` on each part ``m``.

        The Gaussian is computed on the box of each group of monomers instead of the whole box: a
        voxel's value only depends on the voxels within the kernel's reach, so monomers farther apart than
        twice the reach (``pieces``, the monomers' bounding boxes, are grouped accordingly) do not see
        each other, and the values are those of the whole box.
        """
        if self.sigma == 0 or not (grown | collided).any():
            return proto

        def smooth(x: np.ndarray) -> np.ndarray:
            # spatial axes only: a (C, ...) array is C independent 3D Gaussians in one call
            sigmas = (0.0,) * (x.ndim - 3) + (self.sigma,) * 3
            return ndimage.gaussian_filter(x, sigmas, mode="constant", cval=0.0, truncate=4.0)

        reach = int(math.ceil(4.0 * self.sigma)) + 1
        out = np.zeros_like(proto)
        for group in _groups(pieces, reach, proto.shape[1:]):
            if not self.masked_blur:
                out[(slice(None), *group)] = smooth(proto[(slice(None), *group)])
                continue
            for part in (grown[group], collided[group]):
                tight = tight_box(part)
                if tight is None:
                    continue
                # each part on its own box: the Gaussian of a part's masked values is zero beyond its reach
                pbox = grow_box(tight, reach, part.shape)
                part = part[pbox]
                box = tuple(slice(g.start + p.start, g.start + p.stop) for g, p in zip(group, pbox, strict=True))
                weight = smooth(part.astype(proto.dtype))[part]
                view = out[(slice(None), *box)]
                view[:, part] = smooth(np.where(part, proto[(slice(None), *box)], 0.0))[:, part] / weight
        return out

    @staticmethod
    def _healthy_reference(
        img_flat: np.ndarray, les: np.ndarray, brain: np.ndarray, dist_out: np.ndarray, channel_min: np.ndarray
    ) -> np.ndarray:
        """Per channel, the median of brain voxels near but not touching the lesion (h)."""
        ref = np.empty(img_flat.shape[0])
        for c in range(img_flat.shape[0]):
            values = img_flat[c]
            for pool in ((dist_out >= 2) & (values > channel_min[c]), ~les & brain, ~les, les):
                if pool.any():
                    ref[c] = np.median(values[pool])
                    break
        return ref


class DeformationTumorSynthesisd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`DeformationTumorSynthesis`.

    Sets ``d[applied_key]`` to whether the sample was synthesised by this transform, and
    ``d[flag_key]`` to True when it was (left as it was, default False, otherwise), the flag the
    trainer's MAS weighting and CarveMix share to tell synthetic samples from real ones.

    Args:
        keys: keys this transform reads and writes; must contain ``image_key`` and ``label_key``.
        image_key: key of the image (C, H, W, D).
        label_key: key of the label (1, H, W, D) or (H, W, D), internal convention.
        prob: probability of synthesising a given sample.
        radius_range, iterations_range, sigma, noise_std, shell_fraction, elastic_magnitude,
        elastic_grid, collision_probs, collision_strength, intensity_scale, clip, masked_blur,
        cache_size: see :class:`DeformationTumorSynthesis`.
        flag_key: key set to True when the sample was synthesised (synthetic-sample flag).
        applied_key: key set to True / False: whether DTSS was applied to this sample.
        allow_missing_keys: return the sample unchanged (not applied) when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        image_key: str = "image",
        label_key: str = "label",
        prob: float = 1.0,
        radius_range: Sequence[float] = (3.0, 5.0),
        iterations_range: Sequence[int] = (3, 10),
        sigma: float = 1.0,
        noise_std: float = 0.1,
        shell_fraction: float = 0.2,
        elastic_magnitude: float = 1.0,
        elastic_grid: int = 4,
        collision_probs: Sequence[float] = (1 / 3, 1 / 3, 1 / 3),
        collision_strength: float = 0.5,
        intensity_scale: float = 1.0,
        clip: bool = True,
        masked_blur: bool = True,
        cache_size: int = 16,
        flag_key: str = SynthesisKeys.SYNTHETIC,
        applied_key: str = "dtss_applied",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        for role, key in (("image_key", image_key), ("label_key", label_key)):
            if key not in self.keys:
                raise ValueError(f"{role} {key!r} must be one of keys {self.keys}")
        self.image_key, self.label_key = image_key, label_key
        self.flag_key, self.applied_key = flag_key, applied_key
        self.dtss = DeformationTumorSynthesis(
            prob=1.0,
            radius_range=radius_range,
            iterations_range=iterations_range,
            sigma=sigma,
            noise_std=noise_std,
            shell_fraction=shell_fraction,
            elastic_magnitude=elastic_magnitude,
            elastic_grid=elastic_grid,
            collision_probs=collision_probs,
            collision_strength=collision_strength,
            intensity_scale=intensity_scale,
            clip=clip,
            masked_blur=masked_blur,
            cache_size=cache_size,
        )

    def warm(self, data: Mapping[Hashable, Any]) -> None:
        """Fill the cache with the invariants of ``data``'s case (see :meth:`DeformationTumorSynthesis.warm`)."""
        self.dtss.warm(data[self.image_key], data[self.label_key])

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> DeformationTumorSynthesisd:
        super().set_random_state(seed, state)
        self.dtss.set_random_state(state=self.R)
        return self

    def randomize(self, data: Any = None) -> None:
        """Draw whether to synthesise and, if so, the synthesis' random values."""
        super().randomize(None)
        if self._do_transform:
            self.dtss.randomize(None)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        d.setdefault(self.flag_key, False)
        d[self.applied_key] = False
        present = set(self.key_iterator(d))
        if self.image_key not in present or self.label_key not in present:
            return d
        if not self._do_transform:
            # same errors whether or not this sample is synthesised
            self.dtss.check_inputs(d[self.image_key], d[self.label_key])
            return d
        d[self.image_key], d[self.label_key] = self.dtss(d[self.image_key], d[self.label_key], randomize=False)
        d[self.flag_key] = True
        d[self.applied_key] = True
        return d
