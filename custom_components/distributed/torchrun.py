"""What the bundles need on several processes (``torchrun``) beyond ``ignite.distributed`` and MONAI.

Rank, world size, barrier, all-gather and all-reduce are ``ignite.distributed`` (``idist``), which also works in
one process (rank 0 of 1); sharding is MONAI's ``partition_dataset``. This module adds only:

* :func:`init_distributed`: ``idist.initialize`` from torchrun's environment, refusing (or, with
  ``required=False``, skipping) a process torchrun did not start, with ``nccl`` on CUDA and ``gloo`` otherwise;
  :func:`destroy_distributed` / :func:`barrier` return True so they can sit in a bundle's expression lists;
* :func:`process_device`: ``cuda:<LOCAL_RANK>`` or ``cpu``, known before the process group exists (``idist.device``
  is ``cuda`` without a group);
* sharded synthesis / refinement: :func:`shard_items` (``partition_dataset`` without padding or shuffling, so every
  item goes to exactly one rank), :func:`shard_path` names the rank's shard datalist and
  :func:`finish_sharded_run` / :func:`merge_shard_datalists` merge the shards into one datalist (rank 0, after a
  barrier), checking that every case appears exactly once.

Handlers that only write carry ``_disabled_: "@is_not_rank0"`` in the configs (MONAI's convention); Ignite's
``DiskSaver`` (under MONAI's ``CheckpointSaver``) writes on rank 0 by itself.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from monai.data import partition_dataset

from custom_components.data.datalist import read_datalist, write_datalist

logger = logging.getLogger(__name__)

TORCHRUN_ENV: tuple[str, ...] = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def process_device() -> torch.device:
    """The device of this process: ``cuda:<LOCAL_RANK>`` when CUDA is available, else ``cpu`` (before or
    without a process group)."""
    return (
        torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
        if torch.cuda.is_available()
        else torch.device("cpu")
    )


def init_distributed(backend: str | None = None, timeout_s: float | None = None, required: bool = True) -> bool:
    """``idist.initialize`` from torchrun's environment (``env://``), once; the process's GPU becomes current.

    Args:
        backend: ``nccl`` or ``gloo``; default ``nccl`` when CUDA is available, else ``gloo``.
        timeout_s: timeout of collective operations in seconds (default: PyTorch's).
        required: raise when the process was not started by torchrun; when False such a process runs alone
            (no process group; rank 0 of 1).

    Returns:
        Whether a process group is initialised (so the call can sit in a bundle's ``initialize`` list).

    Raises:
        RuntimeError when ``required`` and torchrun's environment variables are missing.
    """
    if idist.model_name() != "serial":
        return True
    missing = [k for k in TORCHRUN_ENV if k not in os.environ]
    if missing:
        if not required:
            return False
        raise RuntimeError(
            f"multi-process configs need torchrun's environment ({', '.join(missing)} not set); start with "
            "`torchrun --nproc_per_node=N -m monai.bundle run ...`"
        )
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    kwargs: dict[str, Any] = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=float(timeout_s))}
    idist.initialize(backend, **kwargs)
    logger.info(f"process group initialised: rank {idist.get_rank()} of {idist.get_world_size()}, backend {backend}")
    return True


def destroy_distributed() -> bool:
    """``idist.finalize`` (destroys the process group, if any); returns True (for a bundle's ``finalize`` list)."""
    idist.finalize()
    return True


def barrier() -> bool:
    """``idist.barrier`` (no-op in one process); returns True (for bundle expression lists)."""
    idist.barrier()
    return True


# -- sharding ------------------------------------------------------------------------------------------
def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    rank = idist.get_rank() if rank is None else int(rank)
    world_size = idist.get_world_size() if world_size is None else int(world_size)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
    return rank, world_size


def shard_items(items: Sequence[Any], rank: int | None = None, world_size: int | None = None) -> list[Any]:
    """The items of ``rank``: MONAI's ``partition_dataset`` without shuffling or padding, i.e. every item ``i`` with
    ``i % world_size == rank`` (each item goes to exactly one rank).

    Args:
        items: all items, in their canonical order.
        rank: this rank (default: of the process group, 0 without one).
        world_size: number of ranks (default: of the process group, 1 without one).

    Raises:
        ValueError when there are fewer items than ranks (a rank would have nothing to do).
    """
    rank, world_size = _rank_world(rank, world_size)
    if len(items) < world_size:
        raise ValueError(f"{len(items)} case(s) cannot be shared by {world_size} processes; start at most {len(items)}")
    return list(partition_dataset(list(items), num_partitions=world_size, shuffle=False, even_divisible=False)[rank])


def shard_path(path: str | os.PathLike, rank: int | None = None, world_size: int | None = None) -> Path:
    """Where rank ``rank`` writes its part of the datalist ``path``: ``<stem>.shard<r>-of-<w><suffix>`` beside it.

    Args:
        path: the merged datalist.
        rank, world_size: as for :func:`shard_items`.
    """
    rank, world_size = _rank_world(rank, world_size)
    path = Path(path)
    return path.with_name(f"{path.stem}.shard{rank:03d}-of-{world_size:03d}{path.suffix}")


def merge_shard_datalists(
    datalist_path: str | os.PathLike,
    world_size: int | None = None,
    case_ids: Sequence[str] | None = None,
    section: str = "training",
    remove_shards: bool = True,
) -> Path:
    """Merge the shard datalists written by ``world_size`` ranks into ``datalist_path``.

    The shards' metadata (every top-level key except ``section``) must agree. Every case must appear in
    exactly one shard; with ``case_ids`` the merged items must be exactly those cases and are written in
    that order (the order a single-process run writes), otherwise in shard order.

    Args:
        datalist_path: the merged datalist to write (the shards are :func:`shard_path` of it).
        world_size: number of shards (default: of the process group).
        case_ids: the expected case ids, in order.
        section: the datalist section holding the items.
        remove_shards: delete the shard datalists after the merged one is written.

    Raises:
        FileNotFoundError naming a missing shard; ValueError naming the shards of a case that appears twice,
        the missing / unexpected cases, or a shard whose metadata differs.
    """
    world_size = idist.get_world_size() if world_size is None else int(world_size)
    shards = [shard_path(datalist_path, r, world_size) for r in range(world_size)]
    meta: dict[str, Any] | None = None
    items: dict[str, dict[str, Any]] = {}
    origin: dict[str, Path] = {}
    for shard in shards:
        data = read_datalist(shard)
        if section not in data or not isinstance(data[section], list):
            raise ValueError(f"{shard}: shard datalist has no {section!r} section")
        rest = {k: v for k, v in data.items() if k != section}
        if meta is None:
            meta = rest
        elif rest != meta:
            raise ValueError(f"{shard}: metadata differs from {shards[0]} ({sorted(rest)} vs {sorted(meta)})")
        for item in data[section]:
            cid = str(item["case_id"])
            if cid in items:
                raise ValueError(f"case {cid!r} appears in two shards: {origin[cid]} and {shard}")
            items[cid] = item
            origin[cid] = shard
    if case_ids is not None:
        expected = [str(c) for c in case_ids]
        missing = [c for c in expected if c not in items]
        unexpected = sorted(set(items) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"{datalist_path}: shards of {world_size} rank(s) do not hold every case exactly once "
                f"(missing: {missing}, unexpected: {unexpected})"
            )
        ordered = [items[c] for c in expected]
    else:
        ordered = list(items.values())
    merged = {**(meta or {}), section: ordered}
    out = write_datalist(datalist_path, merged)
    if remove_shards:
        for shard in shards:
            shard.unlink()
    logger.info(f"merged {world_size} shard datalist(s), {len(ordered)} case(s): {out}")
    return out


def finish_sharded_run(
    datalist_path: str | os.PathLike,
    case_ids: Sequence[str] | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    section: str = "training",
) -> Path:
    """End of a sharded run: wait for every rank, merge the shard datalists on rank 0, wait again.

    Under torchrun, after it returns on any rank ``datalist_path`` holds every case exactly once. Without a
    process group (shards run one after the other, e.g. on machines of a cluster without a shared process
    group) the barriers are no-ops and the shard of rank 0 merges, so run it last.

    Args:
        datalist_path: the merged datalist.
        case_ids: the expected case ids, in order (see :func:`merge_shard_datalists`).
        rank, world_size: as for :func:`shard_items`.
        section: the datalist section holding the items.
    """
    rank, world_size = _rank_world(rank, world_size)
    barrier()
    try:
        if rank == 0:
            merge_shard_datalists(datalist_path, world_size, case_ids, section)
    finally:
        barrier()
    return Path(datalist_path)
