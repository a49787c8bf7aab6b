"""``python -m custom_components nnunet-train`` / ``nnunet-predict``: nnU-Net v2's commands with this project's trainers.

nnU-Net looks a trainer up by name with ``recursive_find_trainer_class_by_name``, which imports every module of
its own ``nnunetv2.training.nnUNetTrainer`` package (and ``$nnUNet_extTrainer``). :func:`register` puts a lookup in
its place that answers the names of :data:`TRAINERS` with this project's classes and passes every other name to
nnU-Net's. When torchvision cannot be imported (a CPU-only torch has no matching torchvision on PyPI: the CUDA
build nnU-Net's dependency timm pulls in fails with ``operator torchvision::nms does not exist``, so the ``[nnunet]``
setup removes it), it also makes nnU-Net skip its Primus trainer modules, the only ones that import timm (and so
torchvision); nnU-Net's U-Nets use neither.

:func:`run` then calls ``nnUNetv2_train`` / ``nnUNetv2_predict``'s own entry points with the given arguments, so
the commands take exactly theirs (``-h`` prints them).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from collections.abc import Callable, Sequence

__all__ = ["COMMANDS", "TRAINERS", "register", "run"]

# trainer names this launcher adds -> the module that defines them
TRAINERS: dict[str, str] = {
    "nnUNetTrainerDTSS": "custom_components.nnunet.trainers",
    "nnUNetTrainerDTSSMAS": "custom_components.nnunet.trainers",
}
# command -> (module, entry point) of nnU-Net's console script
COMMANDS: dict[str, tuple[str, str]] = {
    "nnunet-train": ("nnunetv2.run.run_training", "run_training_entry"),
    "nnunet-predict": ("nnunetv2.inference.predict_from_raw_data", "predict_entry_point"),
}
_PRIMUS = "nnunetv2.training.nnUNetTrainer.primus."
# modules that bind nnU-Net's trainer lookup by name
_LOOKUP_USERS = (
    "nnunetv2.utilities.find_objects",
    "nnunetv2.run.run_training",
    "nnunetv2.inference.predict_from_raw_data",
)


class _SkipPrimus(importlib.abc.MetaPathFinder):
    """Refuses nnU-Net's Primus trainer modules the way nnU-Net's lookup skips a module it cannot import as itself."""

    def find_spec(self, name: str, path: Sequence[str] | None = None, target: object = None) -> None:
        if name.startswith(_PRIMUS):
            raise ModuleNotFoundError(f"{name} skipped: it needs torchvision, which cannot be imported", name=name)
        return None


def torchvision_usable() -> bool:
    """Whether ``import torchvision`` works (absent or built for another torch: False)."""
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        importlib.import_module("torchvision")
    except Exception:
        return False
    return True


def _lookup(original: Callable[[str], type]) -> Callable[[str], type]:
    def find_trainer(trainer_name: str) -> type:
        if trainer_name in TRAINERS:
            return getattr(importlib.import_module(TRAINERS[trainer_name]), trainer_name)
        return original(trainer_name)

    find_trainer.tumorfab_original = original  # type: ignore[attr-defined]
    return find_trainer


def register() -> None:
    """Make nnU-Net's trainer lookup find :data:`TRAINERS` (and skip the Primus modules without torchvision).

    Idempotent; affects this process only (nnU-Net's DDP training on several GPUs spawns processes without it).
    """
    if not torchvision_usable() and not any(isinstance(f, _SkipPrimus) for f in sys.meta_path):
        sys.meta_path.insert(0, _SkipPrimus())
    find_objects = importlib.import_module(_LOOKUP_USERS[0])
    current = find_objects.recursive_find_trainer_class_by_name
    original = getattr(current, "tumorfab_original", current)
    lookup = _lookup(original)
    for name in _LOOKUP_USERS:
        importlib.import_module(name).recursive_find_trainer_class_by_name = lookup


def run(command: str, argv: Sequence[str]) -> None:
    """Run nnU-Net's ``nnUNetv2_train`` (``nnunet-train``) or ``nnUNetv2_predict`` (``nnunet-predict``) on ``argv``.

    Args:
        command: ``nnunet-train`` or ``nnunet-predict``.
        argv: the arguments nnU-Net's command takes.
    """
    if command not in COMMANDS:
        raise ValueError(f"command must be one of {sorted(COMMANDS)}, got {command!r}")
    register()
    module, entry = COMMANDS[command]
    sys.argv = [f"python -m custom_components {command}", *argv]
    getattr(importlib.import_module(module), entry)()
