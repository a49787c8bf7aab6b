"""The registry of synthesis methods: one :class:`SynthesisMethod` per method, read by ``fabricate``, the offline
writer, the pipeline's arms (:mod:`custom_components.pipeline.arms`), the report and the CLI.

A method is one of two kinds (``source``):

* ``real``: derives new tumours from real cases with dtss_mas_seg's training transforms (DTSS, CarveMix), online
  in training (``online_switch``) or offline (:mod:`custom_components.synthesis.offline`, the same transforms);
* ``healthy``: paints tumours on healthy scans through the pipeline's model stages (``parts``: TF-Aug, then TF-GAN
  or Pix2Pix) and trains with the datalist of their cases (``cases``).

Mass effect is an option of a method (``mass_effect_key``: the bundle key that turns it on), not a method.

Adding a method: one module with its transform or its stages, and one :class:`SynthesisMethod` line in
:data:`METHODS` (docs/architecture.md, "Adding a method or an arm"). This module imports nothing heavy, so the
CLI reads it for its help text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# the most derived cases per source scan (a real case for DTSS, a healthy scan for the TF methods): every derived
# case of one source shares its anatomy, and beyond this many draws a dataset mostly repeats its sources
MAX_PER_SOURCE = 50
# TF-Aug's case ids have five digits
MAX_CASE_ID = 99999


def _per_real(n_real: int, n_healthy: int) -> tuple[int, str]:
    return MAX_PER_SOURCE * n_real, f"at most {MAX_PER_SOURCE} cases per real training case, {n_real} cases"


def _ordered_pairs(n_real: int, n_healthy: int) -> tuple[int, str]:
    return (
        n_real * (n_real - 1),
        f"{n_real} real training cases give {n_real} x {n_real - 1} ordered (target, source) pairs",
    )


def _per_healthy(n_real: int, n_healthy: int) -> tuple[int, str]:
    return (
        min(MAX_PER_SOURCE * n_healthy, MAX_CASE_ID),
        f"at most {MAX_PER_SOURCE} cases per healthy scan (TF-Aug pairs case i with scan i mod n), {n_healthy} scans",
    )


@dataclass(frozen=True)
class SynthesisMethod:
    """One synthesis method and everything the product needs to know of it.

    Args:
        name: the name on the command line, in arms and in provenance (``dtss``).
        title: the name in reports (``DTSS``).
        description: one line for ``--help`` and the report.
        source: ``real`` (new tumours derived from real cases) or ``healthy`` (tumours painted on healthy scans).
        capacity: ``(n_real, n_healthy) -> (most cases, why in words)``.
        online_switch: dtss_mas_seg's training key that draws the method online (``real`` methods).
        config_id: the method's transform in dtss_mas_seg's ``train.yaml`` (its settings, ``real`` methods).
        transform_id: the transform training applies, with its options (default ``config_id``).
        needs_source: each case carves from a second real case (CarveMix's lesion source).
        parts: the pipeline's model stages the method's cases come from (``healthy`` methods).
        cases: which of the pipeline's datalists holds its cases (``coarse``, ``refined``, ``pix2pix``).
        mass_effect_key: the bundle key of its mass-effect option (dtss_mas_seg's for ``real`` methods, tf_aug's
            inference for ``healthy`` ones); None: no such option.
        refines: the method whose cases this one refines, image and label (TF refines TF-Aug's): the report says
            whether the refinement made them measurably more real; None: not a refinement.
    """

    name: str
    title: str
    description: str
    source: str
    capacity: Callable[[int, int], tuple[int, str]]
    online_switch: str | None = None
    config_id: str | None = None
    transform_id: str | None = None
    needs_source: bool = False
    parts: tuple[str, ...] = ()
    cases: str | None = None
    mass_effect_key: str | None = None
    refines: str | None = None

    @property
    def derived(self) -> bool:
        """Whether the method derives its cases from real cases with dtss_mas_seg's transforms."""
        return self.source == "real"

    def max_cases(self, n_real: int, n_healthy: int = 0) -> int:
        """The most cases the method can make from ``n_real`` real training cases and ``n_healthy`` healthy scans."""
        return self.capacity(n_real, n_healthy)[0]

    def limit_reason(self, n_real: int, n_healthy: int = 0) -> str:
        """Why :meth:`max_cases` is what it is, in words (for the error message)."""
        return self.capacity(n_real, n_healthy)[1]


METHODS: dict[str, SynthesisMethod] = {
    m.name: m
    for m in (
        SynthesisMethod(
            "dtss",
            "DTSS",
            "DSMA's deformation-driven tumour synthesis: a real tumour grown, deformed and fused (online in training)",
            "real",
            _per_real,
            online_switch="use_dtss",
            config_id="train#dtss",
            transform_id="train#dtss_online",
            mass_effect_key="dtss_mass_effect",
        ),
        SynthesisMethod(
            "carvemix",
            "CarveMix",
            "the lesion of one real case carved into another (online in training)",
            "real",
            _ordered_pairs,
            online_switch="use_carvemix",
            config_id="train#carvemix",
            needs_source=True,
        ),
        SynthesisMethod(
            "tf_aug",
            "TF-Aug",
            "Tumor Fabrication's coarse tumours on healthy scans (mask augmentation, blur, learnt intensities)",
            "healthy",
            _per_healthy,
            parts=("tf_aug",),
            cases="coarse",
            mass_effect_key="mass_effect",
        ),
        SynthesisMethod(
            "tf",
            "TF",
            "TF-Aug's cases refined by TF-GAN (Tumor Fabrication)",
            "healthy",
            _per_healthy,
            parts=("tf_aug", "tf_gan"),
            cases="refined",
            refines="tf_aug",
        ),
        SynthesisMethod(
            "pix2pix",
            "Pix2Pix",
            "images generated from TF-Aug's masks by a label-to-image Pix2Pix (the TF paper's baseline)",
            "healthy",
            _per_healthy,
            parts=("tf_aug", "pix2pix"),
            cases="pix2pix",
        ),
    )
}


def get_method(name: str) -> SynthesisMethod:
    """The registered method ``name``; a ValueError listing the registered ones otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown synthesis method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


__all__ = ["MAX_PER_SOURCE", "METHODS", "SynthesisMethod", "get_method"]
