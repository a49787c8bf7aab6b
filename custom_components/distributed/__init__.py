"""Running the bundles on several processes (``torchrun``): what ``ignite.distributed`` and MONAI's
``partition_dataset`` lack (see :mod:`custom_components.distributed.torchrun`)."""

from custom_components.distributed.torchrun import (
    barrier,
    destroy_distributed,
    finish_sharded_run,
    init_distributed,
    merge_shard_datalists,
    process_device,
    shard_items,
    shard_path,
)

__all__ = [
    "barrier",
    "destroy_distributed",
    "finish_sharded_run",
    "init_distributed",
    "merge_shard_datalists",
    "process_device",
    "shard_items",
    "shard_path",
]
