"""SCONE export (not carried by checkpoints): the streaming table writer and ``export_fgram_table``.

A trained SconeLlama's f-gram model ``A_f`` is run once over every f-gram and its outputs are written, row chunk by
row chunk, into ``fgram_table.safetensors``: the table can be larger than RAM, so it is never whole in memory. All
writes go through ``io_utils`` (temp file / folder, then rename); the file layout is plain safetensors, read back by
the carried :class:`~hf_efficient_lm.scone.table_scone.FgramTable`.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from transformers import LlamaForCausalLM, PreTrainedModel
from transformers.utils.logging import tqdm

from ..io_utils import atomic_dir, atomic_file
from ..scone.modeling_scone_llama import TABLE_FILE
from ..scone.table_scone import TABLE_DTYPES, read_header


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> Path:
    """Write ``tensors`` (small: built in memory) to ``path`` atomically."""
    payload = safetensors_bytes({name: t.detach().cpu().contiguous() for name, t in tensors.items()},
                                metadata={str(k): str(v) for k, v in (metadata or {}).items()})
    with atomic_file(path) as handle:
        handle.write(payload)
    return Path(path)


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a small safetensors file fully into memory, its header checked first (a truncated or corrupt file raises
    ``CorruptTableError``). Returns ``(tensors, metadata)``."""
    _, metadata, _ = read_header(path)
    return load_file(str(path)), metadata


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """Raw little-endian bytes of a CPU tensor without a copy when it is already contiguous."""
    tensor = tensor.detach().to("cpu").contiguous()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)  # numpy has no bfloat16; reinterpret the bits
    return memoryview(tensor.numpy()).cast("B")


class StreamingTableWriter:
    """Write one ``[num_rows, dim]`` tensor named ``table`` chunk by chunk, never holding it whole in memory.

    Use as a context manager; rows must be written in order. On clean exit the temp file is fsynced and renamed to
    ``path`` (``io_utils.atomic_file``); on error (or if fewer rows than announced were written) it is deleted and
    ``path`` is untouched.
    """

    def __init__(self, path, num_rows: int, dim: int, dtype: torch.dtype, metadata: dict | None = None):
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise TypeError(f"table dtype must be float32, float16 or bfloat16, got {dtype}")
        self.path = Path(path)
        self.num_rows, self.dim, self.dtype = int(num_rows), int(dim), dtype
        size = self.num_rows * self.dim * torch.empty((), dtype=dtype).element_size()
        name = next(name for name, table_dtype in TABLE_DTYPES.items() if table_dtype == dtype)
        header = {"table": {"dtype": name, "shape": [self.num_rows, self.dim],
                            "data_offsets": [0, size]}}
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        self._header = raw + b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
        self.rows_written = 0

    def __enter__(self):
        self._stack = contextlib.ExitStack()
        self._handle = self._stack.enter_context(atomic_file(self.path))
        self._handle.write(struct.pack("<Q", len(self._header)))
        self._handle.write(self._header)
        return self

    def write(self, rows: torch.Tensor) -> None:
        """Append ``rows`` (``[n, dim]``, any float dtype/device; cast to the table dtype)."""
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"expected rows of shape [n, {self.dim}], got {tuple(rows.shape)}")
        if self.rows_written + rows.shape[0] > self.num_rows:
            raise ValueError(f"writing {rows.shape[0]} rows would exceed the announced {self.num_rows}")
        self._handle.write(_tensor_bytes(rows.to(self.dtype)))
        self.rows_written += rows.shape[0]

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None and self.rows_written != self.num_rows:
            short = ValueError(f"only {self.rows_written} of {self.num_rows} table rows were written")
            self._stack.__exit__(ValueError, short, None)  # atomic_file deletes the temp file
            raise short
        return self._stack.__exit__(exc_type, exc, tb)


