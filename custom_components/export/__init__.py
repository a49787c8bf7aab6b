"""Handing results to other tools: :mod:`~custom_components.export.zoo_bundle` (a self-contained Model Zoo copy of
a bundle) and :mod:`~custom_components.export.nnunet` (real and synthetic datalists as an nnU-Net v2 raw dataset
whose validation folds hold real cases only).

The modules are imported one by one, so this package re-exports nothing.
"""
