"""The f-gram table reader (carried by checkpoints): a validated safetensors header and a private memory map.

The table can be larger than RAM, so a lookup touches only the pages of the requested rows (``safe_open`` slices;
it cannot gather scattered rows without copying). The header is parsed here so that a truncated or corrupt file is
named as such. Writing lives in ``hf_efficient_lm.tools.scone_export`` (not carried).
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import warnings
from pathlib import Path

import torch

TABLE_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}  # safetensors names
_HEADER_LIMIT = 100 * 1024 * 1024  # safetensors' own sanity limit for the JSON header


class CorruptTableError(ValueError):
    """A safetensors file of the f-gram table/index is truncated, has a bad header or the wrong shape."""


def read_header(path: str | os.PathLike) -> tuple[dict, dict, int]:
    """Parse a safetensors header and check that the file holds exactly the bytes it describes.

    Returns ``(entries, metadata, data_start)``; raises :class:`CorruptTableError` when the file is too short, the
    header length or JSON is bad, or the data section is shorter or longer than the header says.
    """
    path = Path(path)
    file_size = path.stat().st_size
    with open(path, "rb") as handle:
        raw_len = handle.read(8)
        if len(raw_len) < 8:
            raise CorruptTableError(f"{path}: {file_size} bytes is too short for a safetensors file (truncated?)")
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > _HEADER_LIMIT or 8 + header_len > file_size:
            raise CorruptTableError(f"{path}: header length {header_len} does not fit the file size {file_size} "
                                    "(truncated or corrupt)")
        try:
            header = json.loads(handle.read(header_len).decode("utf-8"))
            metadata = header.pop("__metadata__", None) or {}
            data_end = max((int(info["data_offsets"][1]) for info in header.values()), default=0)
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as err:
            raise CorruptTableError(f"{path}: unreadable safetensors header ({err}); the file is corrupt") from err
    if data_end != file_size - 8 - header_len:
        raise CorruptTableError(f"{path}: header describes {data_end} data bytes but the file holds "
                                f"{file_size - 8 - header_len} (file size {file_size}); the file is truncated or "
                                "corrupt")
    return header, metadata, 8 + header_len


class FgramTable:
    """Read-only, memory-mapped ``[num_fgrams, dim]`` f-gram embedding table.

    Only the pages of rows that are looked up are read (and counted in the process RSS); the file is opened with
    a private copy-on-write map so torch can wrap it without copying, and it is never written to.
    """

    def __init__(self, path, *, num_rows: int | None = None, dim: int | None = None,
                 release_every_rows: int = 16384):
        self.path = Path(path)
        # After this many looked-up rows the map's pages are released (MADV_DONTNEED): the data stays in the page
        # cache (re-access is a cheap minor fault) but the process's resident set stays bounded.
        self.release_every_rows = int(release_every_rows)
        self._rows_since_release = 0
        if not self.path.is_file():
            raise FileNotFoundError(f"f-gram table {self.path} does not exist")
        entries, self.metadata, data_start = read_header(self.path)
        if "table" not in entries:
            raise CorruptTableError(f"{self.path}: no tensor named 'table' (found {sorted(entries)})")
        info = entries["table"]
        self.dtype = TABLE_DTYPES.get(info.get("dtype"))
        if self.dtype is None or len(info.get("shape", ())) != 2:
            raise CorruptTableError(f"{self.path}: 'table' must be a 2-D float tensor, got {info}")
        self.num_rows, self.dim = (int(x) for x in info["shape"])
        begin, end = info["data_offsets"]
        if end - begin != self.num_rows * self.dim * self.dtype.itemsize:
            raise CorruptTableError(f"{self.path}: 'table' {info['shape']} {info['dtype']} has {end - begin} bytes")
        if num_rows is not None and self.num_rows != num_rows:
            raise ValueError(f"f-gram table {self.path} has {self.num_rows} rows but the config says "
                             f"num_fgrams={num_rows}")
        if dim is not None and self.dim != dim:
            raise ValueError(f"f-gram table {self.path} has rows of width {self.dim} but the model's hidden_size is {dim}")
        with open(self.path, "rb") as handle:
            self._mmap = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
        if hasattr(mmap, "MADV_RANDOM"):
            # Lookups are scattered rows: no read-ahead / fault-around, so only the touched pages are mapped in.
            self._mmap.madvise(mmap.MADV_RANDOM)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns that the (copy-on-write) buffer is writable
            raw = torch.frombuffer(self._mmap, dtype=torch.uint8, offset=data_start + begin, count=end - begin) \
                if end > begin else torch.empty(0, dtype=torch.uint8)
        self.rows = raw.view(self.dtype).view(self.num_rows, self.dim)

    def lookup(self, rows: torch.Tensor | list[int], device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Gather ``rows`` (LongTensor ``[n]`` on any device, or a list of ints) -> ``[n, dim]`` on ``device`` in
        ``dtype``."""
        if isinstance(rows, (list, tuple)):  # decode steps: a few python ints, checked without tensor ops
            low, high = (min(rows), max(rows)) if rows else (0, -1)
            index = torch.tensor(rows, dtype=torch.int64)
        else:
            index = rows.to("cpu", torch.int64)
            low, high = (int(x) for x in torch.aminmax(index)) if index.numel() else (0, -1)
        if low < 0 or high >= self.num_rows:
            raise IndexError(f"f-gram row ids must lie in [0, {self.num_rows}), got {low}..{high}")
        gathered = self.rows.index_select(0, index)
        self._touched(index.numel())
        if dtype is not None and dtype != gathered.dtype:
            gathered = gathered.to(dtype)
        if device is not None and torch.device(device).type != "cpu":
            gathered = gathered.pin_memory().to(device, non_blocking=True)
        return gathered

    def row_view(self, row: int) -> torch.Tensor:
        """Row ``row`` ``[dim]`` as a view into the map: no copy, so it must only be read (a write would change
        what later lookups return, though never the file)."""
        if not 0 <= row < self.num_rows:
            raise IndexError(f"f-gram row ids must lie in [0, {self.num_rows}), got {row}")
        self._touched(1)
        return self.rows[row]

    def _touched(self, num_rows: int) -> None:
        self._rows_since_release += num_rows
        if self.release_every_rows and self._rows_since_release >= self.release_every_rows:
            self.release_pages()

    def release_pages(self) -> None:
        """Unmap the table's resident pages (they stay in the OS page cache); RSS drops back to the baseline."""
        self._rows_since_release = 0
        if hasattr(mmap, "MADV_DONTNEED"):
            self._mmap.madvise(mmap.MADV_DONTNEED)

    def __getstate__(self) -> dict:  # copy.deepcopy, pickle (torch.save, quantize_dynamic): reopened from its file,
        return {"path": self.path, "release_every_rows": self.release_every_rows}  # never copied into memory

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], release_every_rows=state["release_every_rows"])

    def __len__(self) -> int:
        return self.num_rows

    def __repr__(self) -> str:
        return f"FgramTable({str(self.path)!r}, rows={self.num_rows}, dim={self.dim}, dtype={self.dtype})"
