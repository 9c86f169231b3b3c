import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import LlamaForCausalLM, TrainingArguments

from hf_efficient_lm.specialists import (
    ClusterIndex,
    DistillationTrainer,
    HashedNgramEmbedder,
    HyperSpecialistConfig,
    HyperSpecialistForCausalLM,
    SpecialistMixtureConfig,
    SpecialistMixtureForCausalLM,
    specialize,
)
from hf_efficient_lm.tools.specialists_distillation import distillation_loss
from hf_efficient_lm.tools.specialists_training import SpecialistCollator
from hf_efficient_lm.testing_utils import TINY_LLAMA_KWARGS, make_tiny_llama
from tests.helpers import one_sgd_step

from .conftest import DOMAIN_WORDS, make_domain_texts

K = 3


@pytest.fixture(scope="module")
def index():
    texts = [text for domain in DOMAIN_WORDS for text in make_domain_texts(domain, 12, seed=5)]
    return ClusterIndex.fit(texts, K, embedder=HashedNgramEmbedder(dim=128), seed=0, progress=False)


@pytest.fixture(scope="module")
def models(specialist_tokenizer):
    kwargs = {**TINY_LLAMA_KWARGS, "vocab_size": len(specialist_tokenizer)}
    torch.manual_seed(0)
    mixture = SpecialistMixtureForCausalLM(SpecialistMixtureConfig(**kwargs, num_experts=K)).eval()
    hyper = HyperSpecialistForCausalLM(HyperSpecialistConfig(**kwargs, num_clusters=K, num_basis=2, code_dim=2)).eval()
    return {"mixture": mixture, "hyper": hyper}


def domain_dataset(n=12, domain="numbers"):
    return Dataset.from_dict({"text": make_domain_texts(domain, n, seed=11)})


def ids_of(tokenizer, text="one two three four five six seven"):
    return torch.tensor([tokenizer(text)["input_ids"]])


@pytest.mark.parametrize("kind", ["mixture", "hyper"])
def test_most_frequent_gives_the_experts_llama(kind, models, index, specialist_tokenizer):
    model = models[kind]
    result = specialize(model, domain_dataset(), index, tokenizer=specialist_tokenizer, block_size=16, max_steps=0)
    numbers_cluster = int(index.assign(make_domain_texts("numbers", 1, seed=1), progress=False)[0])
    assert result.report["selected_cluster"] == numbers_cluster
    assert int(np.argmax(result.report["histogram"])) == numbers_cluster
    assert type(result.model) is LlamaForCausalLM
    x = ids_of(specialist_tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x).logits, model(x, cluster_ids=numbers_cluster).logits,
                                   atol=1e-5, rtol=1e-5)


def test_best_pretrained_and_histogram(models, index, specialist_tokenizer):
    model = models["mixture"]
    best = specialize(model, domain_dataset(), index, selection="best_pretrained", tokenizer=specialist_tokenizer,
                      block_size=16, max_steps=0)
    losses = best.report["selection_losses"]
    assert best.report["selected_cluster"] == int(np.argmin(losses)) and len(losses) == K
    assert best.report["flops"]["selection"] > 0
    mixed = specialize(model, domain_dataset(), index, selection="histogram", tokenizer=specialist_tokenizer,
                       block_size=16, max_steps=0)
    histogram = mixed.report["histogram"]
    expected = sum(p * e.lm_head.weight for p, e in zip(histogram, model.experts))
    torch.testing.assert_close(mixed.model.lm_head.weight, expected, atol=1e-6, rtol=1e-5)


def test_best_finetuned_finetunes_every_expert_and_keeps_the_best(models, index, specialist_tokenizer):
    """The paper's Table 5 upper bound: k fine-tunes on the same split, the lowest held-out perplexity wins."""
    kwargs = dict(tokenizer=specialist_tokenizer, block_size=16, max_steps=10, eval_steps=5, learning_rate=3e-3,
                  batch_size=4, early_stopping_patience=2)
    best = specialize(models["mixture"], domain_dataset(24), index, selection="best_finetuned", **kwargs)
    candidates = best.report["candidates"]
    assert [c["cluster"] for c in candidates] == list(range(K))
    afters = [c["ppl_after"] for c in candidates]
    assert len(set(afters)) == K  # the experts differ, so the choice is not a tie
    assert best.report["selected_cluster"] == int(np.argmin(afters))
    assert best.report["ppl_after"] == min(afters)
    # the kept model is that expert's fine-tune: same perplexity as a direct fine-tune of that expert
    single = specialize(models["mixture"].instantiate(cluster=best.report["selected_cluster"]), domain_dataset(24),
                        None, **kwargs)
    assert single.report["ppl_after"] == pytest.approx(best.report["ppl_after"], rel=1e-4)
    rows = best.report["domain_train_tokens"] // 16
    for c in candidates:
        assert c["train_tokens"] == _trained_tokens(rows, 4, c["finetune_steps"], 16)
    assert best.report["flops"]["finetune"] == pytest.approx(
        sum(6.0 * best.report["inference_params"] * c["train_tokens"] for c in candidates))
    assert type(best.model) is LlamaForCausalLM


