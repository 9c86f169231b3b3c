"""The contract on an accelerator: the code paths only a GPU exercises (SCONE's hash matcher and pinned table
copies on the device, BLT's caches and beam search on the device, AnSAN masks with flex attention).

Parametrised over the accelerators this machine has (``cuda`` when available); on a CPU-only machine every test is
reported as skipped with that reason unless ``HFELM_TEST_DEVICES`` names devices to use. ``benchmarks/gpu/run_all.sh`` runs them (``pytest -m accelerator``).
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.contract.test_contract import CASES, _ids, _pad_id

# HFELM_TEST_DEVICES=cpu runs these checks on the CPU (the CPU smoke run of benchmarks/gpu/run_all.sh keeps them
# working on machines without a GPU)
ACCELERATORS = [d for d in os.environ.get("HFELM_TEST_DEVICES", "").split(",") if d] or (
    ["cuda"] if torch.cuda.is_available() else [])
pytestmark = pytest.mark.accelerator
parametrize_devices = pytest.mark.parametrize(
    "device", ACCELERATORS or [pytest.param("cuda", marks=pytest.mark.skip(reason="no CUDA device on this machine"))]
)
parametrize_cases = pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
DEVICE_ATOL = 2e-3  # fp32 on a GPU: other kernels (and TF32 where enabled) than the CPU's


def _skip_if_declared(case, check: str) -> None:
    if check in case.skips:
        pytest.skip(f"{case.name} does not apply {check}: {case.skips[check]}")


@parametrize_devices
@parametrize_cases
@torch.no_grad()
def test_device_logits_equal_cpu_and_cached_generation_equals_recompute(case, device):
    model = case.make_model()
    ids = _ids(case, length=10)
    reference = model(input_ids=ids).logits.float()
    model.to(device)
    torch.testing.assert_close(model(input_ids=ids.to(device)).logits.float().cpu(), reference, atol=DEVICE_ATOL,
                               rtol=0)
    if "generate_cache" in case.skips:
        return
    on_device = ids.to(device)
    for extra in ({}, {"num_beams": 2}):  # greedy and beam search: caches reordered on the device
        common = dict(attention_mask=torch.ones_like(on_device), max_new_tokens=6, do_sample=False,
                      pad_token_id=_pad_id(model), **extra)
        cached = model.generate(on_device, use_cache=True, **common)
        recomputed = model.generate(on_device, use_cache=False, **common)
        assert torch.equal(cached, recomputed), extra


@parametrize_devices
@parametrize_cases
@torch.no_grad()
def test_device_left_padded_batch_equals_rows_alone(case, device):
    _skip_if_declared(case, "left_padding")
    model = case.make_model().to(device)
    pad = _pad_id(model)
    long_row, short_row = _ids(case, batch=1, length=10, seed=1)[0], _ids(case, batch=1, length=6, seed=2)[0]
    batch = torch.full((2, 10), pad, dtype=torch.long)
    batch[0], batch[1, 4:] = long_row, short_row
    mask = (torch.arange(10) >= torch.tensor([[0], [4]])).long()
    common = dict(max_new_tokens=6, do_sample=False, pad_token_id=pad)
    together = model.generate(batch.to(device), attention_mask=mask.to(device), **common)
    for row, alone_ids in enumerate((long_row, short_row)):
        alone = model.generate(alone_ids[None].to(device), attention_mask=torch.ones_like(alone_ids[None]).to(device),
                               **common)
        assert torch.equal(together[row, 10:], alone[0, alone_ids.numel():])


@parametrize_devices
@parametrize_cases
def test_device_bf16_autocast_training_step_is_finite(case, device):
    _skip_if_declared(case, "bf16_autocast")
    model = case.make_model().train().to(device)
    ids = _ids(case, batch=4, length=16).to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(3):
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
