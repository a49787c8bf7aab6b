"""Seeded application of random transforms: a draw that depends on a given seed, not on the processing order.

MONAI seeds random transforms per DataLoader worker (and once per ``set_random_state``), not per item; TF-Aug
synthesis needs case ``i`` to be the same in any run, order or worker, hence these wrappers.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, Transform


class ApplySeeded(Transform):
    """Apply a random transform with a given seed: ``transform.set_random_state(seed=seed)``, then the call.

    The same data and seed always give the same result, whatever ran before.

    Args:
        transform: the random transform (a ``Randomizable``, e.g. a ``Compose`` of random transforms).
    """

    def __init__(self, transform: Callable) -> None:
        if not isinstance(transform, Randomizable):
            raise TypeError(f"ApplySeeded needs a Randomizable transform, got {type(transform).__name__}")
        self.transform = transform

    def __call__(self, data: Any, seed: int) -> Any:
        """
        Args:
            data: the transform's input (an array, or a dict for a dictionary transform).
            seed: seed of this call (an integer in [0, 2**32)).
        """
        self.transform.set_random_state(seed=int(seed))
        return self.transform(data)


class ApplySeededd(MapTransform):
    """Dictionary version of :class:`ApplySeeded`: the seed is the item's own value under ``keys``.

    The wrapped (dictionary) transform gets the whole item; the item passed in is not modified.

    Args:
        keys: the key of the seed in each item (one key).
        transform: the random dictionary transform.
        allow_missing_keys: leave an item without a seed unchanged instead of raising.
    """

    def __init__(self, keys: KeysCollection, transform: Callable, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"ApplySeededd needs exactly one seed key, got {list(self.keys)}")
        self.apply = ApplySeeded(transform)

    def __call__(self, data: Mapping[Hashable, Any]) -> Any:
        d = dict(data)
        for key in self.key_iterator(d):  # raises KeyError naming the key when it is missing
            return self.apply(d, d[key])
        return d
