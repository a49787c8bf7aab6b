"""TF-Aug's learnable intensity modification I(x) = a_c x + b_c per tumour class (Tumor Fabrication, section 2.1).

:class:`ClasswiseIntensity` is the trainable ``nn.Module`` (one ``a`` and ``b`` per class NCR, ED, ET and per
image channel; identity outside the tumour classes) that the tf_aug bundle trains through the frozen
feature extractor F; the tf_aug synthesis (a MONAI ``SupervisedEvaluator``) runs the learned module as its network,
``network(image, label)``.

Parameters are saved as a ``state_dict`` (``.pt``) and as human-readable JSON::

    {"NCR": {"a": [1.02], "b": [-0.11]}, "ED": {"a": [...], "b": [...]}, "ET": {"a": [...], "b": [...]},
     "initial": {"method": "moments", "NCR": {"a": [...], "b": [...]}, ...}}

with one entry per image channel in ``a`` and ``b``; ``initial`` records where the training started (read back
by nothing: the learned values are the class entries).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from custom_components.data.atomic import atomic_path, atomic_write_text
from custom_components.data.labels import INTERNAL_CLASSES, TUMOUR_CLASSES

CLASS_NAMES: tuple[str, ...] = tuple(INTERNAL_CLASSES[c] for c in TUMOUR_CLASSES)  # NCR, ED, ET


def _init_table(value: float | Sequence[float] | Sequence[Sequence[float]], k: int, c: int, what: str) -> torch.Tensor:
    """A (classes, channels) table from a scalar, one value per class, or one list per class."""
    arr = np.asarray(value, dtype=np.float32)
    if arr.ndim == 0:
        return torch.full((k, c), float(arr))
    if arr.ndim == 1 and arr.shape[0] == k:
        return torch.as_tensor(np.repeat(arr[:, None], c, axis=1))
    if arr.shape == (k, c):
        return torch.as_tensor(arr.copy())
    raise ValueError(f"{what} must be a number, {k} numbers (one per class) or a {k}x{c} table, got shape {arr.shape}")


class ClasswiseIntensity(nn.Module):
    """Learnable per-class linear intensity map: ``y = a_c * x + b_c`` where ``label == c``, ``y = x`` elsewhere.

    Args:
        num_channels: image channels (modalities); each class has one ``a`` and ``b`` per channel.
        classes: label values that get their own parameters (default the internal 1 NCR, 2 ED, 3 ET).
        class_names: names used in JSON files and metrics (default NCR, ED, ET).
        a_init: initial scale: a number, one per class, or a (classes, channels) table.
        b_init: initial offset, same forms.
        channel_names: modality names for metric names (default ``ch0``, ``ch1``...).
        init_method: how ``a_init`` / ``b_init`` were chosen (``"given"``, ``"identity"``, ``"moments"``), recorded
            with the initial values in the JSON file.
    """

    def __init__(
        self,
        num_channels: int = 1,
        classes: Sequence[int] = TUMOUR_CLASSES,
        class_names: Sequence[str] = CLASS_NAMES,
        a_init: float | Sequence[float] | Sequence[Sequence[float]] = 1.0,
        b_init: float | Sequence[float] | Sequence[Sequence[float]] = 0.0,
        channel_names: Sequence[str] | None = None,
        init_method: str = "given",
    ) -> None:
        super().__init__()
        if num_channels < 1:
            raise ValueError(f"num_channels must be >= 1, got {num_channels}")
        self.classes = tuple(int(c) for c in classes)
        self.class_names = tuple(str(n) for n in class_names)
        if len(self.classes) != len(self.class_names) or not self.classes:
            raise ValueError(f"classes {self.classes} and class_names {self.class_names} must match and be non-empty")
        if any(c <= 0 for c in self.classes):
            raise ValueError(f"classes must be tumour labels (> 0), got {self.classes}")
        self.num_channels = int(num_channels)
        self.channel_names = (
            tuple(channel_names) if channel_names is not None else tuple(f"ch{i}" for i in range(num_channels))
        )
        if len(self.channel_names) != self.num_channels:
            raise ValueError(f"got {len(self.channel_names)} channel names for {num_channels} channels")
        k = len(self.classes)
        self.a = nn.Parameter(_init_table(a_init, k, self.num_channels, "a_init"))
        self.b = nn.Parameter(_init_table(b_init, k, self.num_channels, "b_init"))
        self.initial: dict[str, Any] = {"method": str(init_method), **self.to_dict()}

    def forward(self, x: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            x: images ``(B, C, *spatial)``; with ``label`` None, ``(B, C + 1, *spatial)``: the images followed by
                the label map as the last channel (the single-input form of the Model Zoo checks and TorchScript).
            label: internal labels ``(B, 1, *spatial)`` (or ``(B, *spatial)``).

        Returns:
            ``(B, C, *spatial)``: ``a_c * x + b_c`` inside class c, ``x`` elsewhere (differentiable in a, b).
        """
        if label is None:
            if x.ndim < 3 or x.shape[1] != self.num_channels + 1:
                raise ValueError(
                    f"expected (B, {self.num_channels} + 1, *spatial): images then the label channel, got {x.shape}"
                )
            label = x[:, self.num_channels :]
            x = x[:, : self.num_channels]
        if x.ndim < 3 or x.shape[1] != self.num_channels:
            raise ValueError(f"expected (B, {self.num_channels}, *spatial) images, got shape {x.shape}")
        if label.ndim == x.ndim - 1:
            label = label.unsqueeze(1)
        if label.shape[1] != 1 or label.shape[2:] != x.shape[2:] or label.shape[0] != x.shape[0]:
            raise ValueError(f"label shape {label.shape} does not match images {x.shape}")
        view = [1, self.num_channels] + [1] * (x.ndim - 2)
        out = x
        for k, c in enumerate(self.classes):
            inside = label == c
            out = torch.where(inside, x * self.a[k].view(view) + self.b[k].view(view), out)
        return out

    def to_dict(self) -> dict[str, dict[str, list[float]]]:
        """``{class name: {"a": [per channel], "b": [per channel]}}`` (JSON-ready)."""
        a, b = self.a.detach().cpu().double().numpy(), self.b.detach().cpu().double().numpy()
        return {n: {"a": a[k].tolist(), "b": b[k].tolist()} for k, n in enumerate(self.class_names)}

    def scalars(self) -> dict[str, float]:
        """Flat ``{"a_<class>_<channel>": value, "b_...": value}`` for metric loggers."""
        out: dict[str, float] = {}
        for name, table in (("a", self.a), ("b", self.b)):
            t = table.detach().cpu().double().numpy()
            for k, cn in enumerate(self.class_names):
                for j, ch in enumerate(self.channel_names):
                    out[f"{name}_{cn}_{ch}"] = float(t[k, j])
        return out

    def save(self, directory: str | os.PathLike, stem: str = "intensity") -> tuple[Path, Path]:
        """Write ``<directory>/<stem>.pt`` (state_dict) and ``<stem>.json`` atomically; returns both paths."""
        directory = Path(directory)
        pt, js = directory / f"{stem}.pt", directory / f"{stem}.json"
        with atomic_path(pt) as tmp:
            torch.save({k: v.detach().cpu() for k, v in self.state_dict().items()}, tmp)
        atomic_write_text(js, json.dumps({**self.to_dict(), "initial": self.initial}, indent=2) + "\n")
        return pt, js

    def load_dict(self, params: Mapping[str, Any], source: str = "parameters") -> ClasswiseIntensity:
        """Load ``{class name: {"a": [...], "b": [...]}}`` (as written by :meth:`to_dict`).

        Raises:
            ValueError naming ``source`` when a class is missing or a list has the wrong length.
        """
        a = torch.empty_like(self.a.data)
        b = torch.empty_like(self.b.data)
        for k, name in enumerate(self.class_names):
            entry = params.get(name)
            if not isinstance(entry, Mapping) or "a" not in entry or "b" not in entry:
                raise ValueError(
                    f"{source}: no 'a' and 'b' for class {name!r} (expected {{class: {{a: [...], b: [...]}}}})"
                )
            for table, key in ((a, "a"), (b, "b")):
                vals = np.atleast_1d(np.asarray(entry[key], dtype=np.float64))
                if vals.shape != (self.num_channels,) or not np.all(np.isfinite(vals)):
                    raise ValueError(
                        f"{source}: class {name!r} {key!r} must hold {self.num_channels} finite numbers "
                        f"(one per channel), got {entry[key]!r}"
                    )
                table[k] = torch.as_tensor(vals, dtype=table.dtype)
        with torch.no_grad():
            self.a.copy_(a)
            self.b.copy_(b)
        return self

    def load_file(self, path: str | os.PathLike | None, allow_identity: bool = False) -> ClasswiseIntensity:
        """Load learned parameters from ``.json`` (class -> a/b lists) or ``.pt`` (state_dict or checkpoint).

        Args:
            path: parameter file written by the tf_aug training (or an exported bundle's ``models/model.pt``).
            allow_identity: when ``path`` is None or missing, keep the current parameters (the identity a=1, b=0
                of a new module) instead of raising.

        Returns:
            this module.

        Raises:
            FileNotFoundError / ValueError naming the file when it is missing (and identity is not allowed),
            unreadable or does not fit the module's classes and channels.
        """
        if path is None or not os.path.isfile(path):
            if allow_identity:
                return self
            raise FileNotFoundError(
                f"{path}: learned intensity parameters not found; run the tf_aug training first, or set "
                "allow_identity_intensity: true to synthesise with a=1, b=0"
            )
        path = str(path)
        if path.endswith(".json"):
            try:
                params = json.loads(Path(path).read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from e
            if not isinstance(params, dict):
                raise ValueError(f"{path}: expected a JSON object {{class: {{a: [...], b: [...]}}}}")
            return self.load_dict(params, source=path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for a bad file
            raise ValueError(f"{path}: cannot read the parameter file ({e})") from e
        if isinstance(state, dict):
            for key in ("intensity", "network", "model"):
                if isinstance(state.get(key), dict):
                    state = state[key]
                    break
        if not isinstance(state, dict) or set(state) != {"a", "b"}:
            raise ValueError(f"{path}: expected a state_dict with 'a' and 'b', got {type(state).__name__}")
        if tuple(state["a"].shape) != tuple(self.a.shape) or tuple(state["b"].shape) != tuple(self.b.shape):
            raise ValueError(
                f"{path}: parameters of shape {tuple(state['a'].shape)} do not fit {len(self.classes)} classes x "
                f"{self.num_channels} channels"
            )
        self.load_state_dict(state)
        return self

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike | None,
        num_channels: int = 1,
        allow_identity: bool = False,
        channel_names: Sequence[str] | None = None,
    ) -> ClasswiseIntensity:
        """A new module with the parameters of ``path`` (see :meth:`load_file`); the identity when ``path`` is
        missing and ``allow_identity``.

        Args:
            path: parameter file written by the tf_aug training.
            num_channels: expected number of image channels.
            allow_identity: when ``path`` is None or missing, return the identity (a=1, b=0) instead of raising.
            channel_names: modality names.
        """
        return cls(num_channels=num_channels, channel_names=channel_names).load_file(path, allow_identity)
