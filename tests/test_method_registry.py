"""The registries of synthesis methods and comparison arms are the one seam per method: no name chains outside
them, every method offered by ``fabricate``, usable as an arm, and drawn in the report as ``fabricate`` draws it."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from custom_components.data.demo import make_demo_data
from custom_components.pipeline import fabricate as fab
from custom_components.pipeline import summary
from custom_components.pipeline.arms import ARMS, BASELINE, CONTROL, Arm, ablation_arm, get_arm, method_arm
from custom_components.pipeline.config import load_config
from custom_components.pipeline.experiment import Experiment
from custom_components.synthesis.methods import METHODS, get_method
from custom_components.synthesis.offline import derived_arrays

REPO = Path(__file__).resolve().parents[1]
REGISTRIES = {
    REPO / "custom_components" / "synthesis" / "methods.py",
    REPO / "custom_components" / "pipeline" / "arms.py",
}
NAMES = set(METHODS) | set(ARMS)
# comparisons with these words on the other side compare something else that shares a name (the ``tf`` protocol,
# an arm's ``baseline`` role, a provenance stage)
OTHER_MEANINGS = ("protocol", "role", "stage")


def _strings(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    return set()


def name_comparisons(source: str) -> list[str]:
    """Comparisons (``==``, ``!=``, ``in``, ``startswith``) against a registered method or arm name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            other = " ".join(ast.unparse(s) for s in sides if not _strings(s))
            if set().union(*map(_strings, sides)) & NAMES and not any(w in other for w in OTHER_MEANINGS):
                found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("startswith", "endswith")
            and set().union(*map(_strings, node.args)) & NAMES
        ):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return sorted(found, key=lambda f: int(f.split(":")[0]))


def test_the_scan_finds_a_name_chain() -> None:
    chain = 'if arm == "tf":\n    pass\nelif method in ("dtss", "x"):\n    pass\nok = a.startswith(("carvemix",))\n'
    assert [f.split(":")[0] for f in name_comparisons(chain)] == ["1", "3", "5"]
    assert (
        name_comparisons('if cfg["protocol"] == "tf":\n    pass\nif get_arm(a).role == "baseline":\n    pass\n') == []
    )


def test_no_method_or_arm_name_chain_outside_the_registries() -> None:
    files = [p for d in ("custom_components", "bundles", "benchmarks") for p in sorted((REPO / d).rglob("*.py"))]
    found = [
        f"{p.relative_to(REPO)}:{hit}" for p in files if p not in REGISTRIES for hit in name_comparisons(p.read_text())
    ]
    assert not found, "compare registry attributes, not names:\n" + "\n".join(found)


def test_every_method_is_offered_by_fabricate_and_usable_as_an_arm(tmp_path: Path) -> None:
    from custom_components.cli import fabricate as cli_fabricate

    assert tuple(METHODS) == fab.METHODS
    for name, spec in METHODS.items():
        assert f"{name} ({spec.description})" in (cli_fabricate.__doc__ or "")
    config = tmp_path / "p.yaml"
    arms = [a.name for a in ARMS.values() if a.method is not None]
    config.write_text(yaml.safe_dump({"demo": {"n_tumour": 4}, "arms": [BASELINE, *arms], "synthetic_per_real": [2]}))
    exp = Experiment(load_config(config))
    assert exp.arms[:2] == [BASELINE, CONTROL] and exp.arms[-1] == "tf_syn2"
    for name, spec in METHODS.items():
        arm = method_arm(name)
        assert arm.method == name and not (arm.mas or arm.mass_effect)
        o = exp.arm_overrides(arm.name, 3)
        if spec.derived:  # drawn online: its switch on, no datalist, companion sampling
            assert o[str(spec.online_switch)] is True and o["synthetic_datalists"] == []
            assert o["synthetic_sampling"] == "companion"
        else:  # the seed's cases of the method, at the base ratio
            assert o["synthetic_datalists"] == [str(exp.synthetic_datalist(str(spec.cases), 3))]
            assert o["synthetic_per_case"] == 1.0 and o["synthetic_sampling"] == "companion"
        switches = {"use_dtss", "use_carvemix", "use_mas"} - {spec.online_switch}
        assert not any(o[k] for k in switches), name
    assert exp.arm_overrides("tf_mas", 0)["use_mas"] is True and exp.arm_overrides("tf_mas", 0)["synthetic_mas"]
    assert exp.arm_overrides("dtss_mas+mass", 0) | {} == {
        **exp.arm_overrides("baseline", 0),
        "use_dtss": True,
        "use_mas": True,
        "dtss_mass_effect": True,
    }
    assert exp.arm_overrides("tf_aug+mass", 1)["synthetic_datalists"] == [str(exp.mass_coarse_datalist(1))]
    assert exp.arm_overrides("tf_syn2", 1)["synthetic_datalists"] == [str(exp.subset_datalist(2.0, "refined", 1))]
    assert exp.arm_overrides(CONTROL, 0)["real_per_case"] == 1.0  # online arms present: a second real crop
    assert all(exp.needs(p) for p in ("tf_aug", "tf_gan", "pix2pix", "tf_aug_mass"))


