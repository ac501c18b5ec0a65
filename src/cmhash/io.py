"""Safe persistence: nothing a user saved is ever half-written (temp file, fsync, rename)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

META_KEY = "__meta__"
STALE_TEMP_AGE_S = 3600.0  # a temp file without a writer pid is stale after an hour


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temp file beside ``path``; on success fsync it and rename it over ``path``.

    On any error the temp file is removed and an existing ``path`` is left untouched. A writer
    killed outright (SIGKILL, power loss) cannot clean up: its temp file carries its pid
    (``.NAME.PID.XXXX.tmp``) and the next save or load of ``path`` removes it once that process is
    gone (:func:`remove_stale_temps`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        try:  # make the rename itself durable
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:  # pragma: no cover - some filesystems refuse directory fsync
            pass
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove temp files that killed saves of ``path`` left behind; return what was removed.

    A temp file named with a writer pid is stale when no process has that pid (a live pid, this
    process's included, may still be writing: kept). Temp files of older cmhash versions carry no
    pid and are removed once older than :data:`STALE_TEMP_AGE_S`.
    """
    path = Path(path)
    prefix = f".{path.name}."
    removed = []
    try:
        candidates = [p for p in path.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(".tmp")]
    except OSError:
        return removed
    for tmp in candidates:
        writer = tmp.name[len(prefix):].split(".", 1)[0]
        try:
            if writer.isdigit():
                if int(writer) == os.getpid() or _process_alive(int(writer)):
                    continue
            elif time.time() - tmp.stat().st_mtime < STALE_TEMP_AGE_S:
                continue
            tmp.unlink()
            removed.append(tmp)
        except OSError:  # gone already, or not ours to remove
            continue
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    except (OverflowError, OSError):
        return False
    return True


def arrays_checksum(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> str:
    """sha256 over named arrays (name, dtype, shape, bytes; in name order) and a JSON record."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}\x1f{a.dtype.str}\x1f{a.shape}\x1f".encode())
        h.update(a.tobytes())
    if meta is not None:  # as the file stores it: JSON turns int keys into strings, tuples into lists
        stored = json.loads(json.dumps(meta, default=_json_default))
        h.update(json.dumps(stored, sort_keys=True).encode())
    return h.hexdigest()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_write(path, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=_json_default)
        fh.write("\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_arrays(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    """Arrays plus a JSON metadata record in one ``.npz`` (no pickles), written atomically."""
    if META_KEY in arrays:
        raise ValueError(f"array name '{META_KEY}' is reserved")
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    for k, v in payload.items():
        if v.dtype == object:
            raise ValueError(f"array '{k}' has dtype object; only plain numeric arrays are saved")
    payload[META_KEY] = np.frombuffer(
        json.dumps(meta, sort_keys=True, default=_json_default).encode(), dtype=np.uint8
    )
    with atomic_write(path) as fh:
        np.savez(fh, **payload)


def load_arrays(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read what :func:`save_arrays` wrote; a corrupt or truncated file gives a clear error."""
    path = Path(path)
    remove_stale_temps(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise ValueError(f"{path}: not a readable cmhash file (corrupt or truncated?): {exc}") from exc
    if META_KEY not in arrays:
        raise ValueError(f"{path}: missing '{META_KEY}' record; not a file written by cmhash")
    try:
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: the metadata record is corrupt: {exc}") from exc
    return arrays, meta
