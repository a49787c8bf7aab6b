"""Data: datalists (read, write, the one loader and case-id rule), validation, label conventions, atomic IO,
BraTS / healthy datalist discovery and demo data."""

from custom_components.data.atomic import atomic_path, atomic_write_text, save_nifti
from custom_components.data.brain_mask import BrainMaskError, check_brain_mask, infer_brain_mask
from custom_components.data.cache import DataCheckCache, default_cache
from custom_components.data.datalist import (
    NIFTI_SUFFIXES,
    PATH_KEYS,
    case_id_of,
    is_nifti,
    label_convention_of,
    nifti_stem,
    read_datalist,
    select_modalities,
    source_name,
    write_datalist,
)
from custom_components.data.discovery import (
    BRAIN_MASK_PATTERNS,
    BRAIN_MASK_SUFFIXES,
    is_brain_mask_name,
    make_brats_datalist,
    make_healthy_datalist,
)
from custom_components.data.input_check import (
    InputCheckError,
    check_checkpoint,
    check_inputs,
    input_problems,
    report_inputs,
)
from custom_components.data.keys import SynthesisKeys
from custom_components.data.labels import (
    CONVENTIONS,
    INTERNAL_CLASSES,
    INTERNAL_LABELS,
    REGION_NAMES,
    REGIONS,
    TUMOUR_CLASSES,
    allowed_values,
    check_convention,
    from_internal,
    to_internal,
)
from custom_components.data.loader import load_datalist
from custom_components.data.validation import (
    check_brain_mask_grid,
    check_datalist,
    check_items,
    validate_datalist,
    validate_items,
)

__all__ = [
    "BRAIN_MASK_PATTERNS",
    "BRAIN_MASK_SUFFIXES",
    "BrainMaskError",
    "DataCheckCache",
    "InputCheckError",
    "CONVENTIONS",
    "INTERNAL_CLASSES",
    "INTERNAL_LABELS",
    "NIFTI_SUFFIXES",
    "PATH_KEYS",
    "REGION_NAMES",
    "REGIONS",
    "SynthesisKeys",
    "TUMOUR_CLASSES",
    "allowed_values",
    "atomic_path",
    "atomic_write_text",
    "case_id_of",
    "check_brain_mask",
    "check_checkpoint",
    "check_inputs",
    "check_brain_mask_grid",
    "check_convention",
    "check_datalist",
    "check_items",
    "default_cache",
    "from_internal",
    "input_problems",
    "report_inputs",
    "infer_brain_mask",
    "is_brain_mask_name",
    "is_nifti",
    "label_convention_of",
    "load_datalist",
    "make_brats_datalist",
    "make_healthy_datalist",
    "nifti_stem",
    "read_datalist",
    "save_nifti",
    "select_modalities",
    "source_name",
    "to_internal",
    "validate_datalist",
    "validate_items",
    "write_datalist",
]
