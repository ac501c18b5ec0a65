"""Reading and writing index files of format version 2 with one checksum pass (docs/index.md).

The file is an uncompressed zip of ``.npy`` members, as ``np.savez`` writes (``np.load`` and
``zipfile`` read it), but written and read here without a second pass over the bytes: the CRC-32
of each member is computed once, by a thread while the member is being written, and is both the
zip's CRC and the checksum recorded in the ``__meta__`` member (written last). Reading copies each
member's bytes straight into its array and computes the CRC once over them; a memory-mapped read
computes it over the mapping. zlib's CRC-32 catches any flipped bit or burst of up to 32 bits; it
is a check against corruption, not against someone forging a file.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, Mapping

import numpy as np

from cmhash.io import META_KEY, atomic_write

_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01 00:00: files do not depend on the clock
_ZIP64_EXTRA_LOCAL = struct.Struct("<HHQQ")  # tag 1, size 16, uncompressed and compressed sizes
_ZIP64_EXTRA_CENTRAL = struct.Struct("<HHQQQ")  # ... and the local header's offset


def crc_text(crc: int) -> str:
    return f"crc32:{crc:08x}"


def _npy_header(arr: np.ndarray) -> bytes:
    """The ``.npy`` magic and header of ``arr`` (version 1.0 where it fits, as numpy writes)."""
    buf = io.BytesIO()
    header = np.lib.format.header_data_from_array_1_0(arr)
    try:
        np.lib.format.write_array_header_1_0(buf, header)
    except ValueError:  # a header over 64 KiB
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, header)
    return buf.getvalue()


def _payload(arr: np.ndarray) -> memoryview:
    """The C-order bytes of ``arr`` without a copy (contiguous input)."""
    return memoryview(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))


_EARLY_SYNC_BYTES = 8 << 20  # from this many payload bytes, flush them to disk while the CRCs finish


def _write_member(fh: BinaryIO, name: str, header: bytes, payload: memoryview, pool):
    """Write one stored zip member with a zero CRC; return (local header offset, size, future
    of its CRC), the CRC computed by a thread while the bytes are written."""
    offset = fh.tell()
    size = len(header) + len(payload)
    crc_job = pool.submit(lambda: zlib.crc32(payload, zlib.crc32(header)))  # zlib releases the GIL
    name_b = name.encode()
    fh.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, _DOS_DATE, 0, 0xFFFFFFFF, 0xFFFFFFFF,
                         len(name_b), _ZIP64_EXTRA_LOCAL.size))
    fh.write(name_b)
    fh.write(_ZIP64_EXTRA_LOCAL.pack(1, 16, size, size))
    fh.write(header)
    fh.write(payload)
    return offset, size, crc_job


def _set_crc(fh: BinaryIO, offset: int, crc: int) -> None:
    """Fill in the CRC field of the local header at ``offset``, then return to the end."""
    end = fh.seek(0, io.SEEK_END)
    fh.seek(offset + 14)
    fh.write(struct.pack("<I", crc))
    fh.seek(end)


def write(path: str | Path, arrays: Mapping[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write ``arrays`` and ``meta`` atomically; ``meta["checksums"]`` gets each array's CRC.

    Large files are fsynced once before the CRCs are awaited, so the disk writes the bytes while
    the CRC thread finishes; the final fsync (:func:`cmhash.io.atomic_write`) then covers only the
    headers, the metadata and the zip directory."""
    if META_KEY in arrays:
        raise ValueError(f"array name '{META_KEY}' is reserved")
    entries = []
    with atomic_write(path) as fh, ThreadPoolExecutor(1) as pool:
        pending = []
        for name, arr in arrays.items():
            arr = np.asarray(arr)
            if arr.dtype == object:
                raise ValueError(f"array '{name}' has dtype object; only plain numeric arrays are saved")
            pending.append((name, *_write_member(fh, name + ".npy", _npy_header(arr), _payload(arr), pool)))
        if fh.tell() >= _EARLY_SYNC_BYTES:
            fh.flush()
            os.fsync(fh.fileno())
        checksums = {}
        for name, offset, size, crc_job in pending:
            crc = crc_job.result()
            _set_crc(fh, offset, crc)
            entries.append((name + ".npy", offset, size, crc))
            checksums[name] = crc_text(crc)
        record = np.frombuffer(json.dumps({**meta, "checksums": checksums}, sort_keys=True).encode(), np.uint8)
        offset, size, crc_job = _write_member(fh, META_KEY + ".npy", _npy_header(record), _payload(record), pool)
        crc = crc_job.result()
        _set_crc(fh, offset, crc)
        entries.append((META_KEY + ".npy", offset, size, crc))
        directory = fh.tell()
        for name, offset, size, crc in entries:
            name_b = name.encode()
            fh.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, _DOS_DATE, crc, 0xFFFFFFFF,
                                 0xFFFFFFFF, len(name_b), _ZIP64_EXTRA_CENTRAL.size, 0, 0, 0, 0, 0xFFFFFFFF))
            fh.write(name_b)
            fh.write(_ZIP64_EXTRA_CENTRAL.pack(1, 24, size, size, offset))
        end = fh.tell()
        n = len(entries)
        fh.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, end - directory, directory))
        fh.write(struct.pack("<IIQI", 0x07064B50, 0, end, 1))
        fh.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0))


