"""Quality of cases and models: :mod:`~custom_components.quality.qc` (PNG montages that show the texture),
:mod:`~custom_components.quality.realism` (class-wise realism scores with real-vs-real floors, FRD),
:mod:`~custom_components.quality.c2st` (classifier two-sample test of realism: can a classifier tell a method's
tumour patches from real ones?) and :mod:`~custom_components.quality.evaluation` (per-case BraTS Dice / HD95 of
ET, TC, WT).

The modules are imported one by one (a bundle that evaluates, also its Model Zoo copy, does not import
matplotlib, frd-score or scikit-learn); the C2ST's public names are exported here lazily:
``from custom_components.quality import c2st_scores`` imports :mod:`~custom_components.quality.c2st` on first use.
"""

from __future__ import annotations

from typing import Any

C2ST_NAMES = (
    "FEATURES",
    "C2STSettings",
    "c2st_scores",
    "cross_validated_auc",
    "fold_splits",
    "paired_folds",
    "patch_features",
    "split_half_test",
    "two_sample_test",
)
__all__ = list(C2ST_NAMES)


def __getattr__(name: str) -> Any:
    """The C2ST's names, imported from :mod:`~custom_components.quality.c2st` when first asked for."""
    if name in C2ST_NAMES:
        from custom_components.quality import c2st

        return getattr(c2st, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
