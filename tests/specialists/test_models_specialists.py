import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, LlamaForCausalLM, TrainingArguments

import hf_efficient_lm  # noqa: F401
from hf_efficient_lm.specialists import (
    HyperSpecialistConfig,
    HyperSpecialistForCausalLM,
    SpecialistMixtureConfig,
    SpecialistMixtureForCausalLM,
    cluster_homogeneous_order,
    hyper_from_llama,
    mixture_from_experts,
    save_experts,
    train_mixture_experts,
)
from hf_efficient_lm.specialists.compat_specialists import CACHE_NAME, cache_of
from hf_efficient_lm.testing_utils import TINY_LLAMA_KWARGS
from tests.helpers import forced_thread_switches, only_adapter, two_lora_adapters

K = 3


def make_mixture(seed=0, **overrides) -> SpecialistMixtureForCausalLM:
    torch.manual_seed(seed)
    return SpecialistMixtureForCausalLM(SpecialistMixtureConfig(**{**TINY_LLAMA_KWARGS, **overrides}, num_experts=K)).eval()


def make_hyper(seed=0, **overrides) -> HyperSpecialistForCausalLM:
    torch.manual_seed(seed)
    config = HyperSpecialistConfig(**{**TINY_LLAMA_KWARGS, **overrides}, num_clusters=K, num_basis=2, code_dim=2)
    return HyperSpecialistForCausalLM(config).eval()


def ids(batch=4, length=10, seed=0):
    return torch.randint(3, 128, (batch, length), generator=torch.Generator().manual_seed(seed))


CLUSTERS = torch.tensor([0, 2, 1, 2])


