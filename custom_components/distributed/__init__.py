"""Running the bundles on several processes (``torchrun``): what ``ignite.distributed`` and MONAI's
``partition_dataset`` lack (see :mod:`custom_components.distributed.torchrun`)."""

from custom_components.distributed.torchrun import (
    all_gather_objects,
    all_reduce_sum,
    barrier,
    destroy_distributed,
    finish_sharded_run,
    get_rank,
    get_world_size,
    init_distributed,
    merge_case_values,
    merge_shard_datalists,
    process_device,
    shard_items,
    shard_path,
)

__all__ = [
    "all_gather_objects",
    "all_reduce_sum",
    "barrier",
    "destroy_distributed",
    "finish_sharded_run",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "merge_case_values",
    "merge_shard_datalists",
    "process_device",
    "shard_items",
    "shard_path",
]
