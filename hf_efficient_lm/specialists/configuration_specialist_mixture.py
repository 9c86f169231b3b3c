"""Configuration of the hard mixture of small Llama experts (SLM-mix), one expert per cluster."""

from __future__ import annotations

from transformers import LlamaConfig


class SpecialistMixtureConfig(LlamaConfig):
    """A ``LlamaConfig`` describing ONE expert, plus how many experts there are.

    Every expert is a full ``LlamaForCausalLM`` of this shape trained only on its cluster's windows; a sequence is
    routed to the expert of its cluster id (``cluster_ids`` in ``forward``; ``default_cluster_id`` when absent).

    Args:
        num_clusters: ``k``, the number of clusters of the ``ClusterIndex`` saved beside the checkpoint = the number of
            experts (one per cluster). ``num_experts`` is an alias (configs saved with it load unchanged).
        default_cluster_id: expert used when ``forward`` / ``generate`` get no ``cluster_ids``.
        (all other arguments: ``LlamaConfig``'s, for one expert)
    """

    model_type = "hfelm_specialist_mixture"
    # The experts sit under ``experts.<i>.model``, not where Llama's plans point: no tensor / pipeline parallelism
    # (each sequence runs one small expert, which is the point of the method).
    base_model_tp_plan = {}
    base_model_pp_plan = {}

    # One name per concept across the family (HyperSpecialistConfig.num_clusters); the old name stays an alias.
    attribute_map = {"num_experts": "num_clusters"}

    num_clusters: int = 4
    default_cluster_id: int = 0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.validate_architecture()

    def validate_architecture(self):
        """Transformers' validation hook, extended with this family's fields (``ValueError`` naming the value)."""
        super().validate_architecture()
        if not isinstance(self.num_clusters, int) or self.num_clusters < 1:
            raise ValueError(f"num_clusters must be a positive integer, got {self.num_clusters!r}")
        if not 0 <= self.default_cluster_id < self.num_clusters:
            raise ValueError(
                f"default_cluster_id={self.default_cluster_id} is not an expert index in [0, {self.num_clusters})"
            )

    def validate(self) -> None:  # save_pretrained runs it; the inherited one runs the parent's checks only
        self.validate_architecture()
        super().validate()


__all__ = ["SpecialistMixtureConfig"]
