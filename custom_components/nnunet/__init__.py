"""nnU-Net v2 with the DSMA paper's online methods: DTSS and MAS inside nnU-Net's own training (extra ``[nnunet]``).

:mod:`.synthesis` (DTSS on nnU-Net's preprocessed cases, MAS accuracy of region outputs; no nnU-Net import),
:mod:`.trainers` (``nnUNetTrainerDTSS``, ``nnUNetTrainerDTSSMAS``; imports nnU-Net) and :mod:`.launcher`
(``nnunet-train`` / ``nnunet-predict``: nnU-Net's commands that find these trainers). Only :mod:`.synthesis` and
:mod:`.launcher` are imported here, so the package imports without nnU-Net installed.
"""

from custom_components.nnunet.launcher import COMMANDS, TRAINERS, register, run
from custom_components.nnunet.synthesis import (
    PreprocessedDTSS,
    bundle_settings,
    check_brats_regions,
    regions_to_internal,
    sample_region_dice,
)

__all__ = [
    "COMMANDS",
    "TRAINERS",
    "PreprocessedDTSS",
    "bundle_settings",
    "check_brats_regions",
    "regions_to_internal",
    "register",
    "run",
    "sample_region_dice",
]