def test_arm_registry_refuses_inconsistent_arms() -> None:
    with pytest.raises(ValueError, match="names its method"):
        Arm("x", "x", role="synthetic")
    with pytest.raises(ValueError, match="no mass-effect option"):
        Arm("x", "x", method="carvemix", mass_effect=True)
    with pytest.raises(ValueError, match="unknown arm 'tf_synx'"):
        get_arm("tf_synx")
    with pytest.raises(ValueError, match="unknown synthesis method 'gan'"):
        get_method("gan")
    assert get_arm("tf_syn0.5") == ablation_arm(0.5) and get_arm("tf_syn0.5").synthetic_per_real == 0.5
    assert get_arm("dtss").online and not get_arm("tf").online and get_arm("tf").parts == {"tf_aug", "tf_gan"}
    assert get_arm("tf_aug+mass").parts == {"tf_aug", "tf_aug_mass"} and get_arm(BASELINE).parts == set()


@pytest.mark.parametrize("method", [n for n, m in METHODS.items() if m.derived])
def test_report_draws_a_derived_method_as_fabricate_does(method: str, tmp_path: Path) -> None:
    """The report's montages and realism cases of DTSS / CarveMix are fabricate's cases of the first seed."""
    demo = make_demo_data(tmp_path / "demo", n_healthy=1, n_tumour=5, spacing=4.0, seed=0, verbose=False)
    out = tmp_path / "fab"
    fab.fabricate(method, 2, demo["tumour"], out, frd=False, log=lambda _: None, stream=io.StringIO())
    config = tmp_path / "p.yaml"
    mods = ["t1n", "t1c", "t2w", "t2f"]
    real, healthy = str(demo["tumour"]), str(demo["healthy"])
    config.write_text(yaml.safe_dump({"real_datalist": real, "healthy": healthy, "modalities": mods, "seeds": [0]}))
    exp = Experiment(load_config(config, arms=[BASELINE, method]))
    spec = get_method(method)
    drawn = summary._montages(exp, tmp_path / "qc", spec, 2, False)
    assert [p.name for p in drawn] == [f"{method}_{method}-0000{i}.png" for i in range(2)]
    for i, png in enumerate(drawn):
        assert png.read_bytes() == (out / "gallery" / f"{method}-0000{i}.png").read_bytes()
    for case, _, derived in summary.derived_cases(exp, spec, 2):
        written = np.stack(
            [nib.load(out / case["case_id"] / f"{case['case_id']}_{m}.nii.gz").get_fdata() for m in mods]
        )
        np.testing.assert_array_equal(np.asarray(derived["image"], dtype=np.float32), written.astype(np.float32))


@pytest.mark.parametrize("method", [n for n, m in METHODS.items() if m.derived])
def test_realism_pools_every_seeds_cases(method: str, tmp_path: Path) -> None:
    """The realism table scores every seed's cases, seed by seed, each drawn as ``fabricate --seed <seed>`` draws
    it (with 2 real cases one seed alone gives the C2ST 2 cases a side), and stops at the cap."""
    demo = make_demo_data(tmp_path / "demo", n_healthy=1, n_tumour=5, spacing=4.0, seed=0, verbose=False)
    config = tmp_path / "p.yaml"
    real, healthy = str(demo["tumour"]), str(demo["healthy"])
    config.write_text(
        yaml.safe_dump({"real_datalist": real, "healthy": healthy, "modalities": ["t1n"], "seeds": [3, 7]})
    )
    exp = Experiment(load_config(config, arms=[BASELINE, method]))
    spec = get_method(method)
    per_seed = [[derived_arrays(d)[:2] for _, _, d in summary.derived_cases(exp, spec, None, seed=s)] for s in (3, 7)]
    n = len(per_seed[0])
    pooled = summary.realism_cases(exp, spec, False, 50)
    assert n >= 2 and len(pooled) == 2 * n
    for case, (image, label) in zip(pooled, per_seed[0] + per_seed[1], strict=True):
        np.testing.assert_array_equal(case.image, image)
        np.testing.assert_array_equal(case.label, label)
    assert not np.array_equal(pooled[0].image, pooled[n].image)  # the second seed draws other cases
    capped = summary.realism_cases(exp, spec, False, n + 1)
    assert len(capped) == n + 1 and np.array_equal(capped[n].image, pooled[n].image)
