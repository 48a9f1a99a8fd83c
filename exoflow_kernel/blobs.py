"""Checkpoint payloads: checksummed blobs, as files or inline bytes.

A blob is ``MAGIC | header | pickle | buffers... | crc32``. Large arrays travel
as pickle-5 out-of-band buffers, written straight from their memory (no copy),
so a big NumPy checkpoint costs about what the disk costs. Files are written to
a temporary name, fsynced and renamed, so a reader sees a whole blob or none;
any damage (truncation, a flipped byte, a missing file) reads as
:class:`BlobUnreadable`, which the engine treats as "no checkpoint".
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import threading
import zlib
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import cloudpickle

MAGIC = b"EXOBLOB1"
_PARALLEL_CRC = 4 * 1024 * 1024  # above this, checksum while writing
INLINE_LIMIT = 64 * 1024  # smaller payloads ride in the group commit instead of a file
_HEAD = struct.Struct("<IQ")  # number of buffers, pickle length
_LEN = struct.Struct("<Q")
_CRC = struct.Struct("<I")


class BlobUnreadable(Exception):
    """The blob is missing, truncated or fails its checksum."""


def dumps(value: Any, out_of_band: bool = False) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickle for another process: the C pickler when it can (several times faster on
    plain data), else cloudpickle, which also handles lambdas, classes made at run time
    and anything referring to ``__main__`` (a notebook's functions exist only there)."""
    buffers: list[pickle.PickleBuffer] = []
    try:
        body = pickle.dumps(value, protocol=5, buffer_callback=buffers.append if out_of_band else None)
        if b"__main__" not in body:
            return body, buffers
    except (pickle.PicklingError, AttributeError, TypeError):
        pass
    buffers = []
    return cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append if out_of_band else None), buffers


def dumps_parts(value: Any) -> list[memoryview]:
    """Pickle ``value`` into parts that can be written without copying big buffers."""
    body, buffers = dumps(value, out_of_band=True)
    raws = [b.raw() for b in buffers]
    head = _HEAD.pack(len(raws), len(body)) + b"".join(_LEN.pack(r.nbytes) for r in raws)
    return [memoryview(MAGIC + head), memoryview(body), *raws]


def total_size(parts: list[memoryview]) -> int:
    return sum(p.nbytes for p in parts) + _CRC.size


def to_bytes(parts: list[memoryview]) -> bytes:
    """Join parts into one inline blob (for small payloads)."""
    out = io.BytesIO()
    crc = 0
    for part in parts:
        out.write(part)
        crc = zlib.crc32(part, crc)
    out.write(_CRC.pack(crc))
    return out.getvalue()


def write_file(path: Path, parts: list[memoryview]) -> int:
    """Write a blob durably (temp name, fsync, rename); return its crc32."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    checksum = _crc_beside(parts)
    try:
        with open(tmp, "wb", buffering=0) as f:
            for part in parts:
                f.write(part)
            crc = checksum()
            f.write(_CRC.pack(crc))
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not stay full of our half-written blob
        raise
    return crc


def _crc_beside(parts: list[memoryview]) -> Callable[[], int]:
    """Start the checksum of ``parts``; the returned function waits for it.

    zlib.crc32 and file writes both release the GIL, so for a big blob the crc is
    computed in a thread while the bytes go to disk: the cost is the slower of the
    two, not their sum (crc32 alone runs at about disk speed here).
    """
    def crc_of() -> int:
        crc = 0
        for part in parts:
            crc = zlib.crc32(part, crc)
        return crc

    if sum(p.nbytes for p in parts) < _PARALLEL_CRC:
        crc = crc_of()
        return lambda: crc
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(crc_of()), daemon=True)
    worker.start()

    def wait() -> int:
        worker.join()
        return result[0]

    return wait


def loads(data: bytes | memoryview) -> Any:
    """Check and unpickle a whole blob held in memory."""
    view = memoryview(data)
    if len(view) < len(MAGIC) + _HEAD.size + _CRC.size or bytes(view[: len(MAGIC)]) != MAGIC:
        raise BlobUnreadable("not an ExoFlow blob (bad header or too short)")
    (crc,) = _CRC.unpack(view[-_CRC.size:])
    if zlib.crc32(view[: -_CRC.size]) != crc:
        raise BlobUnreadable("checksum mismatch (the file was changed or cut short)")
    pos = len(MAGIC)
    nbuf, body_len = _HEAD.unpack_from(view, pos)
    pos += _HEAD.size
    lengths = [_LEN.unpack_from(view, pos + i * _LEN.size)[0] for i in range(nbuf)]
    pos += nbuf * _LEN.size
    body = view[pos : pos + body_len]
    pos += body_len
    buffers = []
    for n in lengths:
        buffers.append(view[pos : pos + n])
        pos += n
    if pos != len(view) - _CRC.size:
        raise BlobUnreadable("length mismatch (the file was cut short)")
    return pickle.loads(body, buffers=buffers)


def read_file(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            data = bytearray(os.fstat(f.fileno()).st_size)
            f.readinto(data)
    except FileNotFoundError as exc:
        raise BlobUnreadable(f"file is missing: {path}") from exc
    return loads(data)


def blob_path(root: Path, workflow_id: str, task_id: str, run: int) -> Path:
    """Where a task's checkpoint of a given run lives (ids quoted to be file-safe)."""
    return root / quote(workflow_id, safe="") / f"{quote(task_id, safe='')}.r{run}.blob"


def started_log(root: Path, workflow_id: str) -> Path:
    """The append-only file where workers note each task they start."""
    return root / quote(workflow_id, safe="") / "started.log"


def read_started(root: Path, workflow_id: str) -> dict[str, set[int]]:
    """task_id -> runs in which it started (a torn last line is ignored)."""
    out: dict[str, set[int]] = {}
    try:
        text = started_log(root, workflow_id).read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        task_id, _, run = line.rpartition("\t")
        if task_id and run.isdigit():
            out.setdefault(task_id, set()).add(int(run))
    return out