@pytest.mark.parametrize("make", [make_mixture, make_hyper])
def test_mixed_batch_routes_each_row(make):
    model, x = make(), ids()
    out = model(x, cluster_ids=CLUSTERS, labels=x)
    for row, cluster in enumerate(CLUSTERS.tolist()):
        alone = model(x[row : row + 1], cluster_ids=torch.tensor([cluster])).logits
        torch.testing.assert_close(out.logits[row : row + 1], alone, atol=1e-5, rtol=1e-5)
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 128), x[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    # every expert keeps only the asked-for logits, as Llama does (generic evaluation of the last position)
    last = model(x, cluster_ids=CLUSTERS, logits_to_keep=1).logits
    torch.testing.assert_close(last, out.logits[:, -1:], atol=1e-5, rtol=1e-5)
    # different clusters really give different functions
    assert not torch.allclose(model(x, cluster_ids=0).logits, model(x, cluster_ids=1).logits)


@pytest.mark.parametrize("make", [make_mixture, make_hyper])
def test_peft_per_row_adapters_over_rows_of_several_clusters(make):
    """PEFT's mixed adapter batches (``adapter_names=[...]``) hand each LoRA layer one adapter per row of the whole
    batch. The projected network runs every row through one network: each row gets what its cluster and adapter give
    it alone. The hard mixture runs each expert on its own rows, so it refuses by name (PEFT raised its own length
    error); one cluster per batch takes per-row adapters (the contract check ``lora_mixed_batch``)."""
    model = two_lora_adapters(make(), ["q_proj", "v_proj"])
    x, names = ids(), ["second", "first", "__base__", "first"]
    if make is make_mixture:
        with pytest.raises(ValueError, match=r"per-row adapters .*rows of several clusters \(\[0, 1, 2\]\)"):
            model(input_ids=x, cluster_ids=CLUSTERS, adapter_names=names)
        return
    with torch.no_grad():
        mixed = model(input_ids=x, cluster_ids=CLUSTERS, adapter_names=names).logits
        for row, name in enumerate(names):
            with only_adapter(model, name):
                alone = model(input_ids=x[row:row + 1], cluster_ids=CLUSTERS[row:row + 1]).logits
            torch.testing.assert_close(mixed[row:row + 1], alone, atol=1e-5, rtol=0)
        with model.disable_adapter():  # the adapters matter: row 0 without its adapter is another function
            assert (model(input_ids=x[:1], cluster_ids=CLUSTERS[:1]).logits - mixed[:1]).abs().max() > 1e-2


@pytest.mark.parametrize("make", [make_mixture, make_hyper])
def test_threads_routing_to_different_clusters_each_get_their_own(make):
    """Threads sharing one model, each routing its rows to another cluster, get what each call gets alone. (The
    projected network once set the routed ids on its MLPs around each layer call: threads read each other's clusters,
    or found none.)"""
    model, x = make(), ids()
    calls = [(x[:rows], torch.full((rows,), cluster)) for rows, cluster in [(1, 0), (2, 1), (3, 2), (4, 0), (2, 2), (1, 1)]]

    @torch.no_grad()  # (grad mode is per thread)
    def logits(call):
        return model(call[0], cluster_ids=call[1]).logits

    alone = [logits(call) for call in calls]
    for _ in range(5):
        with forced_thread_switches(), ThreadPoolExecutor(len(calls)) as pool:
            together = list(pool.map(logits, calls))
        for result, expected in zip(together, alone):
            torch.testing.assert_close(result, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make", [make_mixture, make_hyper])
def test_instantiate_equals_routed_forward(make):
    model, x = make(), ids()
    for cluster in range(K):
        stock = model.instantiate(cluster=cluster)
        assert type(stock) is LlamaForCausalLM and stock.config.model_type == "llama"
        torch.testing.assert_close(stock(x).logits, model(x, cluster_ids=cluster).logits, atol=1e-5, rtol=1e-5)


def test_projected_network_with_one_hot_codes_is_the_hard_mixture():
    """h = m = k, E = I, M = I, T_r = expert r's MLP weights  ==>  PN(cluster r) == expert r, for every r."""
    mixture = make_mixture(seed=1)
    shared = {name: t for name, t in mixture.experts[0].state_dict().items() if ".mlp." not in name}
    for expert in mixture.experts[1:]:  # experts differ only in their MLPs, as in the PN's parameterisation
        expert.load_state_dict({**expert.state_dict(), **shared})
    config = HyperSpecialistConfig(**TINY_LLAMA_KWARGS, num_clusters=K, num_basis=K, code_dim=K)
    hyper = HyperSpecialistForCausalLM(config).eval()
    state = dict(shared)
    state["model.cluster_codes"] = torch.eye(K)
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}.mlp"
        state[f"{prefix}.coefficient_projection"] = torch.eye(K)
        for matrix, basis in (("gate_proj", "gate_basis"), ("up_proj", "up_basis"), ("down_proj", "down_basis")):
            state[f"{prefix}.{basis}"] = torch.stack(
                [expert.state_dict()[f"{prefix}.{matrix}.weight"] for expert in mixture.experts]
            )
    hyper.load_state_dict(state, strict=True)
    x = ids(batch=6, seed=2)
    clusters = torch.tensor([0, 1, 2, 2, 1, 0])
    torch.testing.assert_close(hyper(x, cluster_ids=clusters).logits, mixture(x, cluster_ids=clusters).logits,
                               atol=1e-5, rtol=1e-5)


def test_histogram_instantiation():
    mixture = make_mixture()
    averaged = mixture.instantiate(histogram=[1.0, 0.0, 3.0])
    expected = 0.25 * mixture.experts[0].lm_head.weight + 0.75 * mixture.experts[2].lm_head.weight
    torch.testing.assert_close(averaged.lm_head.weight, expected)
    hyper = make_hyper()
    histogram = torch.tensor([0.2, 0.3, 0.5])
    stock = hyper.instantiate(histogram=histogram)
    with torch.no_grad():  # linear in E: the mixed code behaves like a cluster whose code is the mix
        hyper.model.cluster_codes[0] = histogram @ hyper.model.cluster_codes
    torch.testing.assert_close(stock(ids()).logits, hyper(ids(), cluster_ids=0).logits, atol=1e-5, rtol=1e-5)


def test_experts_as_independent_folders(tmp_path):
    mixture = make_mixture()
    paths = save_experts(mixture, tmp_path)
    assert [p.name for p in paths] == ["expert_0", "expert_1", "expert_2"]
    reloaded = AutoModelForCausalLM.from_pretrained(paths[1])
    assert type(reloaded) is LlamaForCausalLM
    rebuilt = mixture_from_experts(paths).eval()
    x = ids()
    torch.testing.assert_close(rebuilt(x, cluster_ids=CLUSTERS).logits, mixture(x, cluster_ids=CLUSTERS).logits)
    other = LlamaForCausalLM(mixture.instantiate(cluster=0).config.__class__(**{**TINY_LLAMA_KWARGS,
                                                                                "hidden_size": 64}))
    with pytest.raises(ValueError, match="different config"):
        mixture_from_experts([paths[0], other])


def test_generation_with_cache():
    hyper, x = make_hyper(), ids(batch=3, length=6)
    clusters = torch.tensor([2, 0, 1])
    cached = hyper.generate(x, cluster_ids=clusters, max_new_tokens=6, do_sample=False)
    uncached = hyper.generate(x, cluster_ids=clusters, max_new_tokens=6, do_sample=False, use_cache=False)
    assert cached.tolist() == uncached.tolist()
    mixture = make_mixture()
    routed = mixture.generate(x, cluster_ids=torch.tensor([1, 1, 1]), max_new_tokens=6, do_sample=False)
    expert = mixture.experts[1].generate(x, max_new_tokens=6, do_sample=False)
    assert routed.tolist() == expert.tolist()


@pytest.mark.parametrize("make", [make_mixture, make_hyper])
def test_bad_cluster_ids(make):
    model, x = make(), ids()
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        model(x, cluster_ids=torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="3 entries for a batch of 4"):
        model(x, cluster_ids=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="2 bins"):
        model.instantiate(histogram=[0.5, 0.5])
    with pytest.raises(ValueError, match="exactly one"):
        model.instantiate()


def test_generation_defaults_survive_instantiate_save_experts_and_reassembly(tmp_path):
    """instantiate() built a stock Llama with default generation settings, so save_experts and mixture_from_experts
    dropped eos ids, lengths and penalties that generate() then ignored."""
    mixture = make_mixture()
    mixture.generation_config.update(eos_token_id=[2, 50], max_new_tokens=5, repetition_penalty=1.3)
    hyper = HyperSpecialistForCausalLM(HyperSpecialistConfig(**TINY_LLAMA_KWARGS, num_clusters=K))
    hyper.generation_config.update(eos_token_id=[2, 50], max_new_tokens=5)

    def settings(model):
        return model.generation_config.eos_token_id, model.generation_config.max_new_tokens

    assert settings(mixture.instantiate(cluster=1)) == settings(hyper.instantiate(cluster=2)) == ([2, 50], 5)
    again = mixture_from_experts(save_experts(mixture, tmp_path))
    assert settings(again) == ([2, 50], 5) and again.generation_config.repetition_penalty == 1.3


def test_hyper_mlp_of_a_mixed_cluster_batch_keeps_the_autocast_dtype():
    """A batch of several clusters gathered its groups with index_copy into an fp32 buffer: CPU autocast promotes
    index_copy, CUDA's does not, so bf16 evaluation of mixed clusters crashed on a GPU. The groups now keep their
    dtype, as a one-cluster batch does."""
    model = make_hyper()
    x = ids(batch=4, length=6, seed=2)
    mlp = model.model.layers[0].mlp
    seen = []
    mlp.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(x, cluster_ids=torch.tensor([0, 1, 2, 0])).logits
        model(x, cluster_ids=1)
    assert seen == [torch.bfloat16, torch.bfloat16] and torch.isfinite(mixed).all()


def test_cluster_homogeneous_order():
    cluster_ids = np.array([0] * 5 + [1] * 3 + [2] * 8)
    order = cluster_homogeneous_order(cluster_ids, 4, seed=0)
    blocks = cluster_ids[order].reshape(-1, 4)
    assert all(len(set(block.tolist())) == 1 for block in blocks)
    assert set(order.tolist()) == set(range(16))  # every row appears
    # shuffled at both levels: the clusters' blocks interleave (in cluster order, training would see all of cluster
    # 0, then all of 1, ...) and a block is not a run of neighbouring rows; each seed draws its own order
    many = np.repeat(np.arange(4), 40)
    order = cluster_homogeneous_order(many, 4, seed=0)
    block_clusters = many[order].reshape(-1, 4)[:, 0]
    assert (np.diff(block_clusters) < 0).any()
    assert not all(np.array_equal(block, block[0] + np.arange(4)) for block in order.reshape(-1, 4))
    assert not np.array_equal(order, cluster_homogeneous_order(many, 4, seed=1))


def test_cluster_homogeneous_sampler_draws_a_new_order_each_epoch_without_set_epoch():
    from hf_efficient_lm.tools.specialists_training import _ClusterHomogeneousSampler

    sampler = _ClusterHomogeneousSampler([0] * 8 + [1] * 8, batch_size=4, seed=0)
    first, second = list(sampler), list(sampler)  # a plain loop that never calls set_epoch
    assert sorted(first) == sorted(second) == list(range(16)) and first != second


def test_specialist_collator_pads_right_and_never_scores_padding():
    from hf_efficient_lm.tools.specialists_training import SpecialistCollator

    batch = SpecialistCollator(pad_token_id=0)([{"input_ids": [5, 6, 7], "cluster_ids": 2},
                                                {"input_ids": [8], "cluster_ids": 0}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]
    assert batch["cluster_ids"].tolist() == [2, 0]


def test_cluster_homogeneous_batches_of_an_epoch_do_not_depend_on_a_restart(tmp_path):
    """A resumed process builds a new Trainer and enters epoch e directly: its batches must be those epoch e of an
    uninterrupted run sees (a restarted epoch count replayed epoch 0's batches)."""
    from hf_efficient_lm.tools.specialists_training import ClusterHomogeneousTrainer

    dataset = Dataset.from_dict({"input_ids": ids(batch=16, length=4, seed=1).tolist(),
                                 "cluster_ids": [0] * 6 + [1] * 4 + [2] * 6})
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, report_to=[], use_cpu=True,
                             remove_unused_columns=False, seed=3)

    def epoch_batches(loader, epoch):
        loader.set_epoch(epoch)  # what the Trainer does before each epoch
        return [batch["input_ids"].tolist() for batch in loader]

    def loader():
        return ClusterHomogeneousTrainer(model=make_mixture(), args=args, train_dataset=dataset).get_train_dataloader()

    uninterrupted = loader()
    epochs = [epoch_batches(uninterrupted, epoch) for epoch in range(3)]
    assert epochs[0] != epochs[1] != epochs[2]
    assert epoch_batches(loader(), 2) == epochs[2] and epoch_batches(loader(), 1) == epochs[1]


def test_trainer_trains_only_routed_experts_and_hyper_gets_gradients(tmp_path):
    mixture = make_mixture().train()
    x = ids(batch=8, length=12, seed=5)
    dataset = Dataset.from_dict({"input_ids": x.tolist(), "cluster_ids": [0, 0, 0, 0, 2, 2, 2, 2]})
    before = {i: mixture.experts[i].lm_head.weight.detach().clone() for i in range(K)}
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4,
                             learning_rate=1e-2, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
    with torch.no_grad():
        loss_before = mixture(x, cluster_ids=torch.tensor(dataset["cluster_ids"]), labels=x).loss
    train_mixture_experts(mixture, dataset, args)
    with torch.no_grad():
        loss_after = mixture(x, cluster_ids=torch.tensor(dataset["cluster_ids"]), labels=x).loss
    assert loss_after < loss_before
    assert torch.equal(mixture.experts[1].lm_head.weight, before[1])  # cluster 1 has no rows: untouched
    assert not torch.equal(mixture.experts[0].lm_head.weight, before[0])
    hyper = make_hyper().train()
    hyper(x, cluster_ids=torch.tensor(dataset["cluster_ids"]), labels=x).loss.backward()
    mlp = hyper.model.layers[0].mlp
    assert hyper.model.cluster_codes.grad[[0, 2]].abs().sum() > 0
    assert hyper.model.cluster_codes.grad[1].abs().sum() == 0
    assert mlp.gate_basis.grad.abs().sum() > 0 and mlp.coefficient_projection.grad.abs().sum() > 0


@pytest.mark.parametrize("template", ["specialist_mixture", "specialist_hyper", "specialist_specialized"])
def test_model_card_templates_render(template):
    from hf_efficient_lm.hub import CardInfo, render_model_card

    info = CardInfo(model_id="someone/specialist", base_model="someone/base", datasets=["corpus"],
                    metrics=[("pydocs", "perplexity", 12.5)],
                    extra={"num_experts": 4, "method": "SLM-pn", "selection": "most_frequent"})
    text = str(render_model_card(f"model_cards/{template}.md", info))
    assert "someone/specialist" in text and "{{" not in text and "12.5" in text


def test_independent_expert_jobs_assemble_into_a_mixture(tmp_path):
    from hf_efficient_lm.tools.specialists_training import train_expert
    from hf_efficient_lm.testing_utils import make_tiny_llama

    x = ids(batch=4, length=12, seed=3)
    dataset = Dataset.from_dict({"input_ids": x.tolist(), "cluster_ids": [0, 1, 0, 1]})
    args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=2,
                             learning_rate=1e-2, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
    paths = [train_expert(make_tiny_llama(seed=c), dataset, c, tmp_path / "experts", args) for c in (0, 1)]
    assert [p.name for p in paths] == ["expert_0", "expert_1"]
    mixture = mixture_from_experts(paths).eval()
    expert_1 = LlamaForCausalLM.from_pretrained(paths[1]).eval()
    torch.testing.assert_close(mixture(x, cluster_ids=1).logits, expert_1(x).logits)
    assert not torch.equal(expert_1.lm_head.weight, make_tiny_llama(seed=1).lm_head.weight)  # it trained
    with pytest.raises(ValueError, match="no rows of cluster 5"):
        train_expert(make_tiny_llama(), dataset, 5, tmp_path, args)


def test_expert_job_cli(tmp_path):
    from hf_efficient_lm.tools.specialists_training import main
    from hf_efficient_lm.testing_utils import save_tiny_llama

    save_tiny_llama(tmp_path / "base")
    x = ids(batch=4, length=12, seed=3)
    Dataset.from_dict({"input_ids": x.tolist(), "cluster_ids": [0, 1, 0, 1]}).save_to_disk(tmp_path / "windows")
    common = ["--base", str(tmp_path / "base"), "--windows", str(tmp_path / "windows"), "--output-dir",
              str(tmp_path / "experts"), "--max-steps", "1", "--batch-size", "2"]
    paths = [main([*common, "--cluster", str(c)]) for c in (0, 1)]
    mixture = mixture_from_experts(tmp_path / "experts")
    assert mixture.config.num_experts == 2 and [p.name for p in paths] == ["expert_0", "expert_1"]


def test_expert_job_trains_with_the_batch_size_and_learning_rate_it_is_given(tmp_path):
    """train-expert's --batch-size and --learning-rate reach the Trainer: its expert equals train_expert's with the
    same TrainingArguments, and the defaults (16 rows, 1e-3) would give other weights."""
    from safetensors.torch import load_file

    from hf_efficient_lm.tools.specialists_training import main, train_expert
    from hf_efficient_lm.testing_utils import save_tiny_llama

    save_tiny_llama(tmp_path / "base")
    windows = Dataset.from_dict({"input_ids": ids(batch=12, length=12, seed=3).tolist(), "cluster_ids": [0, 1] * 6})
    windows.save_to_disk(tmp_path / "windows")
    got = load_file(main(["--base", str(tmp_path / "base"), "--windows", str(tmp_path / "windows"), "--cluster", "1",
                          "--output-dir", str(tmp_path / "cli"), "--max-steps", "2", "--batch-size", "2",
                          "--learning-rate", "0.02", "--save-steps", "0"]) / "model.safetensors")

    def direct(out, batch_size, learning_rate, data=windows):
        args = TrainingArguments(output_dir=str(tmp_path / out / "trainer"), max_steps=2, report_to=[], seed=0,
                                 per_device_train_batch_size=batch_size, learning_rate=learning_rate,
                                 save_strategy="no")
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
        return load_file(train_expert(model, data, 1, tmp_path / out, args) / "model.safetensors")

    expected = direct("same", 2, 0.02)
    # the expert learns from its cluster's rows only: the other cluster's rows change nothing
    alone = direct("alone", 2, 0.02, data=windows.filter(lambda row: row["cluster_ids"] == 1))
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=0, rtol=0, msg=name)
        torch.testing.assert_close(alone[name], expected[name], atol=0, rtol=0, msg=name)
    for out, batch_size, learning_rate in (("default_batch", 16, 0.02), ("default_rate", 2, 1e-3)):
        other = direct(out, batch_size, learning_rate)
        assert not all(torch.equal(other[name], got[name]) for name in got), out


