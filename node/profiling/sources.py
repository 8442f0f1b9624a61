"""Finding, hashing and reading dataset files in bounded-memory batches.

Every reader yields polars ``DataFrame`` batches of at most ``batch_rows`` rows so the
profiler's memory does not grow with the file. CSV cells are read as strings (types are
inferred later by the column profiler, which is what lets it measure consistency);
Parquet and JSONL keep their native types.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from domain.model.errors import InvalidInput

FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
BATCH_ROWS = 100_000
# JSONL is cut on line boundaries ourselves; a JSON line cannot contain a raw newline.
JSONL_CHUNK_BYTES = 8 * 1024 * 1024
HASH_BLOCK_BYTES = 4 * 1024 * 1024
CSV_BLOCK_BYTES = 8 * 1024 * 1024


@dataclass
class SourceFile:
    """One dataset file to profile.

    Attributes:
        path: Location on disk.
        name: Name relative to the profiled root (the file name for a single file).
        format: One of ``csv``, ``parquet``, ``jsonl``.
        size_bytes: Size on disk.
    """

    path: Path
    name: str
    format: str
    size_bytes: int


def discover(path: str | os.PathLike) -> list[SourceFile]:
    """List the dataset files under ``path`` in sorted name order.

    Args:
        path: A supported file, or a folder searched recursively for supported files
            (other extensions are ignored).

    Returns:
        The files, sorted by their relative name (the order ``content_hash`` uses).

    Raises:
        InvalidInput: The path is missing, unsupported, or a folder with no dataset files.
    """
    root = Path(path)
    if not root.exists():
        raise InvalidInput(f"path does not exist: {root}", param="path")
    if root.is_file():
        fmt = FORMATS.get(root.suffix.lower())
        if fmt is None:
            raise InvalidInput(
                f"unsupported file type {root.suffix or '(none)'!r}: expected one of "
                f"{', '.join(sorted(FORMATS))}",
                param="path",
            )
        return [SourceFile(root, root.name, fmt, root.stat().st_size)]
    found = []
    for file in root.rglob("*"):
        fmt = FORMATS.get(file.suffix.lower())
        if fmt and file.is_file():
            found.append(SourceFile(file, file.relative_to(root).as_posix(), fmt, file.stat().st_size))
    if not found:
        raise InvalidInput(f"no CSV, Parquet or JSONL files in folder: {root}", param="path")
    return sorted(found, key=lambda f: f.name)


class FileHasher:
    """SHA-256 of a file computed on a background thread.

    hashlib releases the GIL on large updates, so hashing overlaps with profiling
    instead of adding a second sequential pass over the bytes.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._digest: bytes | None = None
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sha = hashlib.sha256()
        try:
            with open(self._path, "rb") as handle:
                while block := handle.read(HASH_BLOCK_BYTES):
                    sha.update(block)
        except OSError as exc:
            self._error = exc
            return
        self._digest = sha.digest()

    def digest(self) -> bytes:
        """Wait for and return the raw SHA-256 digest."""
        self._thread.join()
        if self._error is not None:
            raise InvalidInput(f"cannot read {self._path.name}: {self._error}", param="path")
        assert self._digest is not None
        return self._digest


def content_hash(files: list[tuple[str, bytes]]) -> str:
    """Combine per-file digests into one SRI-style ``sha256-<base64>`` hash.

    The combined hash is SHA-256 over, for each file in sorted name order, the UTF-8
    name, a NUL byte, the 32-byte SHA-256 of the file's bytes, and a newline. For a
    single file the name is its base name. See docs/catalogue.md.

    Args:
        files: ``(name, sha256 digest)`` pairs.

    Returns:
        The SRI string.
    """
    sha = hashlib.sha256()
    for name, digest in sorted(files):
        sha.update(name.encode("utf-8") + b"\x00" + digest + b"\n")
    return "sha256-" + base64.b64encode(sha.digest()).decode("ascii")


