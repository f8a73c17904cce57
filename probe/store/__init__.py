"""HDF5 run files: the layout, a crash-safe writer, a lazy reader, and shard combining. The
store stores; it computes nothing (``value_weighted`` is derived on read by the Example).

Modules, one job each (an arrow: the store modules it may import; any of them may also import
numpy, h5py, ``probe.names``, ``probe.errors`` and ``probe.lock``, and ``packing`` and
``reader`` import ``probe.captures``; none imports the rest of probe)::

    attrs.py    attribute values read and written one way                (none of these)
    errors.py   the store's exceptions; detaching a file whose writes fail (none of these)
    tensors.py  how a tensor sits in the file: dtype, checksum, chunks, unit -> attrs
    layout.py   the one description of the file: groups, datasets, index,
                attributes, run identity                                 -> tensors
    files.py    opening files safely, publishing, extending, the lock    -> layout, tensors, attrs, errors
    salvage.py  rows a kill left unreadable, given up before a resume    -> layout
    starting.py creating a run file, reopening one to resume             -> layout, tensors, attrs, files, salvage, errors
    triangles.py causal squares as packed lower triangles                -> tensors, errors
    packing.py  a batch cut, cast and checked for writing; its streams   -> layout, tensors, triangles
    writer.py   RunWriter: append or stream batches, commit, finish      -> layout, tensors, starting, files, packing, triangles, errors
    reader.py   Run and open_run: lazy reads, index and damage checks    -> layout, tensors, attrs, files, errors
    shards.py   combine: shards joined by virtual datasets, or copied    -> layout, tensors, attrs, files, errors

Everything public is importable from ``probe.store`` itself.
"""

from .errors import (CorruptRunError, DiskFullError, NotTriangularError, SchemaError, ShardError,
                     UnsafeRunError, WriteFailedError, is_disk_full, is_write_failure,
                     write_failed)
from .files import check_contents, check_schema, committed_on_disk, open_file
from .layout import (BYTE_STREAMS, FILE_README, INDEX_FIELDS, READABLE_VERSIONS, REQUIRED,
                     RESUME_MUST_MATCH, RUN_IDENTITY, SCHEMA, SCHEMA_VERSION, dataset_path,
                     index_problem, utc_now)
from .tensors import DTYPES, check_dtype, compression_args, unit_of
from .attrs import read_attr
from .reader import Run, decode_meta, open_run
from .shards import combine
from .packing import BatchRow
from .triangles import pack_triangles
from .writer import RunWriter

__all__ = [
    "BYTE_STREAMS", "DTYPES", "FILE_README", "INDEX_FIELDS", "READABLE_VERSIONS", "REQUIRED",
    "RESUME_MUST_MATCH", "RUN_IDENTITY", "SCHEMA", "SCHEMA_VERSION", "BatchRow", "CorruptRunError",
    "DiskFullError", "NotTriangularError", "Run", "RunWriter", "SchemaError", "ShardError",
    "UnsafeRunError", "WriteFailedError", "check_contents", "check_dtype", "check_schema",
    "combine", "committed_on_disk", "compression_args", "dataset_path", "decode_meta",
    "index_problem", "is_disk_full", "is_write_failure", "open_file", "open_run",
    "pack_triangles", "read_attr", "unit_of", "utc_now", "write_failed",
]
