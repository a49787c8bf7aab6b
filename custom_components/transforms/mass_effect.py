"""Mass effect: push the tissue around an inserted tumour outward, keeping the brain outline fixed.

Neither TF (TF-Aug paints a tumour onto a healthy scan) nor DTSS (a tumour grows into the tissue)
moves the surrounding anatomy, although a real glioma displaces it ("mass effect": compressed and
shifted ventricles, midline shift). This transform adds that displacement.

The model (decided here; both papers are silent on it):

1. **Direction and decay: an expanding incompressible source.** Every tumour voxel is a point
   source of volume; in an incompressible medium a point source displaces tissue radially by
   ``r_hat / r^2``. The superposition over the tumour, ``v(x) = sum_y t(y) (x - y) / |x - y|^3``
   (a convolution, computed with an FFT), is smooth, points away from the tumour everywhere outside
   it, decays like the inverse square of the distance and is a radial expansion inside the tumour.
2. **Compact support.** ``v`` is multiplied by a smooth window that falls from 1 at the tumour border
   to 0 far enough inside ``falloff_mm`` that voxels farther than ``falloff_mm`` from the tumour are
   exactly unchanged (the margin covers the coarse grid and the integration), and by a taper that is
   0 within one grid cell and a half of the brain boundary and rises to 1 over ``boundary_mm`` inside
   it, so the skull and the brain outline stay where they are (the skull resists; the brain yields
   inside it).
3. **Magnitude.** The field is scaled so that its largest displacement is ``max_displacement_mm``
   (reached at the tumour border, where a uniform source's field peaks).
4. **Diffeomorphism.** ``v`` is used as a stationary velocity field: the backward map (where each
   output voxel takes its intensity from) is ``exp(-v)``, integrated by scaling and squaring
   (MONAI ``DVF2DDF``). The result is a smooth invertible map with a positive Jacobian
   determinant.

Speed: the field is computed on a coarse grid (``grid_mm``, 4 mm by default) over the region the
field can reach, upsampled trilinearly, and the image is resampled only inside the box where the
displacement is non-zero, so a 240 x 240 x 155 case takes well under a second on one thread.

Default magnitude: ``max_displacement_mm = 5``. Clinically, a midline shift of 5 mm or more is the
usual threshold of a significant mass effect of an intracranial mass (review: Liao et al., "A Review
of Midline Shift", Int J Biomed Imaging 2018, doi:10.1155/2018/4303161), and most glioblastomas
displace the lateral ventricles by a few millimetres (Steed et al., "Quantification of glioblastoma
mass effect by lateral ventricle displacement", Sci Rep 8:2827, 2018). Tissue next to the tumour moves
more than the distant midline, so a peak of 5 mm at the tumour border gives midline and ventricle
shifts of a few millimetres, inside that range. TF's own hinge margin (its eq. 2) tolerates "limited
deformation due to tumor mass effect" for the same reason.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.networks.blocks import DVF2DDF
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_dst_type, ensure_tuple_rep
from scipy import ndimage, signal

from custom_components.data.brain_mask import infer_brain_mask
from custom_components.data.datalist import source_name

MODES: tuple[str, ...] = ("bilinear", "nearest")
NEGLIGIBLE_VOXELS = 1e-3  # coarse-grid displacements below this are set to exactly 0
SUPPORT_CELLS = 1.5 * 3**0.5  # margin, in coarse cells, between the window's end and falloff_mm


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _extent(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last index per axis of a non-empty boolean mask."""
    first, last = [], []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        first.append(hit[0])
        last.append(hit[-1])
    return np.array(first), np.array(last)


def _as_3d(x: NdarrayOrTensor, name: str) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ValueError(f"{name} must have one channel, got shape {arr.shape}")
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"{name} must be (1, X, Y, Z) or (X, Y, Z), got shape {arr.shape}")
    return arr


def _spacing_of(x: Any, spacing: Sequence[float] | None) -> tuple[float, float, float]:
    if spacing is not None:
        out = tuple(float(s) for s in ensure_tuple_rep(spacing, 3))
    elif hasattr(x, "pixdim"):
        out = tuple(float(s) for s in np.asarray(x.pixdim, dtype=np.float64)[:3])
    else:
        out = (1.0, 1.0, 1.0)
    if any(s <= 0 for s in out):
        raise ValueError(f"voxel spacing must be positive, got {out}")
    return out