def test_a_killed_expert_job_resumes_to_the_same_weights(tmp_path, monkeypatch, capsys):
    """train-expert saved no checkpoint (a killed job started over) and wrote its expert folder in place; it now
    checkpoints every --save-steps under the run guard, resumes a killed job to the uninterrupted weights, refuses a
    job with other options, and removes its checkpoints once the expert folder is written (atomically)."""
    from safetensors.torch import load_file

    import hf_efficient_lm.tools.specialists_training as specialists_training
    from hf_efficient_lm.testing_utils import save_tiny_llama
    from tests.helpers import Killed, trainer_killed_at

    save_tiny_llama(tmp_path / "base")
    x = ids(batch=8, length=12, seed=3)
    Dataset.from_dict({"input_ids": x.tolist(), "cluster_ids": [0, 1] * 4}).save_to_disk(tmp_path / "windows")

    def job(out, *extra):
        return specialists_training.main(["--base", str(tmp_path / "base"), "--windows", str(tmp_path / "windows"),
                                          "--output-dir", str(tmp_path / out), "--cluster", "0", "--max-steps", "4",
                                          "--batch-size", "2", "--save-steps", "2", *extra])

    reference = load_file(job("reference") / "model.safetensors")
    monkeypatch.setattr(specialists_training, "Trainer", trainer_killed_at(specialists_training.Trainer, 3))
    with pytest.raises(Killed):
        job("killed")
    assert (tmp_path / "killed" / ".expert_0.trainer" / "checkpoint-2").is_dir()
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"different run .*seed: 0 -> 1"):
        job("killed", "--seed", "1")
    capsys.readouterr()
    resumed = load_file(job("killed") / "model.safetensors")
    assert "resuming from" in capsys.readouterr().out
    for name in reference:
        torch.testing.assert_close(resumed[name], reference[name], atol=0, rtol=0, msg=name)
    assert sorted(p.name for p in (tmp_path / "killed").iterdir()) == ["expert_0"]

    # told to start fresh, a job with other options replaces a killed job's checkpoints: it trains all its steps
    # from the base and gives what the same job gives in an empty folder
    monkeypatch.setattr(specialists_training, "Trainer", trainer_killed_at(specialists_training.Trainer, 3))
    with pytest.raises(Killed):
        job("replaced")
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"different run .*seed: 0 -> 1"):
        job("replaced", "--seed", "1")
    capsys.readouterr()
    fresh = load_file(job("replaced", "--seed", "1", "--overwrite-output-dir") / "model.safetensors")
    assert "starting fresh" in capsys.readouterr().out
    expected = load_file(job("seed1", "--seed", "1") / "model.safetensors")
    for name in expected:
        torch.testing.assert_close(fresh[name], expected[name], atol=0, rtol=0, msg=name)


