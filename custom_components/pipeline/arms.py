"""The registry of comparison arms: one :class:`Arm` per arm, built on the synthesis methods' registry
(:mod:`custom_components.synthesis.methods`). The pipeline's config validation, stages, report and CLI read it.

An arm declares its data and what it needs; :meth:`Arm.overrides` turns that into dtss_mas_seg settings:

* ``role``: ``baseline`` (real data only, the reference), ``control`` (real data only with a second, independently
  augmented real crop where a synthetic arm has a companion: the synthetic arms' samples per step) or ``synthetic``;
* ``method``: the synthesis method of a synthetic arm, drawn online in training (a method that derives from real
  cases: its ``online_switch``) or read from the pipeline's datalist of its cases (a method on healthy scans);
* ``mas``: weight the synthetic samples by MAS; ``mass_effect``: the method's mass-effect option;
* ``synthetic_per_real``: the synthetic-volume ablation's cases per real case (arms ``tf_syn<r>``, made by
  :func:`get_arm`).

Adding an arm is one line in :data:`ARMS` (docs/architecture.md, "Adding a method or an arm").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from custom_components.synthesis.methods import METHODS, SynthesisMethod, get_method

ROLES: tuple[str, ...] = ("baseline", "control", "synthetic")
# the synthetic-volume ablation's arm names: this prefix and the number of TF cases per real case
ABLATION_PREFIX = "tf_syn"


class ArmData(Protocol):
    """What :meth:`Arm.overrides` needs of the experiment (:class:`custom_components.pipeline.experiment.Experiment`)."""

    cfg: dict[str, Any]

    @property
    def base_ratio(self) -> float: ...

    @property
    def control_is_baseline(self) -> bool: ...

    def method_datalist(self, method: SynthesisMethod, seed: int, mass_effect: bool = False) -> Any: ...

    def subset_datalist(self, ratio: float, kind: str, seed: int) -> Any: ...


@dataclass(frozen=True)
class Arm:
    """One comparison arm (see the module docstring).

    Args:
        name: the arm's name in pipeline configs, stages and reports.
        description: one line for the report.
        role: ``baseline``, ``control`` or ``synthetic``.
        method: the synthesis method's registry name (synthetic arms).
        mas: weight the synthetic samples by MAS.
        mass_effect: the method's mass-effect option on.
        synthetic_per_real: synthetic cases per real case (the ablation; default the experiment's base ratio).
    """

    name: str
    description: str
    role: str = "synthetic"
    method: str | None = None
    mas: bool = False
    mass_effect: bool = False
    synthetic_per_real: float | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"arm {self.name}: role must be one of {ROLES}, got {self.role!r}")
        if (self.role == "synthetic") != (self.method is not None):
            raise ValueError(f"arm {self.name}: a synthetic arm names its method, a real-data arm none")
        if self.mass_effect and self.spec is not None and self.spec.mass_effect_key is None:
            raise ValueError(f"arm {self.name}: {self.spec.title} has no mass-effect option")

    @property
    def spec(self) -> SynthesisMethod | None:
        """The arm's synthesis method (None for the real-data arms)."""
        return None if self.method is None else get_method(self.method)

    @property
    def online(self) -> bool:
        """Whether the arm's synthetic cases are drawn online from each real case (always companion sampling)."""
        return self.spec is not None and self.spec.derived

    @property
    def parts(self) -> set[str]:
        """The pipeline's model parts the arm needs (``tf_aug``, ``tf_gan``, ``pix2pix``, ``tf_aug_mass``)."""
        if self.spec is None or self.online:
            return set()
        return set(self.spec.parts) | ({"tf_aug_mass"} if self.mass_effect else set())

    def overrides(self, exp: ArmData, seed: int) -> dict[str, Any]:
        """dtss_mas_seg settings that give the arm its data for seed ``seed`` (the protocol is the experiment's)."""
        # every online method's switch off unless this arm turns its own on
        out: dict[str, Any] = {str(m.online_switch): False for m in METHODS.values() if m.online_switch}
        out |= {"use_mas": False, "synthetic_datalists": []}
        # online arms and real-only arms add no synthetic datalist: companion sampling (see control_is_baseline)
        out |= {"real_per_case": 0, "synthetic_sampling": "companion"}
        spec = self.spec
        if self.role == "control" and not exp.control_is_baseline:
            # a second, independently augmented real crop where a synthetic arm has a companion (base_ratio per
            # index; DTSS and CarveMix give 1 per index, base_ratio's default)
            return {**out, "real_per_case": exp.base_ratio}
        if spec is None:
            return out
        if spec.derived:
            out[str(spec.online_switch)] = True
            if self.mas:
                out["use_mas"] = True
            if self.mass_effect:
                out[str(spec.mass_effect_key)] = True
            return out
        if self.synthetic_per_real is None:
            datalist, ratio = exp.method_datalist(spec, seed, self.mass_effect), exp.base_ratio
        else:
            # r synthetic cases per real case: the subset has round(r n_real) cases; companion sampling uses
            # floor(r n_real) of them per epoch beside the n_real real samples, union sampling draws the batches
            # from the n_real + round(r n_real) cases (the TF paper's ablation)
            ratio = self.synthetic_per_real
            datalist = exp.subset_datalist(ratio, str(spec.cases), seed)
        out |= {
            "synthetic_per_case": ratio,
            "synthetic_sampling": exp.cfg["synthetic_sampling"],
            "synthetic_datalists": [str(datalist)],
        }
        if self.mas:
            out |= {"use_mas": True, "synthetic_mas": True}
        return out


ARMS: dict[str, Arm] = {
    a.name: a
    for a in (
        Arm("baseline", "real data only", role="baseline"),
        # the control of the synthetic arms' compute (docs: the pipeline section of the README and experiment.py)
        Arm(
            "real_matched",
            "real data only, a second augmented real crop per index: the synthetic arms' samples per step",
            role="control",
        ),
        Arm("carvemix", "+ CarveMix (online)", method="carvemix"),
        Arm("pix2pix", "+ Pix2Pix synthetic cases", method="pix2pix"),
        Arm("tf_aug", "+ TF-Aug coarse synthetic cases", method="tf_aug"),
        Arm("tf", "+ TF (TF-Aug + TF-GAN) synthetic cases", method="tf"),
        Arm("dtss", "+ DTSS (online)", method="dtss"),
        Arm("dtss_mas", "+ DTSS + MAS", method="dtss", mas=True),
        Arm("tf_mas", "+ TF synthetic cases weighted by MAS", method="tf", mas=True),
        # beyond both papers: the same methods with mass effect (custom_components.transforms.MassEffectd)
        Arm(
            "tf_aug+mass",
            "+ TF-Aug coarse cases with mass effect (healthy tissue displaced before painting)",
            method="tf_aug",
            mass_effect=True,
        ),
        Arm(
            "dtss+mass",
            "+ DTSS (online) with mass effect (growth pushes the surroundings)",
            method="dtss",
            mass_effect=True,
        ),
        Arm("dtss_mas+mass", "+ DTSS with mass effect + MAS", method="dtss", mas=True, mass_effect=True),
    )
}


# the reference arm and the compute-matched control (the report compares every synthetic arm with both)
BASELINE: str = next(name for name, a in ARMS.items() if a.role == "baseline")
CONTROL: str = next(name for name, a in ARMS.items() if a.role == "control")


def input_arm(name: str, arms: Sequence[str]) -> str | None:
    """The arm among ``arms`` that trains with the cases ``name``'s method refines and is otherwise the same arm
    (``tf_aug`` for ``tf``: TF-GAN's input; the same MAS, mass-effect and ablation settings), or None (a method that
    refines nothing, no such arm in ``arms``, or a name outside the registry). The report compares the two, paired
    by seed: what the refinement adds to the training data."""
    arm = _registered(name)
    spec = None if arm is None else arm.spec
    if arm is None or spec is None or spec.refines is None:
        return None
    want = (spec.refines, arm.mas, arm.mass_effect, arm.synthetic_per_real)
    for other in arms:
        o = _registered(other)
        if o is not None and (o.method, o.mas, o.mass_effect, o.synthetic_per_real) == want:
            return other
    return None


def _registered(name: str) -> Arm | None:
    try:
        return get_arm(name)
    except ValueError:
        return None


def ablation_arm(ratio: float) -> Arm:
    """The synthetic-volume ablation's arm: TF with ``ratio`` synthetic cases per real case (``tf_syn<ratio>``)."""
    r = float(ratio)
    if not math.isfinite(r) or r <= 0:
        raise ValueError(f"synthetic cases per real case must be > 0, got {ratio!r}")
    return Arm(
        f"{ABLATION_PREFIX}{r:g}",
        f"+ TF refined cases, {r:g} per real case (synthetic-volume ablation)",
        method="tf",
        synthetic_per_real=r,
    )


def method_arm(method: str) -> Arm:
    """The arm that trains with a method's cases alone (no MAS, no mass effect): ``fabricate``'s arm."""
    for arm in ARMS.values():
        if arm.method == method and not arm.mas and not arm.mass_effect and arm.synthetic_per_real is None:
            return arm
    raise ValueError(f"no arm trains with {method!r} alone; add one to ARMS")


def get_arm(name: str) -> Arm:
    """The registered arm ``name``, or the ablation's ``tf_syn<r>``; a ValueError listing the arms otherwise."""
    if name in ARMS:
        return ARMS[name]
    if name.startswith(ABLATION_PREFIX):
        try:
            return ablation_arm(float(name[len(ABLATION_PREFIX) :]))
        except ValueError:
            pass
    raise ValueError(f"unknown arm {name!r}; known: {', '.join(ARMS)} and {ABLATION_PREFIX}<r>")


__all__ = ["ARMS", "BASELINE", "CONTROL", "ROLES", "Arm", "ablation_arm", "get_arm", "method_arm"]
