"""QC gallery of a synthetic dataset: one HTML page with every case's montage and the realism table.

:func:`case_montage` writes (or keeps, when up to date) a case's PNG with
:func:`custom_components.quality.qc.save_montage`: the synthetic case, the case it was made from (``source``) and
their absolute difference. :func:`write_gallery` writes ``<gallery_dir>/index.html``: a header, the realism scores
against held-out real cases (:mod:`custom_components.quality.realism`), and one figure per case whose ``<img>``
links its PNG by a path relative to the page, so the folder can be moved or served as it is.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from custom_components.data.atomic import atomic_write_text

_STYLE = """
body { background: #111; color: #ddd; font-family: sans-serif; margin: 1.5em; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.5em; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #444; padding: 2px 8px; }
th { background: #222; } td.num { text-align: right; font-family: monospace; }
figure { margin: 1em 0 2em 0; } figcaption { font-size: 0.9em; margin-bottom: 0.3em; }
img { max-width: 100%; height: auto; display: block; }
pre { background: #1b1b1b; padding: 0.6em; overflow-x: auto; }
"""


def case_montage(
    png: str | os.PathLike,
    image: Any,
    label: Any,
    source: Any = None,
    source_label: Any = None,
    title: str = "",
    row_titles: Sequence[str] | None = None,
    labels: str = "internal",
    force: bool = False,
) -> Path:
    """A case's montage for the gallery; an existing PNG newer than the image file is kept.

    Args:
        png: PNG to write (atomically).
        image: the synthetic image (NIfTI path; channel 0 of a 4D file) or array.
        label: its label (path or array).
        source: the case it was made from (same grid), shown with the difference; None: image rows only.
        source_label: the source's label (default: ``label``).
        title: figure title.
        row_titles: a name per row (image, [source, difference]).
        labels: label convention of the label files.
        force: write even when an up-to-date PNG exists.
    """
    from custom_components.quality.qc import save_montage

    png = Path(png)
    if not force and png.is_file() and isinstance(image, str | os.PathLike):
        inputs = [Path(p) for p in (image, label, source) if isinstance(p, str | os.PathLike)]
        if all(p.is_file() and p.stat().st_mtime_ns <= png.stat().st_mtime_ns for p in inputs):
            return png
    return save_montage(
        image,
        label,
        png,
        title=title,
        source=source,
        source_label=source_label,
        row_titles=row_titles,
        labels=labels,
    )


def montage_source(item: Mapping[str, Any]) -> tuple[str | None, str]:
    """The image a synthetic case on a healthy scan was made from (first channel) and its row name, from provenance:
    TF-GAN's coarse input, TF-Aug's healthy scan; ``(None, "")`` for Pix2Pix (generated from the label alone) or
    when the file is gone."""
    prov = item.get("provenance") or {}
    if prov.get("coarse_image"):
        source, name = prov["coarse_image"][0], "coarse input"
    elif prov.get("stage") == "tf_aug" and prov.get("healthy"):
        healthy = prov["healthy"]
        source, name = (healthy[0] if isinstance(healthy, list) else healthy), "healthy input"
    else:
        return None, ""
    return (source, name) if Path(source).is_file() else (None, "")


def synthetic_case_montage(png: str | os.PathLike, item: Mapping[str, Any], name: str) -> Path:
    """The montage of a synthetic case from its datalist item: the image (first channel) with its label, and the
    input it was made from (:func:`montage_source`) with the difference. ``fabricate``'s gallery and the pipeline
    report draw the cases of the methods on healthy scans with it.

    Args:
        png: PNG to write.
        item: the case's datalist item (``case_id``, ``image``, ``label``, ``provenance``; absolute paths).
        name: the method's name (row and title).
    """
    image = item["image"][0] if isinstance(item["image"], list) else item["image"]
    source, source_name = montage_source(item)
    titles = [name] + ([source_name, f"|{name} - {source_name}|"] if source is not None else [])
    return case_montage(png, image, item["label"], source=source, title=f"{name}: {item['case_id']}", row_titles=titles)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return html.escape(str(value))


def realism_html(result: Mapping[str, Any] | None) -> str:
    """The realism scores as HTML: the summary (value and real-vs-real floor), then the full table as text.

    Args:
        result: what :func:`custom_components.quality.realism.realism_scores` returned (plus ``real``), or a
            dict with ``skipped`` (the reason), or None.
    """
    if result is None:
        return "<p>No realism scores.</p>"
    if "skipped" in result:
        return f"<p>Realism not computed: {html.escape(str(result['skipped']))}</p>"
    from custom_components.quality.realism import format_table

    summary = result.get("summary", {})
    rows = [
        ("Frechet distance of F's class features", "frechet", "frechet_floor"),
        ("Wasserstein distance of class intensities (W1)", "wasserstein", "wasserstein_floor"),
        ("boundary sharpness, synthetic / real", "sharpness_ratio", None),
        ("FRD v1 (ln Frechet radiomics distance, whole tumour)", "frd", "frd_floor"),
    ]
    body = "".join(
        f"<tr><td>{html.escape(name)}</td><td class='num'>{_fmt(summary.get(key))}</td>"
        f"<td class='num'>{_fmt(summary.get(floor)) if floor else '-'}</td></tr>"
        for name, key, floor in rows
    )
    real = html.escape(str(result.get("real", "")))
    section = html.escape(str(result.get("real_section", "validation")))
    return (
        f"<p>{result.get('n_synthetic')} synthetic cases against {result.get('n_real')} held-out real cases "
        f"(section <code>{section}</code> of <code>{real}</code>); the floor is the same distance between two random "
        "halves of the real cases (lower is more real; a value near its floor is as close as real cases are to each "
        "other). No encoder: the Frechet distance of F's features is not computed.</p>"
        f"<table><tr><th>measure (mean over classes / modalities)</th><th>synthetic vs real</th><th>floor</th></tr>"
        f"{body}</table><pre>{html.escape(format_table(dict(result)))}</pre>"
    )


def write_gallery(
    gallery_dir: str | os.PathLike,
    cases: Sequence[Mapping[str, Any]],
    title: str,
    realism: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
    index_name: str = "index.html",
) -> Path:
    """Write the gallery page (atomically) listing every case's montage, with the realism scores on top.

    Args:
        gallery_dir: folder of the page (the montages may lie anywhere; links are relative to this folder).
        cases: per case ``{"case_id", "montage": PNG path, "caption": text}`` in the order shown.
        title: page title.
        realism: realism result (see :func:`realism_html`).
        notes: lines shown under the title (e.g. the method, seed and source datalist).
        index_name: file name of the page.

    Returns:
        the page's path.

    Raises:
        FileNotFoundError naming the PNG when a case's montage does not exist.
    """
    gallery_dir = Path(gallery_dir)
    figures = []
    for case in cases:
        png = Path(case["montage"])
        if not png.is_file():
            raise FileNotFoundError(f"{png}: montage of case {case['case_id']} not found")
        src = Path(os.path.relpath(png.resolve(), gallery_dir.resolve())).as_posix()
        cid = html.escape(str(case["case_id"]))
        figures.append(
            f"<figure id='{cid}'><figcaption><b>{cid}</b> {html.escape(str(case.get('caption', '')))}</figcaption>"
            f"<a href='{html.escape(src)}'><img src='{html.escape(src)}' alt='montage of {cid}' loading='eager'></a>"
            "</figure>"
        )
    note_html = "".join(f"<li>{html.escape(str(n))}</li>" for n in notes)
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1><ul>{note_html}</ul>\n"
        f"<h2>Realism against held-out real cases</h2>\n{realism_html(realism)}\n"
        f"<h2>Cases ({len(figures)})</h2>\n<p>Each montage: the synthetic case as it is and with its label contours, "
        "the case it was made from, and their absolute difference (axial, coronal, sagittal through the tumour).</p>\n"
        + "\n".join(figures)
        + "\n</body></html>\n"
    )
    path = gallery_dir / index_name
    atomic_write_text(path, page)
    return path
