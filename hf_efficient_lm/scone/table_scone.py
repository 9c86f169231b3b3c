"""The f-gram table reader (travels with ``trust_remote_code``): a validated safetensors header and a memory map.

The table can be larger than RAM, so it is read through a private memory map and a lookup touches only the pages of
the requested rows (``safetensors.safe_open`` slices, it cannot gather scattered rows without copying). The header
is parsed here so that a truncated or corrupt file is named as such. Writing lives in
``hf_efficient_lm.tools.scone_export`` (not carried).
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import warnings
from pathlib import Path

import torch

_DTYPE_TO_NAME = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
}
_NAME_TO_DTYPE = {name: dtype for dtype, name in _DTYPE_TO_NAME.items()}
_HEADER_LIMIT = 100 * 1024 * 1024  # safetensors' own sanity limit for the JSON header


class CorruptTableError(ValueError):
    """A safetensors file of the f-gram table/index is truncated, has a bad header or the wrong shape."""


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def read_header(path: str | os.PathLike) -> tuple[dict, dict, int]:
    """Parse and validate a safetensors header. Returns ``(entries, metadata, data_start)``.

    Raises :class:`CorruptTableError` when the file is shorter than its header says, the header is not JSON, or a
    tensor's byte range does not fit its dtype/shape or lies outside the file.
    """
    path = Path(path)
    file_size = path.stat().st_size
    with open(path, "rb") as handle:
        raw_len = handle.read(8)
        if len(raw_len) < 8:
            raise CorruptTableError(f"{path}: {file_size} bytes is too short for a safetensors file (truncated?)")
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > _HEADER_LIMIT or 8 + header_len > file_size:
            raise CorruptTableError(
                f"{path}: header length {header_len} does not fit the file size {file_size} (truncated or corrupt)"
            )
        try:
            header = json.loads(handle.read(header_len).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CorruptTableError(f"{path}: safetensors header is not valid JSON ({err}); the file is corrupt") from err
    metadata = header.pop("__metadata__", {}) or {}
    data_start = 8 + header_len
    data_size = file_size - data_start
    expected_end = 0
    for name, info in header.items():
        try:
            dtype = _NAME_TO_DTYPE[info["dtype"]]
            begin, end = info["data_offsets"]
            numel = 1
            for dim in info["shape"]:
                numel *= int(dim)
        except (KeyError, TypeError, ValueError) as err:
            raise CorruptTableError(f"{path}: bad header entry for tensor {name!r}: {info!r}") from err
        if end - begin != numel * _element_size(dtype):
            raise CorruptTableError(
                f"{path}: tensor {name!r} has shape {info['shape']} {info['dtype']} but {end - begin} data bytes"
            )
        expected_end = max(expected_end, end)
    if expected_end != data_size:
        raise CorruptTableError(
            f"{path}: header describes {expected_end} data bytes but the file holds {data_size} "
            f"(file size {file_size}); the file is truncated or corrupt"
        )
    return header, metadata, data_start


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a small safetensors file fully into memory. Returns ``(tensors, metadata)``."""
    entries, metadata, data_start = read_header(path)
    with open(path, "rb") as handle:
        handle.seek(data_start)
        data = bytearray(handle.read())
    tensors = {}
    for name, info in entries.items():
        dtype = _NAME_TO_DTYPE[info["dtype"]]
        begin, end = info["data_offsets"]
        flat = torch.frombuffer(data, dtype=torch.uint8, offset=begin, count=end - begin) if end > begin else \
            torch.empty(0, dtype=torch.uint8)
        tensors[name] = flat.view(dtype).reshape(info["shape"]).clone()
    return tensors, metadata


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
        self.dtype = _NAME_TO_DTYPE[info["dtype"]]
        if len(info["shape"]) != 2 or self.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise CorruptTableError(f"{self.path}: 'table' must be a 2-D float tensor, got {info}")
        self.num_rows, self.dim = (int(x) for x in info["shape"])
        if num_rows is not None and self.num_rows != num_rows:
            raise ValueError(
                f"f-gram table {self.path} has {self.num_rows} rows but the config says num_fgrams={num_rows}"
            )
        if dim is not None and self.dim != dim:
            raise ValueError(f"f-gram table {self.path} has rows of width {self.dim} but the model's hidden_size is {dim}")
        begin, end = info["data_offsets"]
        with open(self.path, "rb") as handle:
            self._mmap = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
        if hasattr(mmap, "MADV_RANDOM"):
            # Lookups are scattered rows: no read-ahead / fault-around, so only the touched pages are mapped in.
            self._mmap.madvise(mmap.MADV_RANDOM)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = torch.frombuffer(self._mmap, dtype=torch.uint8, offset=data_start + begin, count=end - begin) \
                if end > begin else torch.empty(0, dtype=torch.uint8)
        self.rows = raw.view(self.dtype).view(self.num_rows, self.dim)

    def lookup(self, rows: torch.Tensor | list[int], device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Gather ``rows`` (LongTensor ``[n]`` on any device, or a list of ints) -> ``[n, dim]`` on ``device`` in
        ``dtype``."""
        if isinstance(rows, (list, tuple)):  # decode steps: a few python ints, checked without tensor ops
            if rows and (min(rows) < 0 or max(rows) >= self.num_rows):
                raise IndexError(f"f-gram row ids must lie in [0, {self.num_rows}), got {min(rows)}..{max(rows)}")
            index = torch.tensor(rows, dtype=torch.int64)
        else:
            index = rows.to("cpu", torch.int64)
            if index.numel():
                low, high = torch.aminmax(index)
                if int(low) < 0 or int(high) >= self.num_rows:
                    raise IndexError(f"f-gram row ids must lie in [0, {self.num_rows}), got {int(low)}..{int(high)}")
        gathered = self.rows.index_select(0, index)
        self._rows_since_release += index.numel()
        if self.release_every_rows and self._rows_since_release >= self.release_every_rows:
            self.release_pages()
        if dtype is not None and dtype != gathered.dtype:
            gathered = gathered.to(dtype)
        if device is not None and (device if isinstance(device, torch.device) else torch.device(device)).type != "cpu":
            gathered = gathered.pin_memory().to(device, non_blocking=True)
        return gathered

    def row_view(self, row: int) -> torch.Tensor:
        """Row ``row`` ``[dim]`` as a view into the map: no copy, so it must only be read (a write would change
        what later lookups return, though never the file)."""
        if not 0 <= row < self.num_rows:
            raise IndexError(f"f-gram row ids must lie in [0, {self.num_rows}), got {row}")
        self._rows_since_release += 1
        if self.release_every_rows and self._rows_since_release >= self.release_every_rows:
            self.release_pages()
        return self.rows[row]

    def release_pages(self) -> None:
        """Unmap the table's resident pages (they stay in the OS page cache); RSS drops back to the baseline."""
        self._rows_since_release = 0
        if hasattr(mmap, "MADV_DONTNEED"):
            self._mmap.madvise(mmap.MADV_DONTNEED)

    def __len__(self) -> int:
        return self.num_rows

    def __repr__(self) -> str:
        return f"FgramTable({str(self.path)!r}, rows={self.num_rows}, dim={self.dim}, dtype={self.dtype})"
