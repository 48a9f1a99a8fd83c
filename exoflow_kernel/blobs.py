"""Checkpoint payloads: checksummed blobs, as files or inline bytes.

A blob is ``MAGIC | header | pickle | buffers... | crc32``. Large arrays travel
as pickle-5 out-of-band buffers, written straight from their memory (no copy),
in chunks, each checksummed as it goes, and the kernel starts writing them back
to the disk while the next ones are copied: a big NumPy checkpoint costs about
what the disk costs. Files are written to a temporary name, fsynced and
renamed, so a reader sees a whole blob or none;
any damage (truncation, a flipped byte, a missing file) reads as
:class:`BlobUnreadable`, which the engine treats as "no checkpoint".
"""

from __future__ import annotations

import ctypes
import io
import os
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote


MAGIC = b"EXOBLOB1"
_CHUNK = 1 << 20       # write + crc32 per chunk: the crc reads the chunk back from the CPU cache
_WRITEBACK = 8 << 20   # ask for write-back every this many bytes (sync_file_range)
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
    import cloudpickle  # ~10 ms: only a process that writes values pays it

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
    """Write a blob durably (temp name, fsync, rename); return its crc32.

    The bytes go out in 1 MB chunks, each checksummed right after its write, on
    the same core (a crc thread beside the write only helps with a core to spare,
    and competes with the write on a busy 2-core machine); every 8 MB the kernel is
    asked to start writing back what was written so far (``sync_file_range``,
    Linux; elsewhere a no-op). The final fsync then waits for little more than the
    last chunks, where one big write + fsync first copies everything into the page
    cache and only then starts the disk. ``bench/checkpoint.py`` measures it
    against that plain write + fsync + rename (README in bench/).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        try:
            crc, offset, kicked = 0, 0, 0
            for part in parts:
                view = part.cast("B") if part.format != "B" or part.ndim != 1 else part
                for start in range(0, view.nbytes, _CHUNK):
                    chunk = view[start : start + _CHUNK]
                    _write_all(fd, chunk)
                    crc = zlib.crc32(chunk, crc)
                    offset += chunk.nbytes
                    if offset - kicked >= _WRITEBACK:
                        _start_writeback(fd, kicked, offset - kicked)
                        kicked = offset
            _write_all(fd, memoryview(_CRC.pack(crc)))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not stay full of our half-written blob
        raise
    return crc


def _write_all(fd: int, view: memoryview) -> None:
    """os.write may write less than asked (a signal, a nearly full disk): go on until done,
    so a full disk ends in the OSError of the write that cannot start."""
    while view.nbytes:
        view = view[os.write(fd, view):]


def _sync_file_range() -> Callable[[int, int, int], None]:
    """``sync_file_range(fd, offset, n, SYNC_FILE_RANGE_WRITE)``: start write-back of that
    range without waiting for it (Linux). A no-op where libc lacks it or the filesystem
    refuses it; durability never depends on it (the fsync does that)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # this process's symbols: libc's, on Linux
        call = libc.sync_file_range
    except (OSError, AttributeError):
        return lambda fd, offset, n: None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    write = 2  # SYNC_FILE_RANGE_WRITE

    def start(fd: int, offset: int, n: int) -> None:
        call(fd, offset, n, write)  # a failure only means no head start

    return start


_start_writeback = _sync_file_range()


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


def worker_log(root: Path, workflow_id: str, kind: str = "started") -> Path:
    """The append-only file where workers note each task they start (or, for untracked
    tasks, that nobody waits on to report, each one they end: ``kind="ended"``)."""
    return root / quote(workflow_id, safe="") / f"{kind}.log"


def read_started(root: Path, workflow_id: str) -> dict[str, set[int]]:
    """task_id -> runs in which it started (a torn last line is ignored)."""
    out: dict[str, set[int]] = {}
    try:
        text = worker_log(root, workflow_id).read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        task_id, _, run = line.rpartition("\t")
        if task_id and run.isdigit():
            out.setdefault(task_id, set()).add(int(run))
    return out
