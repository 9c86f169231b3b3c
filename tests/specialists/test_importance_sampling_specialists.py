import numpy as np
import pytest
import torch
from datasets import Dataset, IterableDataset
from transformers import TrainingArguments

from hf_efficient_lm.specialists import (
    ImportanceWeightedTrainer,
    importance_sample,
    importance_sample_iterable,
    importance_weights,
    with_importance_weights,
)
from hf_efficient_lm.tools.importance_sampling import exact_counts
from hf_efficient_lm.tools.specialists_training import SpecialistCollator
from hf_efficient_lm.testing_utils import make_tiny_llama
from tests.helpers import one_sgd_step


@pytest.fixture(scope="module")
def generic():
    rng = np.random.default_rng(0)
    cluster_ids = rng.choice(4, size=1000, p=[0.55, 0.25, 0.15, 0.05])
    dataset = Dataset.from_dict({"row": list(range(1000)), "cluster": cluster_ids.tolist()})
    return dataset, cluster_ids


@pytest.mark.parametrize("replace", [True, False])
def test_exact_histogram(generic, replace):
    dataset, cluster_ids = generic
    target = np.array([0.1, 0.2, 0.3, 0.4])
    num_samples = 120
    sampled = importance_sample(dataset, cluster_ids, target, num_samples, seed=3, replace=replace)
    assert len(sampled) == num_samples
    counts = np.bincount(sampled["cluster"], minlength=4)
    np.testing.assert_array_equal(counts, [12, 24, 36, 48])
    assert np.abs(counts / num_samples - target).sum() < 1e-12
    # rows really come from the dataset and carry their own cluster
    assert all(cluster_ids[row] == c for row, c in zip(sampled["row"], sampled["cluster"]))
    if not replace:
        assert len(set(sampled["row"])) == num_samples
    again = importance_sample(dataset, cluster_ids, target, num_samples, seed=3, replace=replace)
    other = importance_sample(dataset, cluster_ids, target, num_samples, seed=4, replace=replace)
    assert again["row"] == sampled["row"] and other["row"] != sampled["row"]


def test_exact_counts_rounding():
    counts = exact_counts(np.array([1 / 3, 1 / 3, 1 / 3]), 10)
    assert counts.sum() == 10 and sorted(counts.tolist()) == [3, 3, 4]
    # unequal remainders: the spare sample goes to the largest one (1.4, 3.6, 5.0 -> 1, 4, 5)
    assert exact_counts(np.array([0.14, 0.36, 0.5]), 10).tolist() == [1, 4, 5]


def test_bad_input(generic):
    dataset, cluster_ids = generic
    with pytest.raises(ValueError, match="3 bins but cluster_ids go up to 3"):
        importance_sample(dataset, cluster_ids, [0.2, 0.3, 0.5], 10)
    with pytest.raises(ValueError, match="non-negative"):
        importance_sample(dataset, cluster_ids, [0.5, -0.1, 0.3, 0.3], 10)
    with pytest.raises(ValueError, match="999 entries"):
        importance_sample(dataset, cluster_ids[:-1], [0.25] * 4, 10)
    with pytest.raises(ValueError, match="without replacement needs"):
        importance_sample(dataset, cluster_ids, [0, 0, 0, 1], 200, replace=False)
    with pytest.raises(TypeError, match="IterableDataset|datasets.Dataset"):
        importance_sample(list(range(1000)), cluster_ids, [0.25] * 4, 10)


def test_missing_cluster_is_dropped_with_warning(generic):
    dataset, cluster_ids = generic
    target = [0.5, 0.0, 0.0, 0.0, 0.5]  # cluster 4 has no generic rows
    with pytest.warns(UserWarning, match=r"clusters \[4\]"):
        sampled = importance_sample(dataset, cluster_ids, target, 50)
    assert set(sampled["cluster"]) == {0}


def test_iterable_variant_matches_target_in_expectation():
    rng = np.random.default_rng(1)
    clusters = rng.choice(3, size=3000, p=[0.6, 0.3, 0.1]).tolist()

    def rows():
        for i, c in enumerate(clusters):
            yield {"row": i, "cluster": c}

    stream = IterableDataset.from_generator(rows)
    target = np.array([0.2, 0.3, 0.5])
    resampled = importance_sample_iterable(stream, target, seed=0)
    seen = [row["cluster"] for _, row in zip(range(1500), resampled)]
    empirical = np.bincount(seen, minlength=3) / len(seen)
    assert np.abs(empirical - target).sum() < 0.08


def test_iterable_variant_refuses_the_generic_histogram_and_drops_empty_clusters():
    clusters = [0] * 200 + [1] * 20  # cluster 2 has no generic rows

    def rows():
        for i, c in enumerate(clusters):
            yield {"row": i, "cluster": c}

    stream = IterableDataset.from_generator(rows)
    with pytest.raises(ValueError, match="generic histogram"):
        importance_sample_iterable(stream, [0.2, 0.3, 0.5], stopping_strategy="all_exhausted_without_replacement")
    with pytest.warns(UserWarning, match=r"clusters \[2\] carry 0.500 of the target mass"):
        resampled = importance_sample_iterable(stream, [0.2, 0.3, 0.5], cluster_sizes=[200, 20, 0],
                                               stopping_strategy="first_exhausted")
    seen = [row["cluster"] for row in resampled]
    assert len(seen) >= 20 and set(seen) == {0, 1}  # (without cluster_sizes the empty cluster ended it at 0 rows)