def test_experts_assembled_in_cluster_order_past_ten(tmp_path):
    """12 expert folders: the folder (or an explicit list) maps expert_i to cluster i; a text-sorted list, which puts
    expert_10 before expert_2, and a folder with a gap are refused instead of routing clusters to other experts."""
    from hf_efficient_lm.testing_utils import make_tiny_llama

    for cluster in range(12):
        make_tiny_llama(seed=cluster).save_pretrained(tmp_path / f"expert_{cluster}")
    x = ids(batch=1)
    mixture = mixture_from_experts(tmp_path).eval()
    for cluster in (2, 10, 11):
        expert = LlamaForCausalLM.from_pretrained(tmp_path / f"expert_{cluster}").eval()
        torch.testing.assert_close(mixture(x, cluster_ids=cluster).logits, expert(x).logits)
    with pytest.raises(ValueError, match="is expert 2 of the list"):
        mixture_from_experts(sorted(tmp_path.glob("expert_*")))
    shutil.rmtree(tmp_path / "expert_7")
    with pytest.raises(ValueError, match="lacks expert_7"):
        mixture_from_experts(tmp_path)


def test_projected_network_upcycled_from_llama_starts_as_the_llama():
    from hf_efficient_lm.testing_utils import make_tiny_llama

    llama = make_tiny_llama(seed=4)
    hyper = hyper_from_llama(llama, num_clusters=K, num_basis=2).eval()
    x = ids()
    for cluster in range(K):
        torch.testing.assert_close(hyper(x, cluster_ids=cluster).logits, llama(x).logits, atol=1e-5, rtol=1e-5)
    hyper.train()
    hyper(x, cluster_ids=CLUSTERS, labels=x).loss.backward()
    assert hyper.model.layers[0].mlp.up_basis.grad[1].abs().sum() > 0  # the zero bases learn: clusters can diverge
    # exact in bf16 too, and with fewer code dimensions than clusters: coefficient 0 is exactly 1, the rest multiply
    # zero bases (a least-squares solve of E . M[:, 0] = 1 gave 0.99609 for 3 of 4 clusters in bf16)
    bf16 = make_tiny_llama(seed=4).to(torch.bfloat16)
    for code_dim in (2, 4):
        upcycled = hyper_from_llama(bf16, num_clusters=4, num_basis=3, code_dim=code_dim)
        for cluster in range(4):
            weights = upcycled.model.layers[1].mlp.materialize(upcycled.model.cluster_codes[cluster])
            for name, weight in weights.items():
                assert torch.equal(weight, getattr(bf16.model.layers[1].mlp, name).weight), (code_dim, cluster, name)
        assert not torch.equal(upcycled.model.cluster_codes[0], upcycled.model.cluster_codes[1])


