"""One guard for every training command that writes checkpoints into an output dir (pretrain, train-anchor,
train-scone, train-blt, train-entropy, train-expert): a lock against concurrent writers, and a *run fingerprint* so a
run resumes only its own checkpoints.

The fingerprint is what defines a run: the model configuration, the tokenizer, the content of the data files, the
seed and the schedule (learning rate and scheduler, warmup, global batch, optimizer; not the length, so a larger
``max_steps`` extends a run: the steps done keep their schedule, later steps follow the schedule of the new length
from the step reached). It is written to ``OUTPUT_DIR/run_fingerprint.json`` when a
run starts and into every ``checkpoint-*`` the Trainer saves (:class:`FingerprintCallback`). A later run into the same
dir resumes from the newest checkpoint only when its fingerprint is identical (and says so in one line); otherwise it
refuses with the differing fields named, or, with ``overwrite=True`` (``--overwrite_output_dir``), removes the old
run's checkpoints and final model and starts fresh.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

from ..data.tokenizer_training import tokenizer_digest
from ..io_utils import atomic_file, check_writable

FINGERPRINT_FILE = "run_fingerprint.json"
LOCK_FILE = ".hfelm-run.lock"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Config keys that describe where/when a config was written, not the model.
_VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "_commit_hash", "use_cache", "dtype", "torch_dtype")


class OutputDirLockedError(RuntimeError):
    """Another process is training into the same output dir."""


def file_digest(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_size), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def _plain(value):
    """JSON-normalised copy (tuples -> lists, unknown objects -> str) so saved and fresh fingerprints compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def model_config_fingerprint(config) -> dict:
    """The model configuration as a plain dict, without bookkeeping keys (version, path, dtype)."""
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return _plain({k: v for k, v in data.items() if k not in _VOLATILE_CONFIG_KEYS})


_OPTIONAL_SCHEDULE_KEYS = ("data_seed", "lr_scheduler_kwargs", "optim_args", "train_sampling_strategy",
                           "label_smoothing_factor", "dataloader_drop_last", "neftune_noise_alpha",
                           "average_tokens_across_devices", "group_by_length", "full_determinism")


def schedule_fingerprint(training_args, **extra) -> dict:
    """The optimisation settings of ``TrainingArguments`` that change what a run computes, plus ``extra``.

    The run's length (``max_steps``, epochs, token budget) is left out on purpose: a larger budget continues the same
    run from its last checkpoint (the Trainer's documented way to extend training)."""
    global_batch = (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
                    * max(1, training_args.world_size))
    keys = ("learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "adam_beta1",
            "adam_beta2", "adam_epsilon", "optim", "bf16", "fp16")
    schedule = {k: getattr(training_args, k, None) for k in keys}
    schedule["global_batch"] = global_batch
    # Also what changes the data order, the schedule's shape or the loss, recorded only where it differs from the
    # default, so fingerprints written before these were checked still match (a resume with another --data_seed or
    # min_lr mixed two runs under a "fingerprint matches").
    defaults = type(training_args).__dataclass_fields__
    for key in _OPTIONAL_SCHEDULE_KEYS:
        if key in defaults and getattr(training_args, key) != defaults[key].default:
            schedule[key] = getattr(training_args, key)
    schedule.update(extra)
    return _plain(schedule)


def weights_fingerprint(model: str | os.PathLike) -> list[dict] | str:
    """The digests of a local model folder's ``*.safetensors`` files (moving the folder keeps the match, other
    weights with the same config do not), or a Hub id as given."""
    folder = Path(model)
    if not folder.is_dir():
        return str(model)
    return [{"name": f.name, "sha256": file_digest(f)} for f in sorted(folder.glob("*.safetensors"))]


def run_fingerprint(*, model_config, tokenizer, training_args, data_files: Sequence[str] = (),
                    dataset_name: str | None = None, **extra) -> dict:
    """What defines a run: model config, tokenizer digest, data file digests, seed, schedule and ``extra`` settings
    (block size, document limit, mode flags ...). File *contents* are hashed, so moving the data keeps the match."""
    return _plain({
        "model_config": model_config_fingerprint(model_config),
        "tokenizer": tokenizer_digest(tokenizer) if tokenizer is not None else None,
        "data_files": [{"name": Path(f).name, "sha256": file_digest(f)} for f in data_files],
        "dataset_name": dataset_name,
        "seed": training_args.seed,
        "schedule": schedule_fingerprint(training_args),
        **extra,
    })


