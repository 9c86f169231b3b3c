"""The streaming table writer and the memory-mapped reader (torch + stdlib safetensors, atomic writes)."""

import pytest
import torch

from hf_efficient_lm.scone import CorruptTableError, FgramTable
from hf_efficient_lm.tools.scone_export import StreamingTableWriter, read_safetensors, write_safetensors


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_streamed_table_reads_back_with_safetensors(tmp_path, dtype):
    from safetensors import safe_open

    rows = torch.randn(37, 8)
    path = tmp_path / "t.safetensors"
    with StreamingTableWriter(path, 37, 8, dtype, {"note": "x"}) as writer:
        for start in range(0, 37, 10):
            writer.write(rows[start:start + 10])
    expected = rows.to(dtype)
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata() == {"note": "x"}
        torch.testing.assert_close(handle.get_slice("table")[[3, 0, 36]], expected[[3, 0, 36]], atol=0, rtol=0)
    table = FgramTable(path, num_rows=37, dim=8)
    index = torch.tensor([5, 5, 36, 0])
    assert torch.equal(table.lookup(index), expected[index])
    assert table.lookup(index, dtype=torch.float32).dtype == torch.float32
    with pytest.raises(IndexError, match="row ids"):
        table.lookup(torch.tensor([37]))
    # releasing the mapped pages (bounded RSS) never changes what is read
    releasing = FgramTable(path, release_every_rows=2)
    for _ in range(3):
        assert torch.equal(releasing.lookup(index), expected[index])


def test_table_data_starts_8_byte_aligned(tmp_path):
    """The safetensors format pads the header so the data starts at a multiple of 8 bytes (a mapped bf16 / fp32 row
    is then aligned), whatever the metadata's length."""
    import struct

    for length in range(1, 9):
        path = tmp_path / f"t{length}.safetensors"
        with StreamingTableWriter(path, 3, 4, torch.bfloat16, {"note": "x" * length}) as writer:
            writer.write(torch.ones(3, 4))
        header_length = struct.unpack("<Q", path.read_bytes()[:8])[0]
        assert (8 + header_length) % 8 == 0, length
        assert torch.equal(FgramTable(path).lookup(torch.tensor([2])), torch.ones(1, 4, dtype=torch.bfloat16))


def test_failed_or_short_write_leaves_nothing(tmp_path):
    path = tmp_path / "t.safetensors"
    with pytest.raises(ValueError, match="only 10 of 20"):
        with StreamingTableWriter(path, 20, 4, torch.float32) as writer:
            writer.write(torch.zeros(10, 4))
    with pytest.raises(RuntimeError, match="boom"):
        with StreamingTableWriter(path, 20, 4, torch.float32) as writer:
            writer.write(torch.zeros(10, 4))
            raise RuntimeError("boom")
    with pytest.raises(ValueError, match="exceed"):
        with StreamingTableWriter(path, 2, 4, torch.float32) as writer:
            writer.write(torch.zeros(3, 4))
    assert list(tmp_path.iterdir()) == []


def test_reader_validates_shape_and_header(tmp_path):
    path = tmp_path / "t.safetensors"
    with StreamingTableWriter(path, 6, 4, torch.float32) as writer:
        writer.write(torch.ones(6, 4))
    with pytest.raises(ValueError, match="num_fgrams=7"):
        FgramTable(path, num_rows=7, dim=4)
    with pytest.raises(ValueError, match="hidden_size is 5"):
        FgramTable(path, num_rows=6, dim=5)
    path.write_bytes(path.read_bytes()[:5])
    with pytest.raises(CorruptTableError, match="too short"):
        FgramTable(path)
    write_safetensors(tmp_path / "other.safetensors", {"keys": torch.arange(4)})
    with pytest.raises(CorruptTableError, match="no tensor named 'table'"):
        FgramTable(tmp_path / "other.safetensors")
    tensors, _ = read_safetensors(tmp_path / "other.safetensors")
    assert torch.equal(tensors["keys"], torch.arange(4))
