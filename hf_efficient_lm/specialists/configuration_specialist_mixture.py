"""Configuration of the hard mixture of small Llama experts (SLM-mix), one expert per cluster."""

from __future__ import annotations

from .routing_specialists import ClusterConfig


class SpecialistMixtureConfig(ClusterConfig):
    """A ``LlamaConfig`` describing ONE expert, plus how many experts there are.

    Every expert is a full ``LlamaForCausalLM`` of this shape trained only on its cluster's windows; a sequence is
    routed to the expert of its cluster id (``cluster_ids`` in ``forward``; ``default_cluster_id`` when absent).

    Args:
        num_clusters, default_cluster_id: see :class:`ClusterConfig`; one expert per cluster. ``num_experts`` is an
            alias of ``num_clusters`` (configs saved with it load unchanged).
        (all other arguments: ``LlamaConfig``'s, for one expert)
    """

    model_type = "hfelm_specialist_mixture"
    # The experts sit under ``experts.<i>.model``, not where Llama's plans point: no tensor / pipeline parallelism
    # (each sequence runs one small expert, which is the point of the method).
    base_model_tp_plan = {}
    base_model_pp_plan = {}

    # One name per concept across the family (HyperSpecialistConfig.num_clusters); the old name stays an alias.
    attribute_map = {"num_experts": "num_clusters"}


__all__ = ["SpecialistMixtureConfig"]