@dataclass
class MassEffectField:
    """A backward displacement field restricted to the box where it is non-zero.

    Attributes:
        shape: spatial shape of the full volume.
        box: slices of the box (voxels outside it are not displaced).
        ddf: ``(3, *box_shape)`` float32 displacement in voxels: output voxel ``x`` takes the input
            at ``x + ddf(x)``.
        magnitude_mm: the requested largest displacement.
    """

    shape: tuple[int, int, int]
    box: tuple[slice, slice, slice] | None
    ddf: np.ndarray | None
    magnitude_mm: float
    _grid: tuple[torch.Tensor, np.ndarray] | None = dataclass_field(default=None, repr=False, compare=False)

    def sampling_grid(self) -> tuple[torch.Tensor, np.ndarray]:
        """``grid_sample`` grid of the box ``(1, *box_shape, 3)`` and the mask of moved voxels (cached)."""
        if self._grid is None:
            dims = self.ddf.shape[1:]
            ddf = torch.from_numpy(self.ddf)
            # grid_sample wants (x, y, z) = (last, middle, first) axis, normalised to [-1, 1] (align_corners)
            axes = [torch.arange(d, dtype=torch.float32) for d in dims]
            norm = torch.empty((1, *dims, 3), dtype=torch.float32)
            for k, i in enumerate((2, 1, 0)):
                pos = ddf[i] + axes[i].view([-1 if j == i else 1 for j in range(3)])
                norm[0, ..., k] = pos * (2.0 / max(dims[i] - 1, 1)) - 1.0
            self._grid = (norm, (ddf != 0).any(0).numpy())
        return self._grid

    @property
    def is_identity(self) -> bool:
        return self.box is None

    def full(self) -> np.ndarray:
        """The displacement on the whole grid ``(3, *shape)`` (zeros outside the box)."""
        out = np.zeros((3, *self.shape), dtype=np.float32)
        if self.box is not None:
            out[(slice(None), *self.box)] = self.ddf
        return out