def save_fgram_vocab(vocab, directory: str | os.PathLike) -> Path:
    """``vocab.save`` into a folder that appears whole (``io_utils.atomic_dir``)."""
    with atomic_dir(directory) as tmp:
        vocab.save(tmp)
    return Path(directory)


@torch.no_grad()
def export_fgram_table(model, out_dir, *, batch_size: int = 4096, dtype: torch.dtype | None = None,
                       show_progress: bool = True, tokenizer=None, **save_kwargs) -> Path:
    """Precompute ``A_f`` of a model-mode ``SconeLlamaForCausalLM`` over all S f-grams; write a table-mode folder.

    The folder holds the main model's weights (``model.safetensors``, without ``A_f``), a config with
    ``fgram_mode="table"``, the f-gram index, ``fgram_table.safetensors`` ``[S, hidden]`` in ``dtype`` (default: the
    model's dtype), written ``batch_size`` rows at a time, so the table is never whole in memory, and ``tokenizer``'s
    files when given (the folder is then evaluated and published on its own). The folder appears atomically, whole.
    """
    if not isinstance(model, PreTrainedModel):  # e.g. a PeftModel: its adapters would not reach the table
        raise TypeError(f"export_fgram_table takes a SconeLlamaForCausalLM, got {type(model).__name__}; for a PEFT "
                        "model, merge the adapters first: export_fgram_table(model.merge_and_unload(), out_dir)")
    if model.config.fgram_mode != "model":
        raise ValueError("export_fgram_table needs the f-gram model (fgram_mode='model'); this model is a table")
    vocab = model.model.fgram_vocab
    if vocab is None:
        raise ValueError("no f-gram vocabulary attached; set one with set_fgram_vocab()")
    was_training = model.training
    model.eval()
    try:
        with atomic_dir(out_dir) as tmp_dir:
            config_dict = model.config.to_dict()
            config_dict["fgram_mode"] = "table"
            state = {k: v for k, v in model.state_dict().items() if not k.startswith("model.fgram_model.")}
            original_config = model.config
            model.config = type(original_config).from_dict(config_dict)
            model.config._attn_implementation = original_config._attn_implementation
            try:  # Llama's save: the table-mode folder has no A_f and its own index/table files
                LlamaForCausalLM.save_pretrained(model, tmp_dir, state_dict=state, **save_kwargs)
            finally:
                model.config = original_config
            vocab.save(tmp_dir)
            _write_table(model, tmp_dir / TABLE_FILE, batch_size, dtype or model.dtype, show_progress)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp_dir)
    finally:
        model.train(was_training)
    return Path(out_dir)


def _write_table(model, path: Path, batch_size: int, dtype: torch.dtype, show_progress: bool) -> None:
    vocab, fgram_model, config = model.model.fgram_vocab, model.model.fgram_model, model.config
    device = model.model.embed_tokens.weight.device
    num = vocab.num_fgrams
    metadata = {"num_fgrams": num, "hidden_size": config.hidden_size, "max_fgram_len": config.max_fgram_len,
                "tokenizer_fingerprint": vocab.tokenizer_fingerprint}
    progress = tqdm(total=num, desc="exporting f-gram table", unit="row", disable=not show_progress)
    with StreamingTableWriter(path, num, config.hidden_size, dtype, metadata) as writer:
        for start in range(0, num, batch_size):
            rows = torch.arange(start, min(start + batch_size, num))
            tokens, lengths = vocab.fgram_tokens(rows)
            out = torch.empty(rows.numel(), config.hidden_size, dtype=model.dtype, device=device)
            for length in lengths.unique().tolist():  # bucket by length: no padding compute
                sel = (lengths == length).nonzero().squeeze(1)
                embeds = model.model.embed_tokens(tokens[sel, :length].to(device))
                lens = torch.full((sel.numel(),), length, dtype=torch.long, device=device)
                out[sel.to(device)] = fgram_model(embeds, lens).to(out.dtype)
            writer.write(out)
            progress.update(rows.numel())
    progress.close()
