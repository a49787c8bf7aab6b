"""dtss_mas_seg's postprocessing of a predicted label map: ``keep_largest_component`` keeps the largest connected
tumour component (NCR, ED and ET together) in validation, evaluation and inference, and nothing else changes."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import KeepLargestConnectedComponentd

from tests.bundle_utils import bundle_dir

CONFIGS = bundle_dir("dtss_mas_seg") / "configs"
# the postprocessing of each workflow that turns network outputs into labels: config files, config id
WORKFLOWS = {
    "validation": (["common.yaml", "train.yaml"], "validate#postprocessing"),
    "evaluation": (["common.yaml", "evaluate.yaml"], "postprocessing"),
    "inference": (["inference.yaml"], "postprocessing"),
}


def _postprocessing(workflow: str, keep: bool):
    files, key = WORKFLOWS[workflow]
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in files])
    parser["keep_largest_component"] = keep
    return parser.get_parsed_content(key)


def _logits(labels: torch.Tensor) -> torch.Tensor:
    """Four-class logits whose argmax is ``labels``."""
    return torch.nn.functional.one_hot(labels.long(), 4).permute(3, 0, 1, 2).float()


def _prediction() -> tuple[torch.Tensor, torch.Tensor]:
    """A 16^3 label map: a tumour (ED shell 6^3 around an ET core 2^3, beside an NCR 2^3 that touches it) and,
    far away, a false-positive blob of 16 voxels that touches nothing: NCR 2x2x3 and ED 2x2x1. The blob's NCR is
    larger than the tumour's, so keeping each class's largest component instead of the tumour's as a whole would
    keep the blob's NCR and drop the tumour's."""
    tumour = torch.zeros(16, 16, 16)
    tumour[1:7, 1:7, 1:7] = 2
    tumour[3:5, 3:5, 3:5] = 3
    tumour[5:7, 3:5, 3:5] = 1
    pred = tumour.clone()
    pred[12:14, 12:14, 12:15] = 1
    pred[12:14, 12:14, 15] = 2
    return tumour, pred


@pytest.mark.parametrize("workflow", ["validation", "evaluation"])
def test_largest_component_removes_the_distant_blob(workflow: str) -> None:
    tumour, pred = _prediction()
    label = tumour[None]
    regions = _postprocessing(workflow, True)({"pred": _logits(pred), "label": label})
    # the blob (one component of 16 voxels) is gone and the tumour, with its NCR, kept: the regions equal the
    # label's (ET, TC, WT)
    assert torch.equal(regions["pred"], regions["label"])
    assert regions["pred"][2].sum() == 6**3 and regions["pred"][1].sum() == 16
    kept = _postprocessing(workflow, False)({"pred": _logits(pred), "label": label})
    # off (the bundle's default): the blob stays in TC (its 12 NCR voxels) and WT (all 16)
    assert kept["pred"][2].sum() == 6**3 + 16 and kept["pred"][1].sum() == 16 + 12
    assert torch.equal(kept["pred"][0], regions["pred"][0])


def test_inference_applies_it_after_the_argmax() -> None:
    """Inference: the step sits between the argmax and the inverse of the preprocessing, and is off by default."""
    on = _postprocessing("inference", True).transforms
    assert isinstance(on[1], KeepLargestConnectedComponentd) and len(on) == 3
    _, pred = _prediction()
    out = on[1]({"pred": pred[None]})["pred"][0]
    assert int((out > 0).sum()) == 6**3 and int(out[12:16, 12:16, 12:16].abs().sum()) == 0
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.yaml"))
    transforms = parser.get_parsed_content("postprocessing").transforms
    assert not any(isinstance(t, KeepLargestConnectedComponentd) for t in transforms) and len(transforms) == 2