def test_importance_weights_without_rows_in_a_target_cluster():
    with pytest.raises(ValueError, match="no rows in any cluster the target histogram wants"):
        importance_weights([0, 0, 1], [0.0, 0.0, 1.0])  # (was NaN everywhere)
    with pytest.warns(UserWarning, match=r"clusters \[2\] carry 0.800"):
        weights = importance_weights([0, 0, 1, 1, 1], [0.1, 0.1, 0.8])
    np.testing.assert_allclose(weights, [1.25, 1.25, 5 / 6, 5 / 6, 5 / 6], rtol=1e-6)


def test_importance_weights_cap_the_ratio_then_restore_mean_one():
    # ratios p_target / p_generic: 0.5 / 0.9 for the nine rows of cluster 0, 0.5 / 0.1 = 5 for the one of cluster 1;
    # capped at 2, the weights no longer average 1 (0.7), so they are divided by their mean
    weights = importance_weights([0] * 9 + [1], [0.5, 0.5], max_weight=2.0)
    capped = np.array([0.5 / 0.9] * 9 + [2.0])
    np.testing.assert_allclose(weights, capped / capped.mean(), rtol=1e-6)
    assert weights.mean() == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_allclose(importance_weights([0] * 9 + [1], [0.5, 0.5]), [0.5 / 0.9] * 9 + [5.0], rtol=1e-6)


def test_importance_weights(generic):
    _, cluster_ids = generic
    weights = importance_weights(cluster_ids, [0.25, 0.25, 0.25, 0.25])
    assert weights.mean() == pytest.approx(1.0, rel=1e-5)
    generic_share = np.bincount(cluster_ids) / cluster_ids.size
    ratio = weights[cluster_ids == 3][0] / weights[cluster_ids == 0][0]
    assert ratio == pytest.approx(generic_share[0] / generic_share[3], rel=1e-5)


def test_weighted_trainer_loss(tmp_path):
    model = make_tiny_llama(seed=0)
    ids = torch.randint(3, 128, (4, 12), generator=torch.Generator().manual_seed(0))
    dataset = Dataset.from_dict({"input_ids": ids.tolist()})
    weighted = with_importance_weights(dataset, [0, 0, 1, 1], [0.0, 1.0])  # rows of cluster 0 weigh nothing
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = ImportanceWeightedTrainer(model=model, args=args, data_collator=SpecialistCollator(0))
    batch = SpecialistCollator(0)([weighted[i] for i in range(4)])
    loss = trainer.compute_loss(model, dict(batch))
    with torch.no_grad():
        expected = model(input_ids=ids[2:], labels=ids[2:]).loss
    torch.testing.assert_close(loss, expected)
    uniform = SpecialistCollator(0)([{"input_ids": row} for row in ids.tolist()])
    with torch.no_grad():
        torch.testing.assert_close(trainer.compute_loss(model, dict(uniform)), model(input_ids=ids, labels=ids).loss)


def test_weighted_trainer_trains_with_the_weight_column(tmp_path):
    model = make_tiny_llama(seed=0).train()
    ids = torch.randint(3, 128, (8, 12), generator=torch.Generator().manual_seed(1))
    dataset = with_importance_weights(Dataset.from_dict({"input_ids": ids.tolist()}), [0, 1] * 4, [0.2, 0.8])
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4,
                             learning_rate=1e-2, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
    trainer = ImportanceWeightedTrainer(model=model, args=args, train_dataset=dataset,
                                        data_collator=SpecialistCollator(0))
    seen = []
    original = trainer.compute_loss

    def spy(model, inputs, **kwargs):
        seen.append("loss_weight" in inputs)
        return original(model, inputs, **kwargs)

    trainer.compute_loss = spy
    trainer.train()
    assert seen and all(seen)  # the weight column survived Trainer's column filtering


def test_a_weight_shared_by_a_whole_micro_batch_still_scales_its_loss(tmp_path):
    """Normalising by the weights' sum cancelled them within any micro-batch of one weight (one row, one cluster): a
    row weighted 5 trained exactly like a row weighted 1."""
    model = make_tiny_llama(seed=0)
    ids = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(3))
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = ImportanceWeightedTrainer(model=model, args=args, data_collator=SpecialistCollator(0))
    with torch.no_grad():
        plain = model(input_ids=ids, labels=ids).loss
        for weight in (0.5, 5.0):
            batch = SpecialistCollator(0)([{"input_ids": row, "loss_weight": weight} for row in ids.tolist()])
            torch.testing.assert_close(trainer.compute_loss(model, dict(batch)), weight * plain)


def test_weighted_trainer_accumulates_like_one_larger_batch(tmp_path):
    ids = torch.randint(3, 128, (4, 12), generator=torch.Generator().manual_seed(2))
    # unequal weight sums per micro-batch (3 and 1): with rows of equal length the micro-batch means still average to
    # the whole batch's (a mean over tokens, whatever the weights)
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "loss_weight": [1.5, 1.5, 0.5, 0.5]})
    model = make_tiny_llama(seed=0)
    whole = one_sgd_step(ImportanceWeightedTrainer, model, dataset, batch_size=4, accumulation=1,
                         output_dir=tmp_path / "one")
    accumulated = one_sgd_step(ImportanceWeightedTrainer, model, dataset, batch_size=2, accumulation=2,
                               output_dir=tmp_path / "two")
    assert whole.abs().max() > 1e-4
    torch.testing.assert_close(accumulated, whole, atol=1e-6, rtol=1e-4)  # (was 2x: loss not divided by 2 steps)