def locate(fh: BinaryIO, info: zipfile.ZipInfo) -> tuple[bytes, tuple, np.dtype, int]:
    """(the member's .npy header bytes, shape, dtype, offset of its data) for a stored member."""
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError(f"member {info.filename} is compressed")
    fh.seek(info.header_offset)
    local = fh.read(30)
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise ValueError(f"bad zip member header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    fh.seek(start)
    version = np.lib.format.read_magic(fh)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(fh)
    data = fh.tell()
    if fortran or dtype.hasobject:
        raise ValueError(f"member {info.filename} is not a C-ordered plain array")
    fh.seek(start)
    return fh.read(data - start), tuple(shape), dtype, data


def read_meta(path: str | Path) -> dict[str, Any]:
    """The ``__meta__`` record of an index file (any format version)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with zipfile.ZipFile(path) as zf, zf.open(META_KEY + ".npy") as member:  # small: zipfile checks its CRC
            return json.loads(np.lib.format.read_array(member, allow_pickle=False).tobytes().decode())
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a readable cmhash index (corrupt or truncated?): {exc}") from exc


def read_arrays(path: str | Path, meta: dict[str, Any], *, mmap: tuple[str, ...] = (),
                verify: bool = True) -> dict[str, np.ndarray]:
    """The arrays listed in ``meta["checksums"]``, each read with one pass (or mapped read-only
    from the file when named in ``mmap``); ``verify`` checks each against its CRC-32."""
    path = Path(path)
    checksums = meta.get("checksums")
    if not isinstance(checksums, dict):
        raise ValueError(f"{path}: the index metadata has no checksums")
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            infos = {info.filename: info for info in zf.infolist()}
        size = path.stat().st_size
        with open(path, "rb") as fh:
            for name, expected in checksums.items():
                info = infos.get(f"{name}.npy")
                if info is None:
                    raise ValueError(f"member {name}.npy is missing")
                header, shape, dtype, offset = locate(fh, info)
                nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                if offset + nbytes > size:
                    raise ValueError(f"the file ends before {name} does")
                if name in mmap and nbytes:
                    arr = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
                else:
                    arr = np.empty(shape, dtype)
                    fh.seek(offset)
                    if nbytes and fh.readinto(_payload(arr)) != nbytes:
                        raise ValueError(f"the file ends before {name} does")
                if verify and crc_text(zlib.crc32(_payload(arr), zlib.crc32(header))) != expected:
                    raise _Mismatch(f"{path}: checksum mismatch: '{name}' is corrupt")
                arrays[name] = arr
    except _Mismatch as exc:
        raise ValueError(str(exc)) from None
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable cmhash index (corrupt or truncated?): {exc}") from exc
    return arrays


class _Mismatch(Exception):
    pass