def test_per_matrix_projection_gives_each_matrix_its_own_coefficients():
    torch.manual_seed(0)
    config = HyperSpecialistConfig(**TINY_LLAMA_KWARGS, num_clusters=K, num_basis=2, code_dim=2,
                                   projection_per_matrix=True)
    hyper = HyperSpecialistForCausalLM(config).eval()
    mlp = hyper.model.layers[0].mlp
    assert mlp.coefficient_projection.shape == (3, 2, 2)
    code = hyper.model.cluster_codes[1]
    weights = mlp.materialize(code)
    for index, (name, basis) in enumerate((("gate_proj", mlp.gate_basis), ("up_proj", mlp.up_basis),
                                           ("down_proj", mlp.down_basis))):
        coefficients = code @ mlp.coefficient_projection[index]  # [h], this matrix's own M
        torch.testing.assert_close(weights[name], torch.einsum("h,h...->...", coefficients, basis))
    shared = [code @ mlp.coefficient_projection[i] for i in range(3)]
    assert not torch.allclose(shared[0], shared[1])  # random per-matrix M: the three coefficient vectors differ
    x = ids()
    with torch.no_grad():  # the stock Llama of a cluster still equals the routed forward
        torch.testing.assert_close(hyper.instantiate(cluster=1)(x).logits, hyper(x, cluster_ids=1).logits,
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("per_matrix", [False, True])
def test_shared_start_init_every_cluster_begins_as_one_llama_then_diverges(per_matrix, tmp_path):
    torch.manual_seed(0)
    config = HyperSpecialistConfig(**TINY_LLAMA_KWARGS, num_clusters=K, num_basis=3, code_dim=K,
                                   projection_per_matrix=per_matrix, projection_init="shared_start")
    hyper = HyperSpecialistForCausalLM(config)
    stocks = [hyper.instantiate(cluster=c).state_dict() for c in range(K)]
    for name, tensor in stocks[0].items():
        for other in stocks[1:]:
            assert torch.equal(tensor, other[name]), name
    # the same scale as a Llama's MLP (the random init gives each cluster a different scale)
    gate = stocks[0]["model.layers.0.mlp.gate_proj.weight"]
    assert abs(gate.std().item() - config.initializer_range) < 0.2 * config.initializer_range
    x = ids()
    optimizer = torch.optim.Adam(hyper.parameters(), lr=1e-2)
    hyper.train()
    hyper(x, cluster_ids=CLUSTERS, labels=x).loss.backward()
    optimizer.step()
    after = [hyper.instantiate(cluster=c).state_dict()["model.layers.0.mlp.up_proj.weight"] for c in range(K)]
    assert (after[0] - after[2]).abs().max() > 1e-4  # one step apart already: the clusters diverge
    # a saved model reloads as saved (the init must not overwrite loaded weights)
    hyper.save_pretrained(tmp_path / "pn")
    again = HyperSpecialistForCausalLM.from_pretrained(tmp_path / "pn")
    for (name, tensor), loaded in zip(hyper.state_dict().items(), again.state_dict().values()):
        assert torch.equal(tensor, loaded), name
    with pytest.raises(ValueError, match="projection_init"):
        HyperSpecialistConfig(**TINY_LLAMA_KWARGS, projection_init="zeros")


def test_mixture_refuses_a_mixed_cluster_cache():
    mixture, x = make_mixture(), ids(batch=2, length=6)
    with pytest.raises(ValueError, match="several clusters"):
        mixture.generate(x, cluster_ids=torch.tensor([0, 1]), max_new_tokens=2, do_sample=False)
    uncached = mixture.generate(x, cluster_ids=torch.tensor([0, 1]), max_new_tokens=3, do_sample=False,
                                use_cache=False)
    for row, cluster in enumerate([0, 1]):
        alone = mixture.experts[cluster].generate(x[row : row + 1], max_new_tokens=3, do_sample=False)
        assert uncached[row].tolist() == alone[0].tolist()


@pytest.mark.parametrize("default_cluster_id", [0, 2])
def test_peft_prompt_tuning_embeds_with_the_default_experts_table(default_cluster_id, tmp_path):
    """PEFT's prompt learning embeds ids with ``embeddings.word_embeddings`` when a model has it, else with the first
    vocab-sized table (expert 0's): the mixture points it at the expert it runs, and the path adds no weights."""
    from peft import PromptTuningConfig, get_peft_model

    mixture = make_mixture(default_cluster_id=default_cluster_id)
    keys = set(mixture.state_dict())
    tuned = get_peft_model(mixture, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    assert tuned.word_embeddings is mixture.experts[default_cluster_id].get_input_embeddings()
    assert set(mixture.state_dict()) == keys and not any(".embeddings." in name for name, _ in mixture.named_modules())
    mixture.save_pretrained(tmp_path)
    assert set(SpecialistMixtureForCausalLM.from_pretrained(tmp_path).state_dict()) == keys


@pytest.mark.parametrize("make", [make_mixture, make_hyper])
def test_bfloat16_forward_and_instantiate_keep_the_dtype(make):
    model = make().to(torch.bfloat16)
    x = ids(batch=2, length=8)
    logits = model(x, cluster_ids=torch.tensor([0, 2])).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
    stock = model.instantiate(cluster=2)
    assert next(stock.parameters()).dtype == torch.bfloat16
    torch.testing.assert_close(stock(x[1:]).logits.float(), logits[1:].float(), atol=2e-2, rtol=2e-2)


# ---- what Transformers' common model tests check (issue 11, item 3: the mixture dropped them) -------------------
@pytest.mark.parametrize("clusters", [torch.tensor([1, 1, 1, 1]), CLUSTERS], ids=["one-expert", "mixed"])
def test_mixture_hidden_states_and_attentions_are_each_rows_expert(clusters):
    model, x = make_mixture(attn_implementation="eager"), ids()
    out = model(x, cluster_ids=clusters, output_hidden_states=True, output_attentions=True)
    n_layers = TINY_LLAMA_KWARGS["num_hidden_layers"]
    assert len(out.hidden_states) == n_layers + 1 and len(out.attentions) == n_layers
    for row, cluster in enumerate(clusters.tolist()):
        alone = model.experts[cluster](x[row : row + 1], output_hidden_states=True, output_attentions=True)
        for ours, theirs in zip(out.hidden_states + out.attentions, alone.hidden_states + alone.attentions):
            torch.testing.assert_close(ours[row : row + 1], theirs, atol=1e-5, rtol=1e-5)


def test_mixture_return_dict_false_gives_a_tuple():
    model, x = make_mixture(), ids()
    as_dict = model(x, cluster_ids=CLUSTERS, labels=x)
    as_tuple = model(x, cluster_ids=CLUSTERS, labels=x, return_dict=False)
    assert isinstance(as_tuple, tuple) and not hasattr(as_tuple, "keys")
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)


def test_mixture_loss_honours_shift_labels():
    model, x = make_mixture(), ids()
    shift = torch.full_like(x, -100)
    shift[:, :3] = x[:, 1:4]  # only the first three next-token targets count
    out = model(x, cluster_ids=CLUSTERS, labels=x, shift_labels=shift)
    expected = torch.nn.functional.cross_entropy(out.logits[:, :3].reshape(-1, 128), x[:, 1:4].reshape(-1))
    torch.testing.assert_close(out.loss, expected)


def test_mixture_generate_returns_hidden_states_and_attentions():
    model, x = make_mixture(attn_implementation="eager"), ids(batch=1)
    out = model.generate(x, attention_mask=torch.ones_like(x), cluster_ids=torch.tensor([2]), max_new_tokens=3,
                         do_sample=False, return_dict_in_generate=True, output_hidden_states=True,
                         output_attentions=True, pad_token_id=0)
    assert len(out.hidden_states) == 3 and all(step is not None for step in out.hidden_states)
    assert len(out.attentions) == 3 and out.attentions[0][0].shape[-1] == x.shape[1]


@pytest.mark.parametrize("make", [make_mixture, make_hyper])
def test_parallel_plans_name_modules_that_exist_and_compile_flag_is_honest(make):
    import re

    model = make()
    names = [name for name, _ in model.base_model.named_modules()]  # the plans are relative to the base model
    for plan in (model.config.base_model_tp_plan or {}, model.config.base_model_pp_plan or {}):
        for pattern in plan:
            regex = re.compile("^" + re.escape(pattern).replace(r"\*", r"\d+") + "$")
            assert any(regex.search(name) for name in names), f"plan entry {pattern!r} names no module"
    assert model._can_compile_fullgraph is False  # routing is data-dependent (torch.unique + a python loop)


@pytest.mark.parametrize("make", [make_mixture, make_hyper])
@pytest.mark.parametrize("histogram", [[float("nan"), 1.0, 1.0], [float("inf"), 1.0, 0.0], [-1.0, 1.0, 1.0]])
def test_instantiate_refuses_a_histogram_that_is_not_finite_and_non_negative(make, histogram):
    with pytest.raises(ValueError, match="histogram must be finite and non-negative"):
        make().instantiate(histogram=histogram)


def test_from_pretrained_overrides_are_validated(tmp_path):
    """A from_pretrained override is set after the config's own checks; the model's __init__ re-runs them."""
    from tests.contract.case_specialists import make_hyper, make_mixture

    for make, override in ((make_mixture, {"default_cluster_id": 7}), (make_hyper, {"num_basis": 0})):
        model = make()
        model.save_pretrained(tmp_path / type(model).__name__)
        with pytest.raises(ValueError, match=next(iter(override))):
            type(model).from_pretrained(tmp_path / type(model).__name__, **override)


def test_num_clusters_is_the_one_name_and_num_experts_an_alias(tmp_path):
    """The mixture and the hyper-specialist name the cluster count alike; configs saved with num_experts still load."""
    import json

    config = SpecialistMixtureConfig(**TINY_LLAMA_KWARGS, num_experts=3)
    assert config.num_clusters == config.num_experts == 3
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["num_clusters"] == 3 and "num_experts" not in saved
    saved["num_experts"] = saved.pop("num_clusters") + 2  # a config written before the rename
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert SpecialistMixtureConfig.from_pretrained(tmp_path).num_clusters == 5


@pytest.mark.parametrize("make", [make_mixture, make_hyper])
def test_cluster_ids_of_another_shape_or_dtype_are_refused_and_generate_expands_them_per_row(make):
    model, x = make(), ids(batch=3, length=6)
    torch.testing.assert_close(model(x, cluster_ids=torch.tensor([[2], [0], [1]])).logits,
                               model(x, cluster_ids=torch.tensor([2, 0, 1])).logits)
    # one id (an int, or a tensor of one element) routes the whole batch
    torch.testing.assert_close(model(x, cluster_ids=torch.tensor([2])).logits, model(x, cluster_ids=2).logits)
    with pytest.raises(ValueError, match=r"shape \[batch\] or \[batch, 1\], got \(1, 3\)"):
        model(x, cluster_ids=torch.tensor([[2, 0, 1]]))  # generate() would repeat it as 2,0,1,2,0,1 for rows 0,0,1,1,..
    with pytest.raises(ValueError, match="must be integers"):
        model(x, cluster_ids=torch.tensor([2.0, 0.0, 1.0]))
    clusters = torch.tensor([2, 0, 1])
    out = model.generate(x, cluster_ids=clusters, max_new_tokens=3, do_sample=False, num_beams=2,
                         num_return_sequences=2, use_cache=make is make_hyper)
    for row in range(3):
        alone = model.generate(x[row : row + 1], cluster_ids=clusters[row : row + 1], max_new_tokens=3,
                               do_sample=False, num_beams=2, num_return_sequences=2, use_cache=make is make_hyper)
        assert out[2 * row : 2 * row + 2].tolist() == alone.tolist()


def test_mixture_inputs_embeds_only_for_the_expert_whose_table_they_come_from():
    model, x = make_mixture(), ids()
    default = model.config.default_cluster_id
    embeds = model.get_input_embeddings()(x)
    torch.testing.assert_close(model(inputs_embeds=embeds, cluster_ids=default).logits,
                               model(x, cluster_ids=default).logits)
    with pytest.raises(ValueError, match=r"inputs_embeds routed to clusters \[0, 1, 2\]"):
        model(inputs_embeds=embeds, cluster_ids=CLUSTERS)


def test_mixture_neftune_noises_every_expert_like_the_default_one():
    from transformers.integrations.neftune import activate_neftune, deactivate_neftune

    model, x = make_mixture().train(), ids()
    clean = model(x, cluster_ids=CLUSTERS).logits.detach()
    handle = activate_neftune(model, 5.0)  # what Trainer(neftune_noise_alpha=5) does
    for cluster in range(K):  # each expert gets exactly the noise NEFTune gives that expert alone
        stock = model.instantiate(cluster=cluster)
        stock_handle = activate_neftune(stock, 5.0)
        torch.manual_seed(cluster)
        noisy = model(x, cluster_ids=cluster).logits
        torch.manual_seed(cluster)
        torch.testing.assert_close(noisy, stock(x).logits)
        deactivate_neftune(stock, stock_handle)
        assert (noisy - model.experts[cluster](x).logits).abs().max() > 1e-3  # (the hook is gone after the call)
    assert (model(x, cluster_ids=CLUSTERS).logits - clean).abs().amax(dim=(1, 2)).min() > 1e-3  # every row noised
    deactivate_neftune(model, handle)
    torch.testing.assert_close(model(x, cluster_ids=CLUSTERS).logits, clean)
    assert all(not hasattr(expert.get_input_embeddings(), "neftune_noise_alpha") for expert in model.experts)


@pytest.mark.parametrize("make", [make_mixture, make_hyper])
@torch.no_grad()
def test_a_decode_steps_mask_must_cover_the_cached_and_the_new_tokens(make):
    """Over a filled cache a 2-D mask spans the cached and the new tokens, as generate() passes it. Given the new token's
    width alone, Llama's forward padded it with zeros, masking what the step should attend to: 0.16 (mixture) / 0.26
    (projected network) off, silently."""
    model, x = make(), ids(batch=2, length=8)
    for width in (1, 9):
        cache = cache_of(model(x[:, :-1], use_cache=True))
        with pytest.raises(ValueError, match=rf"covers {width} positions but the inputs need 7 cached \+ 1 new = 8"):
            model(x[:, -1:], attention_mask=torch.ones(2, width, dtype=torch.long), **{CACHE_NAME: cache})
    step = model(x[:, -1:], attention_mask=torch.ones(2, 8, dtype=torch.long), **{CACHE_NAME: cache}).logits
    torch.testing.assert_close(step[:, -1], model(x).logits[:, -1], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_a_cache_keeps_the_clusters_it_was_filled_under():
    """A decode step that left cluster_ids out (the default cluster) or switched cluster reused keys computed under
    another cluster: 0.42 (mixture) / 0.23 (projected network) off the one-cluster forward, without an error. A
    multi-cluster batch's mask with the wrong number of rows was handed whole to every expert."""
    x = ids(batch=1, length=9, seed=5)
    for model in (make_mixture(default_cluster_id=1), make_hyper(default_cluster_id=1)):
        reference = model(x, cluster_ids=0).logits[:, -1]
        for later in ({"cluster_ids": 0}, {}, {"cluster_ids": 2}):
            cache = cache_of(model(x[:, :-1], cluster_ids=0, use_cache=True))
            if later.get("cluster_ids") == 0:
                torch.testing.assert_close(model(x[:, -1:], **{CACHE_NAME: cache}, **later).logits[:, -1], reference,
                                           atol=1e-5, rtol=1e-5)
            else:
                with pytest.raises(ValueError, match=r"KV cache was filled under cluster_ids \[0\]"):
                    model(x[:, -1:], **{CACHE_NAME: cache}, **later)
    three = ids(batch=3, length=6, seed=6)
    with pytest.raises(ValueError, match="attention_mask has 2 rows for a batch of 3"):
        make_mixture()(three, cluster_ids=torch.tensor([0, 2, 1]), attention_mask=torch.ones(2, 6, dtype=torch.long))
    # a float or bool cluster was truncated (1.7 -> expert 1, -0.5 -> expert 0) where forward refuses float ids
    for model in (make_mixture(), make_hyper()):
        for bad in (1.7, -0.5, True, "1"):
            with pytest.raises(ValueError, match="index in \\[0, 3\\)"):
                model.instantiate(cluster=bad)
        assert type(model.instantiate(cluster=torch.tensor(2))) is LlamaForCausalLM