def _trained_tokens(rows: int, batch: int, steps: int, block: int) -> int:
    """Tokens ``steps`` Trainer steps feed over ``rows`` blocks: each epoch ends with a batch of the remainder."""
    per_epoch = [min(batch, rows - start) for start in range(0, rows, batch)]
    return sum(per_epoch[step % len(per_epoch)] for step in range(steps)) * block


def test_finetuning_lowers_heldout_perplexity_and_reloads_without_package(models, index, specialist_tokenizer,
                                                                          tmp_path):
    result = specialize(models["hyper"], domain_dataset(24), index, tokenizer=specialist_tokenizer, block_size=16,
                        max_steps=20, eval_steps=10, learning_rate=3e-3, batch_size=8, early_stopping_patience=2)
    report = result.report
    assert report["ppl_after"] < report["ppl_before"]
    rows = report["domain_train_tokens"] // 16
    assert rows % 8 and report["finetune_steps"] > rows // 8  # an epoch ended in a short batch, not 8 rows
    assert report["train_tokens"] == _trained_tokens(rows, 8, report["finetune_steps"], 16)
    assert report["flops"]["finetune"] == 6.0 * report["inference_params"] * report["train_tokens"]
    assert report["seconds"] > 0
    result.model.save_pretrained(tmp_path / "specialist")
    x = ids_of(specialist_tokenizer)
    with torch.no_grad():
        expected = result.model(x).logits
    torch.save(x, tmp_path / "ids.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        sys.modules["hf_efficient_lm"] = None  # the stock folder must not need our package
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'specialist')!r}).eval()
        assert type(model).__name__ == "LlamaForCausalLM", type(model)
        with torch.no_grad():
            logits = model(torch.load({str(tmp_path / 'ids.pt')!r})).logits
        torch.save(logits, {str(tmp_path / 'logits.pt')!r})
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env=env, timeout=120)
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, atol=1e-5, rtol=1e-5)


def test_a_fine_tune_that_only_hurts_keeps_the_starting_weights(models, index, specialist_tokenizer):
    model = models["mixture"]
    start = specialize(model, domain_dataset(), index, tokenizer=specialist_tokenizer, block_size=16, max_steps=0)
    wrecked = specialize(model, domain_dataset(), index, tokenizer=specialist_tokenizer, block_size=16, max_steps=4,
                         eval_steps=2, learning_rate=50.0, batch_size=4, early_stopping_patience=1)
    assert wrecked.report["kept_start_weights"] and wrecked.report["best_step"] == 0
    assert wrecked.report["ppl_after"] == wrecked.report["ppl_before"]
    x = ids_of(specialist_tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(wrecked.model(x).logits, start.model(x).logits)


def test_generic_llama_and_distillation(index, specialist_tokenizer):
    vocab = len(specialist_tokenizer)
    student = make_tiny_llama(seed=1, vocab_size=vocab)
    teacher = make_tiny_llama(seed=2, vocab_size=vocab, hidden_size=64, intermediate_size=128)
    result = specialize(student, domain_dataset(), None, tokenizer=specialist_tokenizer, block_size=16,
                        max_steps=4, eval_steps=2, teacher=teacher)
    assert result.report["selection"] == "generic" and result.report["teacher_params"] > 0
    assert result.model is not student


def test_distillation_loss_pieces():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 6, 11), torch.randn(2, 6, 11)
    labels = torch.randint(0, 11, (2, 6))
    labels[0, 3] = -100
    loss, ce, kl = distillation_loss(student, teacher, labels, alpha=0.0)
    expected_ce = torch.nn.functional.cross_entropy(student[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1),
                                                    ignore_index=-100)
    torch.testing.assert_close(loss, expected_ce)
    _, _, self_kl = distillation_loss(student, student, labels, alpha=1.0)
    assert self_kl.abs() < 1e-6
    loss, ce, kl = distillation_loss(student, teacher, labels, alpha=0.3, temperature=2.0)
    torch.testing.assert_close(loss, 0.7 * ce + 0.3 * kl)
    with pytest.raises(ValueError, match="share the tokenizer"):
        distillation_loss(student, teacher[..., :5], labels)