def describe_difference(saved: dict, wanted: dict, limit: int = 6) -> str:
    """``"seed: 0 -> 1; data_files differ"``: the first ``limit`` differing fields, one level deep."""
    parts = []
    for key in sorted(set(saved) | set(wanted)):
        a, b = saved.get(key), wanted.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            inner = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in inner[:3])
            parts.append(f"{key} ({shown}{', ...' if len(inner) > 3 else ''})")
        elif isinstance(a, (list, str)) and len(json.dumps(a)) > 60 or isinstance(b, (list, str)) and len(json.dumps(b)) > 60:
            parts.append(f"{key} differ")
        else:
            parts.append(f"{key}: {a!r} -> {b!r}")
    more = f"; and {len(parts) - limit} more" if len(parts) > limit else ""
    return "; ".join(parts[:limit]) + more


def checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The ``checkpoint-N`` folders of ``output_dir``, oldest step first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def read_fingerprint(folder: str | os.PathLike) -> dict | None:
    path = Path(folder) / FINGERPRINT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def write_fingerprint(folder: str | os.PathLike, fingerprint: dict) -> None:
    with atomic_file(Path(folder) / FINGERPRINT_FILE, "w") as handle:
        json.dump(fingerprint, handle, indent=2, sort_keys=True)


class FingerprintCallback(TrainerCallback):
    """What a fingerprinted run needs from its Trainer: the fingerprint in every checkpoint it saves (main process
    only), and on resume the learning rate of the schedule it resumes under."""

    def __init__(self, fingerprint: dict):
        self.fingerprint = fingerprint

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        # A resumed run's optimizer holds the rate its checkpoint's step set. Under a larger max_steps the Trainer
        # builds the scheduler for the new length and restores only its step counter, so that stale rate (0 at the
        # end of a linear decay: a step that changes nothing) would drive the first resumed step. Set the rate the
        # schedule gives at this step (the same value when the length did not change).
        scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # (accelerate may wrap it)
        if state.global_step and isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            rates = [base * rule(scheduler.last_epoch) for base, rule in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
            for group, rate in zip(optimizer.param_groups, rates):
                group["lr"] = rate
            scheduler._last_lr = rates
        return control

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                write_fingerprint(folder, self.fingerprint)
        return control


@contextlib.contextmanager
def lock_output_dir(output_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on ``output_dir`` (created if missing) for the ``with`` block, or raise
    :class:`OutputDirLockedError` at once if another process holds it. The lock dies with its process."""
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_FILE
    handle = open(path, "a+")
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: best effort, no lock
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                raise OutputDirLockedError(
                    f"another run (pid {holder}) is writing to {root}; wait for it to finish or choose another "
                    "--output_dir"
                ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield path
    finally:
        handle.close()


# What a checkpoint needs besides the weights to resume a run exactly (Trainer's own files; an optimizer state is
# optimizer.pt, or optimizer.bin / optimizer_0/ under FSDP, or a global_step*/ folder under DeepSpeed)
_NO_STATE = ("resuming would restart the optimizer and the learning-rate schedule, so the run would not be the "
             "uninterrupted one (saved with --save_only_model?)")


def missing_training_state(checkpoint: str | os.PathLike) -> str | None:
    """What ``checkpoint`` lacks to resume a run exactly (``trainer_state.json``, an optimizer state), or None."""
    folder = Path(checkpoint)
    if not (folder / "trainer_state.json").is_file():
        return "trainer_state.json"
    if not any((folder / name).exists() for name in ("optimizer.pt", "optimizer.bin", "optimizer_0")) and not any(
            folder.glob("global_step*")):
        return "optimizer state (optimizer.pt)"
    return None


@dataclass
class RunDecision:
    resume_from: str | None  # checkpoint to pass to Trainer.train(resume_from_checkpoint=...)
    message: str  # one line for the log


def decide_resume(output_dir: str | os.PathLike, fingerprint: dict, *, overwrite: bool = False,
                  resume_from_checkpoint: str | None = None, final_dirname: str = "final",
                  remove: bool = True, outputs: Sequence[str] = ()) -> RunDecision:
    """Resume, start fresh or refuse (``ValueError``) given what ``output_dir`` holds; see the module docstring.

    ``remove=False`` (processes other than the main one) decides without deleting anything. ``outputs``: what the
    command writes into ``output_dir`` besides checkpoints and ``final_dirname`` (metrics files, exported folders),
    removed with them when ``overwrite`` starts fresh.
    """
    root = Path(output_dir)
    if str(resume_from_checkpoint).lower() == "true":  # Trainer's "the newest checkpoint": what is decided below
        resume_from_checkpoint = None
    if resume_from_checkpoint:
        saved = read_fingerprint(resume_from_checkpoint)
        if saved is None:
            raise ValueError(f"--resume_from_checkpoint {resume_from_checkpoint} holds no {FINGERPRINT_FILE}: it was "
                             "not written by this run, or its save was cut short (the fingerprint is written last)")
        if saved != fingerprint:
            raise ValueError(f"--resume_from_checkpoint {resume_from_checkpoint} belongs to a different run "
                             f"({describe_difference(saved, fingerprint)})")
        if missing := missing_training_state(resume_from_checkpoint):
            raise ValueError(f"--resume_from_checkpoint {resume_from_checkpoint} holds no {missing}: {_NO_STATE}")
        return RunDecision(str(resume_from_checkpoint), f"resuming from {resume_from_checkpoint} (run fingerprint matches)")
    found = checkpoints(root)
    final = root / final_dirname
    # FingerprintCallback writes a checkpoint's fingerprint after the Trainer wrote everything else: a checkpoint of
    # this run without one was cut short (a killed save) and is not resumed; the previous whole one is.
    cut_short = [c for c in found if read_fingerprint(c) is None] if read_fingerprint(root) == fingerprint else []
    whole = [c for c in found if c not in cut_short]
    previous = None  # (what, fingerprint) of the old run, newest evidence first
    if whole:
        previous = (str(whole[-1]), read_fingerprint(whole[-1]))
    elif found or final.is_dir():
        previous = (str(found[-1] if found else final), read_fingerprint(final) or read_fingerprint(root))
    skipped = f"; {', '.join(c.name for c in cut_short)} cut short, removed" if cut_short else ""
    if remove:
        for folder in cut_short:
            shutil.rmtree(folder)
    if previous is None:
        return RunDecision(None, f"starting a new run in {root}")
    where, saved = previous
    missing = missing_training_state(where) if whole else None
    if saved == fingerprint and not missing:
        if whole:
            return RunDecision(where, f"resuming from {where} (run fingerprint matches{skipped})")
        return RunDecision(None, f"{final if final.is_dir() else root} holds the same run with no whole checkpoint"
                                 f"{skipped}; training it again")
    why = (f"holds no {missing}: {_NO_STATE}" if saved == fingerprint
           else "holds no run fingerprint (written by another tool or another model)" if saved is None
           else f"was written by a different run ({describe_difference(saved, fingerprint)})")
    if not overwrite:
        raise ValueError(f"{where} {why}; pass --overwrite_output_dir to start fresh, or choose another --output_dir")
    had_final = final.is_dir()
    if remove:
        for folder in found:
            shutil.rmtree(folder)
        if final.is_dir():
            shutil.rmtree(final)
        for name in (FINGERPRINT_FILE, *outputs):  # (a stale eval file went on the new run's model card)
            path = root / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
    return RunDecision(None, f"starting fresh in {root}: removed {len(found)} checkpoint(s)"
                             f"{' and the final model' if had_final else ''} of another run (--overwrite_output_dir)")


def run_training(trainer, resume_from: str | None) -> None:
    """``trainer.train(resume_from_checkpoint=resume_from)``, except when that checkpoint already reached the run's
    last step: then its weights and state are loaded and nothing is trained. (Resumed at ``max_steps`` in the middle
    of an epoch, the Trainer trains the rest of the epoch's first step anyway: re-running a finished command moved
    its weights and reported ``max_steps + 1`` steps.)"""
    from transformers.trainer_callback import TrainerState

    if resume_from is not None:
        state = TrainerState.load_from_json(str(Path(resume_from) / "trainer_state.json"))
        last_step = trainer.args.max_steps if trainer.args.max_steps > 0 else state.max_steps
        if state.global_step >= last_step > 0:
            trainer._load_from_checkpoint(resume_from)
            state.is_world_process_zero, state.is_local_process_zero = (trainer.state.is_world_process_zero,
                                                                        trainer.state.is_local_process_zero)
            trainer.state = state
            print(f"{resume_from} is the run's last step ({state.global_step}): nothing left to train", flush=True)
            return
    trainer.train(resume_from_checkpoint=resume_from)


def train_guarded(trainer, fingerprint: dict, *, overwrite: bool = False) -> None:
    """:func:`guarded_run` around :func:`run_training` for a Trainer built before the guard (the byte commands,
    ``train-expert``): its checkpoints carry ``fingerprint`` and a killed run resumes from its newest whole one."""
    trainer.add_callback(FingerprintCallback(fingerprint))
    with guarded_run(trainer.args, fingerprint, overwrite=overwrite) as decision:
        run_training(trainer, decision.resume_from)


@contextlib.contextmanager
def guarded_run(training_args, fingerprint: dict, *, overwrite: bool = False,
                final_dirname: str = "final", outputs: Sequence[str] = ()) -> Iterator[RunDecision]:
    """For the ``with`` block of a training run: check ``output_dir`` is writable, lock it (main process), decide
    whether to resume (main process first, so every process sees the same dir), record the fingerprint and print the
    decision in one line. The caller adds ``FingerprintCallback(fingerprint)`` to its Trainer."""
    output_dir = Path(training_args.output_dir)
    is_main = training_args.process_index == 0
    check_writable(output_dir)
    lock = lock_output_dir(output_dir) if is_main else contextlib.nullcontext()
    with lock:
        with training_args.main_process_first(desc="check the output dir"):
            decision = decide_resume(output_dir, fingerprint, overwrite=overwrite,
                                     resume_from_checkpoint=training_args.resume_from_checkpoint,
                                     final_dirname=final_dirname, remove=is_main, outputs=outputs)
            if is_main:
                if decision.resume_from is None:
                    write_fingerprint(output_dir, fingerprint)
                print(decision.message, flush=True)
        yield decision


def check_schedule(training_args, *, max_train_tokens: int | None = None, max_documents: int | None = None) -> None:
    """Numbers the Trainer accepts but misreads: ``max_steps`` 0 (one step) or below -1 (falls back to epochs)."""
    if training_args.max_steps == 0 or training_args.max_steps < -1:
        raise ValueError(f"--max_steps must be a positive number of steps (or -1 to train --num_train_epochs), got "
                         f"{training_args.max_steps}")
    if training_args.max_steps == -1 and not training_args.num_train_epochs > 0:
        raise ValueError(f"--num_train_epochs must be positive, got {training_args.num_train_epochs}")
    if max_train_tokens is not None and max_train_tokens < 1:
        raise ValueError(f"--max_train_tokens must be a positive number of tokens, got {max_train_tokens}")
    if max_train_tokens is not None and training_args.max_steps != -1:  # (the budget silently replaced --max_steps)
        raise ValueError(f"pass either --max_steps ({training_args.max_steps}) or --max_train_tokens "
                         f"({max_train_tokens}), not both: the budget sets the number of steps")
    if max_documents is not None and max_documents < 1:
        raise ValueError(f"--max_documents must be a positive number of documents, got {max_documents}")
    if training_args.learning_rate < 0:
        raise ValueError(f"--learning_rate must be >= 0, got {training_args.learning_rate}")


def global_batch(training_args) -> int:
    """Rows per optimizer step over all processes: per-device batch x accumulation steps x processes."""
    return (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
            * max(1, training_args.world_size))


def count_trained_tokens(training_args, max_train_tokens: int | None, block_size: int, num_rows: int) -> None:
    """Have the Trainer count the tokens it trains on (``state.num_input_tokens_seen``: epochs end in short steps, so
    steps x global batch x block over-counts) and, with a ``--max_train_tokens`` budget, set ``max_steps`` from it
    (:func:`steps_for_token_budget` over the ``num_rows`` training rows)."""
    training_args.include_num_input_tokens_seen = "all"
    if max_train_tokens is not None:  # (not in the fingerprint: a larger budget extends the run)
        training_args.max_steps = steps_for_token_budget(max_train_tokens, training_args, block_size, num_rows=num_rows)


def steps_for_token_budget(max_train_tokens: int, training_args, block_size: int, num_rows: int | None = None) -> int:
    """The optimizer steps of a ``--max_train_tokens`` budget in rows of ``block_size`` tokens: rounded up, so every
    training command that takes a budget trains on at least that many tokens (and on the same number of steps).

    With ``num_rows`` (the training set's rows) the budget is counted the way the Trainer steps through epochs: an
    epoch's last step holds only the rows left (``ceil(micro-batches / accumulation)`` steps per epoch), so a budget of
    several epochs needs more steps than ``budget / (global batch x block)`` (1% too few tokens without it)."""
    step_rows = global_batch(training_args)
    rows_needed = math.ceil(max_train_tokens / block_size)
    if num_rows is None or num_rows < 1:
        return max(1, math.ceil(rows_needed / step_rows))
    micro_rows = training_args.per_device_train_batch_size * max(1, training_args.world_size)
    steps_per_epoch = math.ceil(math.ceil(num_rows / micro_rows) / training_args.gradient_accumulation_steps)
    epochs, rest = divmod(rows_needed, num_rows)
    return max(1, epochs * steps_per_epoch + math.ceil(rest / step_rows))


__all__ = [
    "FINGERPRINT_FILE",
    "FingerprintCallback",
    "OutputDirLockedError",
    "RunDecision",
    "check_schedule",
    "checkpoints",
    "decide_resume",
    "describe_difference",
    "file_digest",
    "global_batch",
    "guarded_run",
    "run_training",
    "train_guarded",
    "weights_fingerprint",
    "lock_output_dir",
    "model_config_fingerprint",
    "run_fingerprint",
    "steps_for_token_budget",
    "count_trained_tokens",
]
