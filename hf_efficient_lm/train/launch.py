"""Guards for scripts started with ``accelerate launch``: several processes must form one DDP job."""

from __future__ import annotations

import atexit
import os

import torch
from transformers import HfArgumentParser


@atexit.register
def _destroy_process_group_at_exit() -> None:
    """A launched command leaves its process group before interpreter teardown. Left to teardown, a gloo group has
    aborted a process that had finished all its work ("terminate called without an active exception", SIGABRT),
    which fails the whole launch: seen twice in CI on a loaded machine, in ``train-scone`` and the FSDP tests."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def launched_processes() -> int:
    """How many processes the launcher started (``WORLD_SIZE``; 1 for a plain ``python script.py``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_world_size(world_size: int) -> None:
    """Raise if the Trainer's world size is not the number of launched processes: they would train independently."""
    launched = launched_processes()
    if launched > 1 and world_size != launched:
        raise RuntimeError(
            f"{launched} processes were launched but the Trainer sees world size {world_size}: they would train "
            "independently. On CPUs pass --use_cpu true (or set ACCELERATE_USE_CPU=1)."
        )


def parse_launched_args(parser: HfArgumentParser, argv: list[str] | None = None) -> tuple:
    """``parser.parse_args_into_dataclasses(argv)`` for a script that may run under ``accelerate launch``.

    ``accelerate launch --multi_gpu`` on a machine without GPUs needs the Trainer's CPU flag for DDP over gloo, so it
    becomes the default there; a world size that still disagrees with the launch raises (see :func:`check_world_size`).
    The parser must include ``TrainingArguments``.
    """
    if launched_processes() > 1 and not torch.cuda.is_available():
        parser.set_defaults(use_cpu=True)
    parsed = parser.parse_args_into_dataclasses(args=argv)
    for value in parsed:
        if hasattr(value, "world_size") and hasattr(value, "use_cpu"):
            check_world_size(value.world_size)
    return parsed
