"""Rank and world size from the launcher that started this process: ``--shard auto``.

No process group, no barrier, no network: each rank reads its own place from the environment
that torchrun/accelerate, SLURM or MPI set, captures its shard on its own and can be restarted
on its own with ``--resume``. Checked in this order (the first complete pair wins):

| launcher | rank | world size |
|---|---|---|
| torchrun, accelerate | ``RANK`` | ``WORLD_SIZE`` |
| SLURM job array | ``SLURM_ARRAY_TASK_ID`` (minus ``SLURM_ARRAY_TASK_MIN``) | ``SLURM_ARRAY_TASK_COUNT`` |
| SLURM tasks (srun) | ``SLURM_PROCID`` | ``SLURM_NTASKS`` |
| Open MPI | ``OMPI_COMM_WORLD_RANK`` | ``OMPI_COMM_WORLD_SIZE`` |
| MPICH, Intel MPI (PMI) | ``PMI_RANK`` | ``PMI_SIZE`` |

Imports only :mod:`probe.errors` (and the standard library).

>>> shard_from_env({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "8"})
Launch(rank=3, world_size=8, local_rank=None, launcher='SLURM array')
>>> shard_from_env({})
Launch(rank=0, world_size=1, local_rank=None, launcher='none')
"""

from __future__ import annotations

import os
from typing import NamedTuple

from .errors import InputError

LAUNCHERS = (
    ("torchrun", "RANK", "WORLD_SIZE"),
    ("SLURM array", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"),
    ("SLURM", "SLURM_PROCID", "SLURM_NTASKS"),
    ("Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("PMI", "PMI_RANK", "PMI_SIZE"),
)


class Launch(NamedTuple):
    rank: int
    world_size: int
    local_rank: int | None
    launcher: str


def _int(env, name) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise InputError(f"--shard auto: {name}={env[name]!r} is not an integer") from None


def shard_from_env(environ=None) -> Launch:
    """This process's rank and world size from its launcher's environment (rank 0 of 1 when
    none is found)."""
    env = os.environ if environ is None else environ
    for launcher, rank_var, size_var in LAUNCHERS:
        if rank_var in env and size_var in env:
            rank, size = _int(env, rank_var), _int(env, size_var)
            if launcher == "SLURM array" and "SLURM_ARRAY_TASK_MIN" in env:
                rank -= _int(env, "SLURM_ARRAY_TASK_MIN")
            if not 0 <= rank < size:
                raise InputError(f"--shard auto: {rank_var}={rank} is outside 0..{size - 1} "
                                 f"({size_var}={size})")
            local = env.get("LOCAL_RANK", env.get("SLURM_LOCALID", env.get("OMPI_COMM_WORLD_LOCAL_RANK")))
            return Launch(rank, size, None if local is None else int(local), launcher)
    return Launch(0, 1, None, "none")


def shard_path(out: str, rank: int, world_size: int) -> str:
    """``DIR/shard-K-of-N.h5`` for an ``--out`` that names a folder (ends in ``/`` or exists
    as one); otherwise ``out`` itself.

    >>> shard_path("runs/", 2, 4)
    'runs/shard-2-of-4.h5'
    """
    if out.endswith(("/", os.sep)) or os.path.isdir(out):
        return os.path.join(out, f"shard-{rank}-of-{world_size}.h5")
    return out
