"""Tumour synthesis (Tumor Fabrication, DSMA) and segmentation components for MONAI bundles."""

__version__ = "0.1.0"
