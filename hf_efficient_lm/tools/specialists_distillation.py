"""Response distillation (SLM-d): cross-entropy mixed with a temperature-scaled KL to a frozen teacher."""

from __future__ import annotations

import inspect

import torch
from torch.nn import functional as F
from transformers import Trainer


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.LongTensor,
    *,
    alpha: float = 0.5,
    temperature: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(1 - alpha) * CE + alpha * T^2 * KL(teacher_T || student_T)`` over next-token positions.

    Shapes: logits ``[batch, seq, vocab]`` (teacher and student share the vocabulary), ``labels [batch, seq]``
    (``-100`` = ignored). Positions ``t`` predict ``labels[:, t + 1]``. Returns ``(loss, ce, kl)``; ``kl`` is the
    per-token mean, already multiplied by ``T^2`` (so its gradient scale does not depend on ``T``).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ: "
            "teacher and student must share the tokenizer / vocabulary"
        )
    student = student_logits[:, :-1].float()
    teacher = teacher_logits[:, :-1].float()
    targets = labels[:, 1:]
    valid = targets != -100
    count = valid.sum().clamp(min=1)
    ce = F.cross_entropy(student.reshape(-1, student.shape[-1]), targets.reshape(-1), ignore_index=-100,
                         reduction="sum") / count
    student_log_probs = F.log_softmax(student / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher / temperature, dim=-1)
    kl_per_token = (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(-1)
    kl = (kl_per_token * valid).sum() / count * temperature**2
    return (1.0 - alpha) * ce + alpha * kl, ce, kl


class DistillationTrainer(Trainer):
    """A ``Trainer`` that distils a frozen ``teacher_model`` into the trained model.

    Args:
        teacher_model: any causal LM with the student's vocabulary; put in eval mode, frozen, moved to the
            training device. A specialist teacher (its forward takes ``cluster_ids``) gets each row's cluster id
            from the batch, kept even when the student takes none.
        alpha: weight of the KL term (0 = plain fine-tuning, 1 = pure distillation).
        temperature: softmax temperature ``T`` of both distributions in the KL.
    """

    # compute_loss returns a per-micro-batch mean: the Trainer divides it by the accumulation steps (see
    # ImportanceWeightedTrainer).
    loss_is_scaled_for_ga = False
    # what the teacher is given of a batch: the ids and mask, and these when its forward names them
    TEACHER_EXTRA_INPUTS = ("position_ids", "cluster_ids")

    def __init__(self, *args, teacher_model, alpha: float = 0.5, temperature: float = 2.0, **kwargs):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        super().__init__(*args, **kwargs)
        self.teacher_model = teacher_model.eval().requires_grad_(False).to(self.args.device)
        self.alpha = alpha
        self.temperature = temperature
        named = _forward_parameters(teacher_model)
        self._teacher_inputs = ["input_ids", "attention_mask", *(k for k in self.TEACHER_EXTRA_INPUTS if k in named)]
        self._student_takes_cluster_ids = "cluster_ids" in _forward_parameters(self.model)

    def _set_signature_columns_if_needed(self):  # keep the teacher's inputs (cluster_ids) the student lacks
        super()._set_signature_columns_if_needed()
        missing = [key for key in self._teacher_inputs if key not in self._signature_columns]
        self._signature_columns = list(self._signature_columns) + missing

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        teacher_inputs = {key: inputs[key] for key in self._teacher_inputs if key in inputs}
        if not self._student_takes_cluster_ids:
            inputs.pop("cluster_ids", None)  # kept for the teacher only
        outputs = model(**inputs)
        with torch.no_grad():
            teacher_logits = self.teacher_model(**teacher_inputs).logits
        # Evaluation reports the plain cross-entropy, so early stopping compares like with like across methods.
        alpha = self.alpha if model.training else 0.0
        loss, _, _ = distillation_loss(outputs.logits, teacher_logits, labels, alpha=alpha,
                                       temperature=self.temperature)
        return (loss, outputs) if return_outputs else loss


def _forward_parameters(model) -> set[str]:
    """The argument names of ``model``'s forward (of the wrapped model for a PEFT model, whose own takes **kwargs)."""
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(model.forward).parameters)