def mass_effect_field(
    tumour: np.ndarray,
    brain: np.ndarray,
    spacing: Sequence[float],
    max_displacement_mm: float,
    falloff_mm: float = 40.0,
    boundary_mm: float = 15.0,
    grid_mm: float = 4.0,
    steps: int = 7,
) -> MassEffectField:
    """Backward displacement field of the mass effect of ``tumour`` inside ``brain``.

    Args:
        tumour: boolean 3D mask of the tumour being inserted.
        brain: boolean 3D brain mask (same grid).
        spacing: voxel size in mm per axis.
        max_displacement_mm: largest tissue displacement (at the tumour border).
        falloff_mm: distance from the tumour border beyond which nothing moves.
        boundary_mm: width of the taper inside the brain boundary (displacement 0 at the boundary).
        grid_mm: spacing of the coarse grid the field is computed on.
        steps: scaling-and-squaring steps.
    """
    shape = tuple(int(s) for s in tumour.shape)
    tumour = tumour & brain
    if max_displacement_mm <= 0 or not tumour.any():
        return MassEffectField(shape, None, None, float(max_displacement_mm))
    spacing = np.asarray(spacing, dtype=np.float64)
    f = np.maximum(1, np.rint(grid_mm / spacing)).astype(int)  # fine voxels per coarse cell
    cs = spacing * f  # coarse spacing (mm)
    # coarse nodes sit on fine voxels 0, f, 2f, ...; the grid covers the region the field reaches
    reach = falloff_mm + 2.0 * cs.max()
    first, last = _extent(tumour)
    lo_f = np.maximum(0, first - np.ceil(reach / spacing).astype(int))
    hi_f = np.minimum(np.array(shape) - 1, last + np.ceil(reach / spacing).astype(int))
    lo = lo_f // f
    hi = -(-hi_f // f)  # ceil
    n = hi - lo + 1
    # occupancy of each coarse node: mean of the fine masks over the (2 * (f // 2) + 1)^3 window around it
    pads = [(f[a] // 2, max(0, (hi[a] * f[a] + f[a] // 2) - (shape[a] - 1))) for a in range(3)]
    occ = []
    for mask in (tumour, brain):
        crop = mask[tuple(slice(max(0, lo[a] * f[a] - f[a] // 2), hi[a] * f[a] + f[a] // 2 + 1) for a in range(3))]
        before = [f[a] // 2 - (lo[a] * f[a] - max(0, lo[a] * f[a] - f[a] // 2)) for a in range(3)]
        crop = np.pad(crop, [(before[a], pads[a][1]) for a in range(3)])
        t = torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))[None, None]
        pooled = F.avg_pool3d(t, kernel_size=tuple(2 * (f // 2) + 1), stride=tuple(f))[0, 0].numpy()
        occ.append(pooled[: n[0], : n[1], : n[2]])
    t_occ, b_occ = occ
    # 1. superposed point sources r_hat / r^2 (physical offsets), by FFT convolution
    offs = [np.arange(-(k - 1), k) * c for k, c in zip(n, cs, strict=True)]
    grid = np.meshgrid(*offs, indexing="ij")
    r3 = np.sqrt(grid[0] ** 2 + grid[1] ** 2 + grid[2] ** 2) ** 3
    r3[tuple(k - 1 for k in n)] = np.inf  # no self term
    vel = np.stack([signal.fftconvolve(t_occ, g / r3, mode="same") for g in grid])
    # 2. compact support: window on the distance to the tumour, taper at the brain boundary
    core = t_occ >= 0.5 if (t_occ >= 0.5).any() else t_occ > 0
    d_tumour = ndimage.distance_transform_edt(~core, sampling=cs)
    inside = b_occ >= 0.5
    # distance to the brain boundary, with everything beyond the coarse box counted as brain
    d_brain = ndimage.distance_transform_edt(np.pad(inside, 1, mode="edge"), sampling=cs)[1:-1, 1:-1, 1:-1]
    # the window ends early enough that no voxel farther than falloff_mm from the tumour moves: trilinear
    # upsampling reaches one cell (sqrt(3) cs) beyond a node, a core node may sit half a cell inside the
    # tumour's edge, and scaling and squaring spreads the support by at most the displacement
    support = falloff_mm - SUPPORT_CELLS * cs.max() - max_displacement_mm
    if support <= 0:
        raise ValueError(
            f"falloff_mm={falloff_mm} leaves no room for the field: it must exceed "
            f"{SUPPORT_CELLS} * grid_mm ({SUPPORT_CELLS * cs.max():.1f} mm) + max_displacement_mm ({max_displacement_mm})"
        )
    weight = _smoothstep(1.0 - d_tumour / support) * _smoothstep((d_brain - 1.5 * cs.max()) / boundary_mm)
    vel *= weight[None]
    peak = float(np.sqrt((vel**2).sum(0)).max())
    if peak <= 0:  # the tumour lies in the boundary taper: nothing can move
        return MassEffectField(shape, None, None, float(max_displacement_mm))
    # 3. magnitude; velocity in coarse-voxel units
    vel *= max_displacement_mm / peak / cs[:, None, None, None]
    # 4. backward map exp(-v) by scaling and squaring
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Using PyTorch native grid_sample", category=UserWarning)
        ddf = DVF2DDF(num_steps=steps, mode="bilinear", padding_mode="zeros")(torch.from_numpy(-vel).float()[None])
    ddf = ddf[0] * torch.as_tensor(f, dtype=torch.float32)[:, None, None, None]  # fine-voxel units
    # the bilinear compositions leave float dust (~1e-8 voxel) beyond the support: clear it on the coarse
    # grid (the fine field stays continuous) so that untouched voxels stay bit for bit
    ddf[:, ddf.norm(dim=0) < NEGLIGIBLE_VOXELS] = 0.0
    nz = np.argwhere(ddf.abs().amax(0).numpy() > 0)
    if nz.size == 0:
        return MassEffectField(shape, None, None, float(max_displacement_mm))
    a = np.maximum(nz.min(0) - 1, 0)
    b = np.minimum(nz.max(0) + 1, n - 1)
    sub = ddf[:, a[0] : b[0] + 1, a[1] : b[1] + 1, a[2] : b[2] + 1]
    size = tuple(int((b[i] - a[i]) * f[i] + 1) for i in range(3))
    fine = F.interpolate(sub[None], size=size, mode="trilinear", align_corners=True)[0]
    start = (lo + a) * f
    stop = np.minimum(start + np.array(size), np.array(shape))
    fine = fine[:, : stop[0] - start[0], : stop[1] - start[1], : stop[2] - start[2]]
    box = tuple(slice(int(s), int(e)) for s, e in zip(start, stop, strict=True))
    return MassEffectField(shape, box, np.ascontiguousarray(fine.numpy()), float(max_displacement_mm))


def warp(img: np.ndarray, field: MassEffectField, mode: str = "bilinear") -> np.ndarray:
    """Resample a channel-first volume ``(C, *shape)`` with a :class:`MassEffectField`.

    Voxels where the displacement is exactly zero (all of them outside the field's box) keep their
    values bit for bit.

    Args:
        img: array ``(C, X, Y, Z)``.
        field: the field.
        mode: ``"bilinear"`` (trilinear, images) or ``"nearest"`` (labels and masks).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    out = np.array(img, copy=True)
    if field.is_identity:
        return out
    if tuple(img.shape[1:]) != field.shape:
        raise ValueError(f"image shape {tuple(img.shape[1:])} does not match the field's {field.shape}")
    crop = out[(slice(None), *field.box)]
    norm, moved = field.sampling_grid()
    src = torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))[None]
    warped = F.grid_sample(src, norm, mode=mode, padding_mode="border", align_corners=True)[0].numpy()
    crop[:, moved] = warped[:, moved].astype(crop.dtype)
    return out


class MassEffect(RandomizableTransform):
    """Displace the tissue around an inserted tumour outward; the brain outline stays put.

    See the module docstring for the model. The displacement's peak is ``max_displacement_mm``, or a
    uniform draw in ``[min_displacement_mm, max_displacement_mm]`` when a minimum is given (the only
    random part, together with ``prob``).

    Args:
        max_displacement_mm: peak tissue displacement in mm (default 5, see the module docstring); 0
            leaves every input unchanged, voxel for voxel.
        min_displacement_mm: draw the peak uniformly from [min, max] per call (None: always max).
        falloff_mm: distance from the tumour border beyond which no voxel moves.
        boundary_mm: the displacement rises from 0 at the brain boundary over this depth.
        grid_mm: spacing of the coarse grid the field is computed on.
        spacing: voxel size in mm (default: the image's ``pixdim`` when it is a MetaTensor, else 1).
        prob: probability of applying the transform.
    """

    def __init__(
        self,
        max_displacement_mm: float = 5.0,
        min_displacement_mm: float | None = None,
        falloff_mm: float = 40.0,
        boundary_mm: float = 15.0,
        grid_mm: float = 4.0,
        spacing: Sequence[float] | float | None = None,
        prob: float = 1.0,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        if max_displacement_mm < 0:
            raise ValueError(f"max_displacement_mm must be >= 0, got {max_displacement_mm}")
        if min_displacement_mm is not None and not 0 <= min_displacement_mm <= max_displacement_mm:
            raise ValueError(
                f"min_displacement_mm must be in [0, max_displacement_mm={max_displacement_mm}], got {min_displacement_mm}"
            )
        for name, value in (("falloff_mm", falloff_mm), ("boundary_mm", boundary_mm), ("grid_mm", grid_mm)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if falloff_mm <= SUPPORT_CELLS * grid_mm + max_displacement_mm:
            raise ValueError(
                f"falloff_mm={falloff_mm} must exceed {SUPPORT_CELLS:.2f} * grid_mm + max_displacement_mm "
                f"({SUPPORT_CELLS * grid_mm + max_displacement_mm:.1f} mm): the field needs room to fall to 0"
            )
        self.max_displacement_mm = float(max_displacement_mm)
        self.min_displacement_mm = None if min_displacement_mm is None else float(min_displacement_mm)
        self.falloff_mm = float(falloff_mm)
        self.boundary_mm = float(boundary_mm)
        self.grid_mm = float(grid_mm)
        self.spacing = spacing
        self._magnitude = self.max_displacement_mm

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        lo = self.max_displacement_mm if self.min_displacement_mm is None else self.min_displacement_mm
        self._magnitude = float(self.R.uniform(lo, self.max_displacement_mm))

    def field(
        self,
        img: NdarrayOrTensor,
        tumour: NdarrayOrTensor,
        brain_mask: NdarrayOrTensor | None = None,
    ) -> MassEffectField:
        """The field of the current draw (call ``randomize`` first to draw a new one).

        Args:
            img: image ``(C, X, Y, Z)`` (without a brain mask, the brain is inferred from its first channel
                with ``custom_components.data.brain_mask.infer_brain_mask``; its ``pixdim`` gives the spacing).
            tumour: label of the tumour being inserted ``(1, X, Y, Z)``; every voxel > 0 is tumour.
            brain_mask: brain mask ``(1, X, Y, Z)``.
        """
        arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        if arr.ndim != 4:
            raise ValueError(f"image must be channel-first (C, X, Y, Z), got shape {arr.shape}")
        shape = tuple(arr.shape[1:])
        tum = _as_3d(tumour, "tumour label") > 0
        if brain_mask is None:
            brain = infer_brain_mask(arr[0].astype(np.float32), name=source_name(img))
        else:
            brain = _as_3d(brain_mask, "brain mask") > 0
        for name, m in (("tumour label", tum), ("brain mask", brain)):
            if m.shape != shape:
                raise ValueError(f"{name} shape {m.shape} does not match the image's {shape}")
        magnitude = self._magnitude if self._do_transform else 0.0
        return mass_effect_field(
            tum,
            brain,
            _spacing_of(img, self.spacing),
            magnitude,
            falloff_mm=self.falloff_mm,
            boundary_mm=self.boundary_mm,
            grid_mm=self.grid_mm,
        )

    @staticmethod
    def apply(img: NdarrayOrTensor, field: MassEffectField, mode: str = "bilinear") -> NdarrayOrTensor:
        """Warp a channel-first image or label with ``field``, returning the input's type."""
        arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        out, *_ = convert_to_dst_type(warp(arr, field, mode), img)
        return out

    def __call__(
        self,
        img: NdarrayOrTensor,
        tumour: NdarrayOrTensor,
        brain_mask: NdarrayOrTensor | None = None,
        mode: str = "bilinear",
        randomize: bool = True,
    ) -> NdarrayOrTensor:
        """Args:
        img: channel-first image ``(C, X, Y, Z)`` (numpy or torch).
        tumour: label of the tumour being inserted ``(1, X, Y, Z)``.
        brain_mask: brain mask ``(1, X, Y, Z)`` (default: inferred from the image's first channel).
        mode: ``"bilinear"`` for images, ``"nearest"`` for labels.
        randomize: draw a new magnitude first.
        """
        if randomize:
            self.randomize()
        return self.apply(img, self.field(img, tumour, brain_mask), mode)


class MassEffectd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`MassEffect`: one field, applied to every key.

    Args:
        keys: keys to displace (images, existing labels, masks).
        tumour_key: key of the label of the tumour being inserted (defines the field; not displaced
            unless it is also in ``keys``).
        brain_mask_key: key of the brain mask (None: inferred from the first key's first channel).
        mode: ``"bilinear"`` or ``"nearest"`` per key (one value for all, or one per key).
        max_displacement_mm, min_displacement_mm, falloff_mm, boundary_mm, grid_mm, spacing, prob:
            see :class:`MassEffect`.
        allow_missing_keys: skip keys that are absent.
    """

    backend = MassEffect.backend

    def __init__(
        self,
        keys: KeysCollection,
        tumour_key: str = "label",
        brain_mask_key: str | None = "brain_mask",
        mode: Sequence[str] | str = "bilinear",
        max_displacement_mm: float = 5.0,
        min_displacement_mm: float | None = None,
        falloff_mm: float = 40.0,
        boundary_mm: float = 15.0,
        grid_mm: float = 4.0,
        spacing: Sequence[float] | float | None = None,
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.tumour_key = tumour_key
        self.brain_mask_key = brain_mask_key
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        for m in self.mode:
            if m not in MODES:
                raise ValueError(f"mode must be one of {MODES}, got {m!r}")
        self.mass = MassEffect(
            max_displacement_mm, min_displacement_mm, falloff_mm, boundary_mm, grid_mm, spacing, prob=1.0
        )

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> MassEffectd:
        super().set_random_state(seed, state)
        self.mass.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self.mass.randomize()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        first = self.first_key(d)
        if first == ():
            return d
        brain = d[self.brain_mask_key] if self.brain_mask_key is not None else None
        field = self.mass.field(d[first], d[self.tumour_key], brain)
        for key, mode in self.key_iterator(d, self.mode):
            d[key] = self.mass.apply(d[key], field, mode)
        return d