def test_distillation_trainer_moves_student_towards_teacher(tmp_path):
    student, teacher = make_tiny_llama(seed=1), make_tiny_llama(seed=2)
    x = torch.randint(3, 128, (8, 12), generator=torch.Generator().manual_seed(0))
    dataset = Dataset.from_dict({"input_ids": x.tolist()})

    def kl():
        with torch.no_grad():
            return distillation_loss(student(x).logits, teacher(x).logits, x, alpha=1.0)[2].item()

    before = kl()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=8, per_device_train_batch_size=8,
                             learning_rate=2e-2, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
    DistillationTrainer(model=student, args=args, train_dataset=dataset, data_collator=SpecialistCollator(0),
                        teacher_model=teacher, alpha=1.0, temperature=1.0).train()
    assert kl() < 0.5 * before
    with pytest.raises(ValueError, match="alpha"):
        DistillationTrainer(model=student, args=args, teacher_model=teacher, alpha=1.5)


def test_bad_input(models, index, specialist_tokenizer):
    model = models["mixture"]
    with pytest.raises(ValueError, match="domain dataset is empty"):
        specialize(model, Dataset.from_dict({"text": []}), index, tokenizer=specialist_tokenizer)
    with pytest.raises(ValueError, match="selection='argmax'"):
        specialize(model, domain_dataset(), index, selection="argmax", tokenizer=specialist_tokenizer)
    with pytest.raises(ValueError, match="no 'body' column"):
        specialize(model, domain_dataset(), index, tokenizer=specialist_tokenizer, text_column="body")
    small_index = ClusterIndex(index.centroids[:2], index.embedder)
    with pytest.raises(ValueError, match="k=2 but the model has 3"):
        specialize(model, domain_dataset(), small_index, tokenizer=specialist_tokenizer, block_size=16)
    with pytest.raises(ValueError, match="too small for block_size"):
        specialize(model, domain_dataset(2), index, tokenizer=specialist_tokenizer, block_size=4096)
    with pytest.raises(ValueError, match="needs the cluster index"):
        specialize(model, domain_dataset(), None, tokenizer=specialist_tokenizer, block_size=16)


def test_index_travels_with_the_checkpoint(models, index, tmp_path):
    from transformers import AutoModelForCausalLM

    models["hyper"].save_pretrained(tmp_path)
    index.save_pretrained(tmp_path)  # beside the weights: experts mean nothing without the centroids
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    reloaded_index = ClusterIndex.from_pretrained(tmp_path)
    assert type(reloaded) is HyperSpecialistForCausalLM and reloaded_index.k == reloaded.config.num_clusters
    np.testing.assert_array_equal(reloaded_index.centroids, index.centroids)


def test_distillation_trainer_accumulates_like_one_larger_batch(tmp_path):
    student, teacher = make_tiny_llama(seed=1), make_tiny_llama(seed=2)
    x = torch.randint(3, 128, (4, 12), generator=torch.Generator().manual_seed(0))
    dataset = Dataset.from_dict({"input_ids": x.tolist()})
    steps = [one_sgd_step(DistillationTrainer, student, dataset, batch_size=batch, accumulation=4 // batch,
                          output_dir=tmp_path / str(batch), teacher_model=teacher, alpha=0.5) for batch in (4, 2)]
    assert steps[0].abs().max() > 1e-4
    torch.testing.assert_close(steps[1], steps[0], atol=1e-6, rtol=1e-4)  # (was 2x: loss not divided by 2 steps)


def test_distillation_teacher_routes_each_row_by_its_cluster_id(tmp_path):
    torch.manual_seed(3)
    teacher = SpecialistMixtureForCausalLM(SpecialistMixtureConfig(**TINY_LLAMA_KWARGS, num_clusters=K)).eval()
    with torch.no_grad():  # sharpen: random experts are near-uniform, so any routing would give about the same KL
        for expert in teacher.experts:
            expert.lm_head.weight.mul_(50.0)
    student = make_tiny_llama(seed=1)
    x = torch.randint(3, 128, (4, 12), generator=torch.Generator().manual_seed(0))
    clusters = [2, 0, 1, 2]
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, per_device_train_batch_size=4)
    dataset = Dataset.from_dict({"input_ids": x.tolist(), "cluster_ids": clusters})
    trainer = DistillationTrainer(model=student, args=args, train_dataset=dataset, teacher_model=teacher, alpha=1.0,
                                  data_collator=SpecialistCollator(0))
    batch = next(iter(trainer.get_train_dataloader()))  # (shuffled) the cluster column survives for the teacher
    x, routing = batch["input_ids"], batch["cluster_ids"]
    assert sorted(routing.tolist()) == sorted(clusters)
    with torch.no_grad():
        loss = trainer.compute_loss(student.train(), dict(batch))
        routed = teacher(x, cluster_ids=routing).logits
        expected = distillation_loss(student(x).logits, routed, x, alpha=1.0, temperature=2.0)[0]
        default = distillation_loss(student(x).logits, teacher(x).logits, x, alpha=1.0, temperature=2.0)[0]
    torch.testing.assert_close(loss, expected)
    assert (routed - teacher(x).logits).abs().max() > 10  # the experts really differ
    assert (expected - default).abs() > 1e-2  # and the default expert alone gives another loss (here 0.09)
