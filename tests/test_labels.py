"""Label conventions (custom_components.data.labels) and the label transforms built on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import LoadImaged

from custom_components.data.labels import allowed_values, from_internal, to_internal
from custom_components.transforms.labels import (
    ConvertToBratsRegions,
    ConvertToBratsRegionsd,
    MapBratsLabels,
    MapBratsLabelsd,
)

# every value of each convention, and what it becomes in the internal convention
CONVENTION_VALUES = {
    "internal": ([0, 1, 2, 3], [0, 1, 2, 3]),
    "brats2023": ([0, 1, 2, 3], [0, 1, 2, 3]),
    "brats2021": ([0, 1, 2, 4], [0, 1, 2, 3]),
    "brats2015": ([0, 1, 2, 3, 4], [0, 1, 2, 1, 3]),
}
REAL_COUNTS_2021 = {1: 3410, 2: 19746, 4: 6569}


def _volume(values: list[int]) -> np.ndarray:
    """A small (1, 4, 5, 3) label volume holding each of ``values`` at least once, in a fixed pattern."""
    flat = np.array([values[i % len(values)] for i in range(60)], dtype=np.uint8)
    return flat.reshape(1, 4, 5, 3)


@pytest.mark.parametrize("convention", list(CONVENTION_VALUES))
def test_round_trip_each_convention(convention: str) -> None:
    values, internal = CONVENTION_VALUES[convention]
    vol = _volume(values)
    expected_internal = np.asarray(internal, dtype=np.uint8)[np.searchsorted(values, vol)]
    mapped = MapBratsLabels(source=convention)(vol)
    np.testing.assert_array_equal(mapped, expected_internal)
    back = MapBratsLabels(source="internal", target=convention)(mapped)
    if convention == "brats2015":
        # lossy: non-enhancing tumour (3) is merged into NCR (1); everything else comes back
        expected_back = np.where(vol == 3, 1, vol)
        assert (vol == 3).sum() == 12 and (back == 3).sum() == 0
        np.testing.assert_array_equal(back, expected_back)
    else:
        np.testing.assert_array_equal(back, vol)
    assert sorted(np.unique(back).tolist()) == sorted({v for v in values if not (convention == "brats2015" and v == 3)})


def test_allowed_values_and_direct_conversion_between_conventions() -> None:
    assert allowed_values("brats2021") == (0, 1, 2, 4)
    assert allowed_values("brats2015") == (0, 1, 2, 3, 4)
    vol = np.array([0, 1, 2, 3, 4], dtype=np.uint8)
    np.testing.assert_array_equal(MapBratsLabels("brats2015", "brats2021")(vol), [0, 1, 2, 1, 4])
    np.testing.assert_array_equal(MapBratsLabels("brats2021", "brats2023")(np.array([4, 2, 1, 0])), [3, 2, 1, 0])
    np.testing.assert_array_equal(from_internal(np.array([3, 1]), "brats2021"), [4, 1])
    np.testing.assert_array_equal(to_internal(np.array([4.0, 2.0]), "brats2021"), [3, 2])


def test_map_keeps_type_dtype_and_metadata() -> None:
    vol = np.array([[[0, 4], [2, 1]]], dtype=np.int16)
    out = MapBratsLabels("brats2021")(vol)
    assert isinstance(out, np.ndarray) and out.dtype == np.int16
    np.testing.assert_array_equal(out, [[[0, 3], [2, 1]]])

    affine = torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0]))
    mt = MetaTensor(torch.tensor(vol, dtype=torch.float32), affine=affine, meta={"filename_or_obj": "case_seg.nii.gz"})
    out_t = MapBratsLabels("brats2021")(mt)
    assert isinstance(out_t, MetaTensor) and out_t.dtype == torch.float32
    torch.testing.assert_close(out_t.affine, affine.to(out_t.affine.dtype))
    assert out_t.meta["filename_or_obj"] == "case_seg.nii.gz"
    assert out_t.tolist() == [[[0.0, 3.0], [2.0, 1.0]]]

    plain = MapBratsLabels("internal", "brats2021")(torch.tensor([3, 1, 0]))
    assert type(plain) is torch.Tensor and plain.tolist() == [4, 1, 0]


def test_map_rejects_values_outside_the_source_convention() -> None:
    with pytest.raises(ValueError, match=r"\[4\].*'brats2023'"):
        MapBratsLabels("brats2023")(np.array([0, 1, 4]))
    with pytest.raises(ValueError, match=r"\[3\].*'brats2021'"):
        MapBratsLabels("brats2021")(np.array([0, 3]))
    mt = MetaTensor(torch.tensor([0.0, 5.0]), meta={"filename_or_obj": "/data/c1/c1-seg.nii.gz"})
    with pytest.raises(ValueError, match=r"^/data/c1/c1-seg.nii.gz: label values \[5\]"):
        MapBratsLabels("brats2023")(mt)
    with pytest.raises(ValueError, match="unknown label convention 'brats2019'"):
        MapBratsLabels("brats2019")


def test_map_dict_transform_keys() -> None:
    d = {"label": np.array([4, 1]), "other": np.array([4, 1]), "image": np.array([7.0])}
    out = MapBratsLabelsd(keys=["label", "other"], source="brats2021")(d)
    assert out["label"].tolist() == [3, 1] and out["other"].tolist() == [3, 1]
    assert out["image"] is d["image"] and d["label"].tolist() == [4, 1]  # input dict untouched
    with pytest.raises(KeyError):
        MapBratsLabelsd(keys="seg")(d)
    assert MapBratsLabelsd(keys="seg", allow_missing_keys=True)(d).keys() == d.keys()


def test_regions_hand_counted_numpy_and_torch() -> None:
    # 2 x NCR, 3 x ED, 4 x ET, rest background, in a (1, 3, 3, 2) volume
    flat = np.zeros(18, dtype=np.uint8)
    flat[[0, 5]] = 1
    flat[[1, 2, 9]] = 2
    flat[[3, 4, 10, 17]] = 3
    lab = flat.reshape(1, 3, 3, 2)
    expected_counts = [4, 6, 9]  # ET, TC = NCR + ET, WT = all tumour
    for inp in (lab, lab[0], torch.tensor(lab), torch.tensor(lab[0], dtype=torch.float32)):
        out = ConvertToBratsRegions()(inp)
        assert tuple(out.shape) == (3, 3, 3, 2)
        assert [int(c.sum()) for c in out] == expected_counts
        assert type(out) is type(inp)
    out = ConvertToBratsRegions()(lab)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[0], lab[0] == 3)
    np.testing.assert_array_equal(out[1], (lab[0] == 1) | (lab[0] == 3))
    np.testing.assert_array_equal(out[2], lab[0] > 0)
    assert ConvertToBratsRegions(dtype=torch.bool)(torch.tensor(lab)).dtype == torch.bool
    two_d = ConvertToBratsRegions()(np.array([[[0, 1], [2, 3]]]))  # (1, H, W) -> (3, H, W)
    assert two_d.shape == (3, 2, 2) and two_d.sum(axis=(1, 2)).tolist() == [1, 2, 3]


def test_regions_keep_metadata_and_reject_bad_input() -> None:
    affine = torch.diag(torch.tensor([1.5, 1.5, 2.0, 1.0]))
    mt = MetaTensor(torch.tensor([[[[0.0, 3.0], [1.0, 2.0]]]]), affine=affine, meta={"filename_or_obj": "p.nii.gz"})
    out = ConvertToBratsRegions()(mt)
    assert isinstance(out, MetaTensor) and out.shape == (3, 1, 2, 2)
    torch.testing.assert_close(out.affine, affine.to(out.affine.dtype))
    with pytest.raises(ValueError, match=r"^p.nii.gz: values \[4\] are not internal labels"):
        ConvertToBratsRegions()(MetaTensor(torch.tensor([[[[0.0, 4.0]]]]), meta={"filename_or_obj": "p.nii.gz"}))
    with pytest.raises(ValueError, match="values \\[4\\]"):
        ConvertToBratsRegions()(np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="single-channel label.*argmax"):
        ConvertToBratsRegions()(np.zeros((4, 2, 2, 2)))


def test_regions_in_a_config_after_asdiscrete() -> None:
    """The post-processing a bundle config writes: argmax of 4-class logits, then ET/TC/WT channels."""
    parser = ConfigParser(
        {
            "post": {
                "_target_": "Compose",
                "transforms": [
                    {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                    {
                        "_target_": "custom_components.transforms.labels.ConvertToBratsRegionsd",
                        "keys": ["pred", "label"],
                    },
                ],
            }
        }
    )
    post = parser.get_parsed_content("post")
    target = torch.tensor([0, 1, 2, 3, 3, 2]).reshape(1, 1, 2, 3)
    logits = torch.nn.functional.one_hot(target[0], 4).permute(3, 0, 1, 2).float() * 5.0
    out = post({"pred": logits, "label": target.float()})
    assert out["pred"].shape == (3, 1, 2, 3)
    torch.testing.assert_close(out["pred"], out["label"])
    assert out["label"].sum(dim=(1, 2, 3)).tolist() == [2.0, 3.0, 5.0]
    d = ConvertToBratsRegionsd(keys=["label", "x"], allow_missing_keys=True)({"label": target})
    assert d["label"].shape == (3, 1, 2, 3)


def test_real_case_label_round_trip(real_case: dict) -> None:
    data = LoadImaged(keys="label", ensure_channel_first=True, image_only=True)({"label": real_case["label"]})
    original = data["label"].clone()
    assert {v: int((original == v).sum()) for v in (1, 2, 4)} == REAL_COUNTS_2021

    internal = MapBratsLabelsd(keys="label", source=real_case["labels"])(data)["label"]
    assert isinstance(internal, MetaTensor) and internal.shape == (1, 240, 240, 155)
    assert internal.meta["filename_or_obj"] == real_case["label"]
    assert sorted(torch.unique(internal).tolist()) == [0, 1, 2, 3]
    assert {v: int((internal == v).sum()) for v in (1, 2, 3)} == {1: 3410, 2: 19746, 3: 6569}

    back = MapBratsLabels(source="internal", target="brats2021")(internal)
    assert torch.equal(back.as_tensor(), original.as_tensor())

    regions = ConvertToBratsRegions()(internal)
    assert regions.shape == (3, 240, 240, 155)
    assert regions.sum(dim=(1, 2, 3)).tolist() == [6569.0, 3410.0 + 6569.0, 3410.0 + 19746.0 + 6569.0]