def sri(data: bytes) -> str:
    """Return the SRI form ``sha256-<base64>`` of ``data``."""
    return "sha256-" + base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def iter_batches(source: SourceFile, batch_rows: int = BATCH_ROWS) -> Iterator[pl.DataFrame]:
    """Yield the file's rows as DataFrames of at most ``batch_rows`` rows.

    Raises:
        InvalidInput: The file cannot be parsed as its format.
    """
    readers = {"csv": _csv_batches, "parquet": _parquet_batches, "jsonl": _jsonl_batches}
    try:
        yield from readers[source.format](source.path, batch_rows)
    except InvalidInput:
        raise
    except (pl.exceptions.PolarsError, OSError, ValueError, UnicodeDecodeError) as exc:
        # Polars messages can quote the offending line; keep only the first line of the
        # message and the error type so no cell value leaks into a report or a log.
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        raise InvalidInput(
            f"cannot read {source.name} as {source.format}: {type(exc).__name__}"
            + (f" ({_scrub(first)})" if first else ""),
            param="path",
        ) from exc


def _scrub(message: str) -> str:
    # Error text may embed data; mask letters and digits the same way example formats are.
    from node.profiling.columns import mask_format

    return mask_format(message, limit=120)


def _csv_batches(path: Path, batch_rows: int) -> Iterator[pl.DataFrame]:
    # We cut the file into byte blocks ourselves rather than use polars' streaming scan:
    # its read-ahead held ~300 MB regardless of file size. infer_schema=False reads every
    # cell as a string; the column profiler infers types itself and so can count cells
    # that disagree with the column's dominant type.
    with open(path, "rb") as handle:
        header = handle.readline()
        if not header.strip():
            return
        names = pl.read_csv(io.BytesIO(header), infer_schema=False).columns
        for block in _csv_blocks(handle):
            frame = pl.read_csv(
                io.BytesIO(block), has_header=False, new_columns=names, infer_schema=False
            )
            yield from _split(frame, batch_rows)


def _csv_blocks(handle: io.BufferedReader) -> Iterator[bytes]:
    """Yield blocks of whole CSV records of about CSV_BLOCK_BYTES each.

    A newline ends a record only outside quotes, i.e. where the count of quote bytes
    since the start of the data is even (RFC 4180 escapes a quote by doubling it).
    """
    carry = b""
    while True:
        data = handle.read(CSV_BLOCK_BYTES)
        if not data:
            if carry.strip():
                yield carry
            return
        data = carry + data
        cut = _record_end(data)
        if cut < 0:
            carry = data
            continue
        yield data[: cut + 1]
        carry = data[cut + 1 :]


def _record_end(data: bytes) -> int:
    """Index of the last newline in ``data`` that is outside quotes, or -1."""
    cut = len(data)
    while True:
        cut = data.rfind(b"\n", 0, cut)
        if cut < 0 or data.count(b'"', 0, cut) % 2 == 0:
            return cut


def _parquet_batches(path: Path, batch_rows: int) -> Iterator[pl.DataFrame]:
    yield from pl.scan_parquet(path).collect_batches(chunk_size=batch_rows)


def _jsonl_batches(path: Path, batch_rows: int) -> Iterator[pl.DataFrame]:
    with open(path, "rb") as handle:
        tail = b""
        while True:
            block = handle.read(JSONL_CHUNK_BYTES)
            data = tail + block
            if not block:
                if data.strip():
                    yield from _split(pl.read_ndjson(io.BytesIO(data)), batch_rows)
                return
            cut = data.rfind(b"\n")
            if cut < 0:
                tail = data
                continue
            tail = data[cut + 1 :]
            chunk = data[: cut + 1]
            if chunk.strip():
                yield from _split(pl.read_ndjson(io.BytesIO(chunk)), batch_rows)


def _split(frame: pl.DataFrame, batch_rows: int) -> Iterator[pl.DataFrame]:
    for offset in range(0, frame.height, batch_rows):
        yield frame.slice(offset, batch_rows)
