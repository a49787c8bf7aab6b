"""Handing results to other tools: :mod:`~custom_components.export.zoo_bundle` (a self-contained Model Zoo copy of
a bundle).

The modules are imported one by one, so this package re-exports nothing.
"""
