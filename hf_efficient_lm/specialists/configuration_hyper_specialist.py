"""Configuration of the projected network (SLM-pn): a Llama whose MLP weights are read off per cluster."""

from __future__ import annotations

from transformers import LlamaConfig

from .routing_specialists import ClusterConfig


class HyperSpecialistConfig(ClusterConfig):
    """A ``LlamaConfig`` for the shared network plus the projection sizes of the per-cluster MLP weights.

    For cluster ``i`` and layer ``l`` every MLP matrix is ``W^(l,i) = sum_r (E_i . M^(l))_r T^(l)_r`` with cluster
    codes ``E`` ``[num_clusters, code_dim]`` (shared by all layers), per-layer projections ``M^(l)``
    ``[code_dim, num_basis]`` and per-layer bases ``T^(l)`` ``[num_basis, *W.shape]``. Attention, embeddings, norms
    and the head are ordinary shared parameters. With ``num_basis == code_dim == num_clusters``, one-hot ``E`` and
    identity ``M`` each cluster owns one basis tensor: the hard mixture (of MLPs).

    Args:
        num_clusters, default_cluster_id: see :class:`ClusterConfig`.
        num_basis: ``h``, basis tensors per MLP matrix (the capacity; the paper's PN uses ``h < k``).
        code_dim: ``m``, length of each cluster code ``E_i``.
        projection_per_matrix: one ``M^(l)`` per matrix (gate, up, down: ``[3, m, h]``) instead of one shared.
        projection_init: ``"shared_start"``: every cluster starts as the same Llama-initialised MLP (basis 0; the
            other bases 0; ``E[:, 0] = 1``, ``M[..., :, 0] = e_0``); ``"random"``: random ``E``, ``M``, bases.
    """

    model_type = "hfelm_hyper_specialist"
    # Llama's plan minus the MLP: the per-cluster MLP is read off bases, not gate/up/down Linear layers.
    base_model_tp_plan = {key: value for key, value in LlamaConfig.base_model_tp_plan.items() if ".mlp." not in key}

    num_basis: int = 4
    code_dim: int = 4
    projection_per_matrix: bool = False
    projection_init: str = "random"

    def validate_architecture(self):
        """:class:`ClusterConfig`'s checks plus the projection fields (``ValueError`` naming the value)."""
        super().validate_architecture()
        for name in ("num_basis", "code_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.projection_init not in ("random", "shared_start"):
            raise ValueError(f"projection_init={self.projection_init!r}; choose 'random' or 'shared_start'")


__all__ = ["HyperSpecialistConfig"]
