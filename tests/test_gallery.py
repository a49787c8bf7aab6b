"""QC gallery page: every case's montage linked relative to the page, realism table, images that load."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from custom_components.quality.gallery import case_montage, realism_html, write_gallery

CHROMIUM = Path("/usr/bin/chromium")


def image_sources(page: Path) -> list[str]:
    """The ``src`` of every ``<img>`` of a page."""
    return re.findall(r"<img[^>]*\ssrc='([^']+)'", page.read_text())


def _case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 32^3 'brain' with a tumour, its label, and the healthy source it was made from."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:32, :32, :32]
    brain = (zz - 16) ** 2 + (yy - 16) ** 2 + (xx - 16) ** 2 < 14**2
    source = np.where(brain, 0.2 + 0.05 * rng.standard_normal((32, 32, 32)), -1.0).astype(np.float32)
    r2 = (zz - 12 - seed) ** 2 + (yy - 18) ** 2 + (xx - 15) ** 2
    label = np.where(r2 < 9, 3, np.where(r2 < 25, 2, 0)).astype(np.uint8)
    image = np.where(label > 0, 0.8, source).astype(np.float32)
    return image, label, source


@pytest.fixture()
def gallery(tmp_path: Path) -> Path:
    """A gallery of three cases whose montages lie in a sibling folder (links must be relative)."""
    pngs = tmp_path / "site" / "montages"
    cases = []
    for k in range(3):
        image, label, source = _case(k)
        png = case_montage(pngs / f"case-{k}.png", image, label, source=source, title=f"case {k}")
        cases.append({"case_id": f"case-{k}", "montage": png, "caption": f"from source {k}"})
    realism = {"skipped": "no held-out real cases"}
    return write_gallery(tmp_path / "site" / "gallery", cases, "three cases", realism, notes=["method test"])


def test_every_case_is_listed_with_a_relative_link(gallery: Path) -> None:
    sources = image_sources(gallery)
    assert sources == [f"../montages/case-{k}.png" for k in range(3)]
    assert all((gallery.parent / s).is_file() for s in sources)
    text = gallery.read_text()
    assert "Cases (3)" in text and "no held-out real cases" in text and "from source 2" in text
    # the folder moves as a whole
    moved = gallery.parents[2] / "moved"
    shutil.move(str(gallery.parents[1]), str(moved))
    page = moved / "gallery" / "index.html"
    assert all((page.parent / s).is_file() for s in image_sources(page))


def test_missing_montage_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.png"))):
        write_gallery(tmp_path, [{"case_id": "x", "montage": tmp_path / "nope.png"}], "t")
    assert not (tmp_path / "index.html").exists()


def test_montage_is_kept_while_up_to_date(tmp_path: Path) -> None:
    import nibabel as nib

    image, label, source = _case(0)
    files = {}
    for name, arr in (("image", image), ("label", label), ("source", source)):
        files[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(arr, np.eye(4)), str(files[name]))
    png = case_montage(tmp_path / "m.png", str(files["image"]), str(files["label"]), source=str(files["source"]))
    first = png.stat().st_mtime_ns
    assert (
        case_montage(png, str(files["image"]), str(files["label"]), source=str(files["source"])).stat().st_mtime_ns
        == first
    )
    later = first + 10**9
    os.utime(files["image"], ns=(later, later))
    case_montage(png, str(files["image"]), str(files["label"]), source=str(files["source"]))
    assert png.stat().st_mtime_ns != first


def test_realism_table() -> None:
    result = {
        "n_synthetic": 5,
        "n_real": 2,
        "modalities": ["t1n"],
        "classes": ["ED"],
        "frechet": {},
        "wasserstein": {"ED": {"t1n": {"distance": 0.125, "floor": 0.0625}}},
        "sharpness": {"t1n": {"synthetic": 1.0, "real": 1.0, "ratio": 1.0, "floor_ratio": 1.0}},
        "frd": {"t1n": {"distance": None, "floor": None, "reason": "disabled"}},
        "frd_package": None,
        "n_splits": 10,
        "summary": {"wasserstein": 0.125, "wasserstein_floor": 0.0625, "sharpness_ratio": 1.0, "frd": None},
        "real": "/data/real.json",
    }
    text = realism_html(result)
    assert "5 synthetic cases against 2 held-out real cases" in text
    assert "<td class='num'>0.125</td><td class='num'>0.0625</td>" in text and "/data/real.json" in text
    assert "not computed: x" in realism_html({"skipped": "x"})


@pytest.mark.slow
def test_gallery_images_load_in_a_headless_browser(gallery: Path, tmp_path: Path) -> None:
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium): the page is not rendered")
    # a copy of the page, beside it, with a probe that writes how many images are broken into the DOM
    probe = gallery.parent / "_probe.html"
    script = (
        "<script>window.addEventListener('load', () => { const all = Array.from(document.images);"
        " const bad = all.filter(i => !(i.complete && i.naturalWidth > 0)).length;"
        " const d = document.createElement('div'); d.id = 'probe'; d.textContent = all.length + ' ' + bad;"
        " document.body.appendChild(d); });</script></body>"
    )
    probe.write_text(gallery.read_text().replace("</body>", script))
    # one deliberately broken copy proves that the probe sees broken images
    broken = gallery.parent / "_broken.html"
    broken.write_text(probe.read_text().replace("case-1.png", "missing.png"))
    counts = []
    for page in (probe, broken):
        proc = subprocess.run(
            [
                str(CHROMIUM),
                "--headless",
                "--disable-gpu",
                "--no-sandbox",
                f"--user-data-dir={tmp_path / 'chromium'}",
                "--virtual-time-budget=10000",
                "--dump-dom",
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        found = re.search(r"<div id=\"probe\">(\d+) (\d+)</div>", proc.stdout)
        assert found, proc.stderr[-2000:]
        counts.append((int(found.group(1)), int(found.group(2))))
    assert counts == [(3, 0), (3, 1)]
