"""Keys of the per-sample entries that synthetic data carries through training, in the style of MONAI's ``CommonKeys``.

One definition for every module that sets or reads them: the two-phase dataset
(:class:`~custom_components.engines.seg_data.TwoPhaseDataset`) and the online synthesis transforms set them on
every sample, the trainer (:class:`~custom_components.engines.seg_trainer.SegmentationTrainer`) reads them from
the batch and returns them, with its per-sample results, in ``engine.state.output``, and MAS
(:mod:`custom_components.handlers.mas`) reads them there.
"""

from __future__ import annotations

from monai.utils import StrEnum

__all__ = ["SynthesisKeys"]


class SynthesisKeys(StrEnum):
    """Per-sample keys of training batches and of the trainer's output (members compare equal to their strings).

    ``CASE_ID`` is the case id of the sample (a derived sample: ``<case>#online<k>``); ``SYNTHETIC`` (bool) marks a
    synthetic sample; ``MAS`` (bool) marks a sample MAS weights; ``WEIGHT`` is the sample's fixed loss weight (1 for
    real samples). The trainer adds ``SAMPLE_DICE`` (its accuracy: hard region Dice of the detached prediction) and
    ``SAMPLE_WEIGHT`` (the loss weight it was given) to its output.
    """

    CASE_ID = "case_id"
    SYNTHETIC = "is_synthetic"
    MAS = "mas"
    WEIGHT = "weight"
    SAMPLE_DICE = "sample_dice"
    SAMPLE_WEIGHT = "sample_weight"
