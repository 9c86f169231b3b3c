import json

import pytest
import yaml

from hf_efficient_lm.hub import CardInfo, find_card_template, publish, render_model_card
from hf_efficient_lm.testing_utils import make_tiny_llama
from tests.helpers import FakeHfApi


def _card_metadata(readme: str) -> dict:
    return yaml.safe_load(readme.split("---")[1])


def test_render_card_carries_metadata_and_usage():
    info = CardInfo(model_id="me/tiny", base_model="me/base", datasets=["corpus"], metrics=[("corpus", "perplexity", 12.5)])
    card = render_model_card("llama_base", info)
    text = str(card)
    metadata = _card_metadata(text)
    assert metadata["base_model"] == "me/base" and metadata["datasets"] == ["corpus"]
    assert metadata["model-index"][0]["results"][0]["metrics"][0]["value"] == 12.5
    assert 'AutoModelForCausalLM.from_pretrained("me/tiny")' in text and "transformers>=5.23" in text


def test_missing_template_is_named():
    with pytest.raises(FileNotFoundError, match="no model card template 'nope'.*llama_base"):
        find_card_template("nope")


def test_publish_uploads_weights_config_and_card_through_the_injected_api(tmp_path):
    api = FakeHfApi()
    result = publish(make_tiny_llama(), "me/tiny", card_template="llama_base",
                     card_info=CardInfo(model_id="me/tiny", metrics=[("corpus", "perplexity", 3.0)]), api=api)
    assert api.repos[0][0] == "me/tiny"
    repo_id, files, kwargs = api.uploads[0]
    assert repo_id == "me/tiny" and result.commit == "commit-1"
    assert {"config.json", "model.safetensors", "README.md", "generation_config.json"} <= set(files)
    assert sorted(files) == result.files
    assert "model-index" in files["README.md"].decode()


def test_publish_of_a_family_folder_carries_auto_map_and_code(tmp_path):
    import hf_efficient_lm

    family_classes = [getattr(hf_efficient_lm, name) for name in ("AnchorLlamaForCausalLM",) if hasattr(hf_efficient_lm, name)]
    if not family_classes:
        pytest.skip("no family model class is exported yet")
    from hf_efficient_lm.testing_utils import save_tiny_llama

    base = save_tiny_llama(tmp_path / "base")
    model = family_classes[0].from_pretrained(base, anchor_token_ids=[5])
    api = FakeHfApi()
    publish(model, "me/family", card_template="anchor", api=api)  # llama_base is refused for it
    _, files, _ = api.uploads[0]
    config = json.loads(files["config.json"])
    assert "AutoModelForCausalLM" in config["auto_map"]
    module_file = config["auto_map"]["AutoModelForCausalLM"].split(".")[0] + ".py"
    assert module_file in files


def test_publish_refuses_a_folder_without_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json missing"):
        publish(tmp_path, "me/x", card_template="llama_base", api=FakeHfApi())


def test_publish_refuses_pickle_files_anywhere_in_the_folder(tmp_path):
    """Only top-level *.bin / *.pt were refused: a trainer/training_args.bin or a *.pth went up (and unpickles on
    download)."""
    for name in ("trainer/training_args.bin", "weights.pth"):
        folder = tmp_path / name.replace("/", "_")
        make_tiny_llama().save_pretrained(folder)
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_bytes(b"pickle")
        api = FakeHfApi()
        with pytest.raises(ValueError, match=f"refusing to publish pickle files \\({name}\\)"):
            publish(folder, "me/x", card_template="llama_base", api=api)
        assert not api.uploads


def test_publishing_a_training_output_dir_leaves_its_checkpoints_and_run_files_behind(tmp_path):
    """A run's output dir holds checkpoint-N folders (optimizer state: pickles), the run fingerprint and hidden files
    beside the model: the upload is the model only."""
    folder = tmp_path / "run"
    make_tiny_llama().save_pretrained(folder)
    (folder / "checkpoint-3").mkdir()
    (folder / "checkpoint-3" / "optimizer.pt").write_bytes(b"pickle")
    (folder / "run_fingerprint.json").write_text("{}")
    (folder / ".lock").write_text("123")
    api = FakeHfApi()
    publish(folder, "me/run", card_template="llama_base", api=api)
    _, files, _ = api.uploads[0]
    assert "config.json" in files and not [name for name in files if name.startswith(("checkpoint-", "run_", "."))]
