"""The input check every bundle runs in ``initialize``, before it writes anything.

``check_inputs`` checks every file of every datalist section a run will read, with the same code as
``python -m custom_components validate-datalist`` (:func:`custom_components.data.validation.validate_datalist`):
the datalist parses; each section exists and has items; every file loads (a truncated or corrupt file is named);
it is 3-D, with the modalities stacked as the datalist's top-level ``modalities`` says; label, brain mask and ROI
lie on the image grid (shape and affine within ``AFFINE_ATOL``); label values fit the convention; no NaN/inf
voxels; and, where the run needs it (DTSS, CarveMix, MAS, TF-Aug's mask pool, TF-GAN), every label has tumour
voxels. Checkpoints the run loads are opened with ``weights_only=True`` (a pickle checkpoint is refused, naming
the file). Data checks are cached on (path, size, mtime) (:mod:`custom_components.data.cache`), so a large
dataset is decompressed once, not once per run.

Every problem is one line naming the file, the datalist, the section and the case. When there is any,
:class:`InputCheckError` (a ``SystemExit``) ends the process with status 1 and the list as the last thing
printed: MONAI's config parser wraps every ``Exception`` of a config expression in "Failed to evaluate
ConfigExpression" with a traceback, but lets ``SystemExit`` through.

Spec of one datalist section (a dict, as written in a bundle config)::

    {"datalist": path, "section": "training" (or "sections": [...]), "modalities": [...] | None,
     "labels": convention | None (None: the datalist's top-level "labels", else brats2023),
     "require_tumour": bool, "require": ["label", ...],
     "keys": file keys the run reads, e.g. ["image"] (default: every file key: image, label, brain_mask, roi)}
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from custom_components.data.datalist import label_convention_of
from custom_components.data.validation import validate_datalist

__all__ = ["InputCheckError", "check_checkpoint", "check_inputs", "input_problems", "report_inputs"]

logger = logging.getLogger(__name__)

SPEC_KEYS: frozenset[str] = frozenset(
    {"datalist", "section", "sections", "modalities", "labels", "require_tumour", "require", "keys"}
)


class InputCheckError(SystemExit):
    """The inputs of a run are invalid; ``problems`` lists them (one line each).

    A ``SystemExit`` (exit status 1, the message printed to stderr as the process's last output), so that
    ``python -m monai.bundle run`` ends with the list instead of a config-expression traceback.
    """

    def __init__(self, problems: Sequence[str], what: str = "inputs") -> None:
        self.problems = list(problems)
        header = (
            f"{what}: {len(self.problems)} problem(s) in the inputs; nothing was written "
            "(fix them, or set skip_checks: true at your own risk):"
        )
        super().__init__("\n".join([header, *self.problems]))


def _flatten(specs: Any) -> Iterable[Mapping[str, Any]]:
    if specs is None:
        return
    if isinstance(specs, Mapping):
        yield specs
        return
    for s in specs:
        yield from _flatten(s)


def check_checkpoint(path: str | os.PathLike, what: str = "checkpoint") -> str | None:
    """Why ``path`` cannot be loaded safely (``torch.load(weights_only=True)``), or None when it can.

    Args:
        path: checkpoint file.
        what: what the run uses it for (in the message).
    """
    path = str(path)
    if not os.path.isfile(path):
        return f"{path}: {what} not found"
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # UnpicklingError for pickles, RuntimeError/EOFError for corrupt files
        if isinstance(e, torch.serialization.pickle.UnpicklingError) or "weights_only" in str(e):
            return (
                f"{path}: {what} refused: it is not a weights-only checkpoint (loading it needs pickle, which can run "
                "arbitrary code); re-save it as a plain state_dict with torch.save"
            )
        return f"{path}: {what} unreadable, truncated or corrupt ({type(e).__name__}: {str(e).splitlines()[0]})"
    return None


def input_problems(
    specs: Any, checkpoints: Mapping[str, str | os.PathLike | None] | Sequence[Any] | None = None
) -> list[str]:
    """Every problem of the datalist sections in ``specs`` and of the ``checkpoints`` (see the module docstring).

    Args:
        specs: one spec dict or (nested) lists of them; see the module docstring.
        checkpoints: ``{what: path}`` (or a list of paths) of checkpoints the run loads; None entries are skipped.
    """
    problems: list[str] = []
    for spec in _flatten(specs):
        unknown = set(spec) - SPEC_KEYS
        if unknown or "datalist" not in spec:
            raise ValueError(f"input spec {dict(spec)} needs 'datalist' and only keys from {sorted(SPEC_KEYS)}")
        path = spec["datalist"]
        if path in (None, ""):
            continue
        path = str(path)
        sections = spec.get("sections") or [spec.get("section", "training")]
        labels = spec.get("labels")
        if Path(path).is_file():
            try:
                labels = label_convention_of(path, labels)
            except ValueError as e:  # a JSON error is reported by validate_datalist below
                if "not valid JSON" not in str(e) and "JSON object" not in str(e):
                    problems.append(str(e))
                    continue
        lines = validate_datalist(
            path,
            labels=labels,
            require_tumour=bool(spec.get("require_tumour", False)),
            sections=[str(s) for s in sections],
            select=spec.get("modalities"),
            require=spec.get("require") or (),
            check_keys=spec.get("keys"),
        )
        problems += [line if line.startswith(path) or f"({path} " in line else f"{line} [{path}]" for line in lines]
    if checkpoints:
        pairs = checkpoints.items() if isinstance(checkpoints, Mapping) else [("checkpoint", c) for c in checkpoints]
        seen: set[str] = set()
        for what, ckpt in pairs:
            if ckpt in (None, "") or str(ckpt) in seen:
                continue
            seen.add(str(ckpt))
            problem = check_checkpoint(ckpt, str(what))
            if problem:
                problems.append(problem)
    return problems


def check_inputs(
    specs: Any,
    checkpoints: Mapping[str, str | os.PathLike | None] | Sequence[Any] | None = None,
    skip: bool = False,
    what: str = "inputs",
) -> int:
    """Check every input of a run before it writes anything; end the process listing every problem.

    Args:
        specs: datalist sections the run reads (see the module docstring).
        checkpoints: checkpoints the run loads, ``{what: path}``.
        skip: do not check (the ``skip_checks`` escape hatch: UNSAFE, a bad file then fails mid-run or, for NaN
            voxels, silently ruins the model).
        what: the run, for the first line of the message (e.g. ``dtss_mas_seg training``).

    Returns:
        the number of datalist sections checked.

    Raises:
        InputCheckError: (a SystemExit with status 1) listing every problem, one per line.
    """
    specs = list(_flatten(specs))
    if skip:
        logger.warning(f"{what}: input checks SKIPPED (skip_checks: true) - unsafe, bad files are not detected")
        return 0
    problems = input_problems(specs, checkpoints)
    if problems:
        # whatever the run logged so far goes out first: the list must be the last thing printed
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        raise InputCheckError(problems, what)
    logger.info(f"{what}: inputs checked ({len(specs)} datalist section(s), every file sound)")
    return len(specs)


def report_inputs(stage: str, **sections: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Log how many cases each input of a run holds and return the counts: the named `initialize` step that
    resolves a bundle's item lists (loading, hence checking, them) before anything is written.

    Args:
        stage: name for the log line, e.g. ``"tf_gan training"``.
        sections: named item lists, e.g. ``coarse=@coarse_items``.
    """
    counts = {name: len(items) for name, items in sections.items()}
    logger.info(f"{stage}: " + ", ".join(f"{n} {name} cases" for name, n in counts.items()))
    return counts
