"""Quality of cases and models: :mod:`~custom_components.quality.qc` (PNG montages that show the texture),
:mod:`~custom_components.quality.realism` (class-wise realism scores with real-vs-real floors, FRD) and
:mod:`~custom_components.quality.evaluation` (per-case BraTS Dice / HD95 of ET, TC, WT).

The modules are imported one by one (a bundle that evaluates does not import matplotlib or frd-score), so this
package re-exports nothing.
"""
