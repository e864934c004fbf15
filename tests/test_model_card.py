"""The output's README.md is a Hub model card: metadata huggingface_hub reads, and load code that runs.

The PEFT and transformers snippets in the card are executed as written (the folder path put in),
on a tiny base model the adapters name, and must compute what PEFT computes from the inputs'
merged update; the fused card is checked the same way with transformers.
"""

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from _adapters import make_adapters, save_tiny_llama
from seedlora import merge_adapters

IDS = torch.tensor([[1, 5, 9, 13, 2, 7]])


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A tiny base on disk, two adapters whose configs name it, their linear merge and fused merge."""
    root = tmp_path_factory.mktemp("card")
    base = save_tiny_llama(root / "base")
    adapters = make_adapters(root / "inputs", ranks=(2, 4))
    for folder in adapters:
        config = json.loads((folder / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = str(base)
        (folder / "adapter_config.json").write_text(json.dumps(config))
    merge_adapters(adapters, root / "adapter", method="linear", weights=[0.7, 0.3])
    merge_adapters(adapters, root / "fused", method="linear", weights=[0.7, 0.3], base=base, fuse=True)
    return {"base": base, "adapters": adapters, "adapter": root / "adapter", "fused": root / "fused"}


def python_blocks(card: str, folder) -> list:
    return [block.replace("path/to/this/folder", str(folder)) for block in re.findall(r"```python\n(.*?)```", card, re.S)]


@pytest.mark.parametrize("kind, library", [("adapter", "peft"), ("fused", "transformers")])
def test_card_metadata_loads_with_huggingface_hub(made, kind, library):
    card = ModelCard.load(made[kind] / "README.md")
    assert card.data.base_model == str(made["base"])
    assert card.data.library_name == library and card.data.base_model_relation == "merge"
    assert {"seedlora", "merge", "lora", "linear"} <= set(card.data.tags)
    saved = (made[kind] / "seedlora_config.yaml").read_text()
    assert saved.rstrip() in card.text  # the config that redoes the merge
    for input_record in json.loads((made[kind] / "seedlora_provenance.json").read_text())["inputs"]:
        for digest in input_record["sha256"].values():
            assert digest in card.text
    assert "vllm serve" in card.text and "0.7" in card.text


def test_card_snippets_load_the_merged_adapter(made):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    card = (made["adapter"] / "README.md").read_text()
    blocks = python_blocks(card, made["adapter"])
    assert len(blocks) == 2 and "PeftModel.from_pretrained" in blocks[0] and "AutoModelForCausalLM" in blocks[1]
    expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(made["base"]), made["adapter"]).eval()
    with torch.no_grad():
        reference = expected(IDS).logits
        for block in blocks:
            scope = {}
            exec(block, scope)
            assert torch.allclose(scope["model"].eval()(IDS).logits, reference, atol=1e-5)
    assert not torch.allclose(AutoModelForCausalLM.from_pretrained(made["base"])(IDS).logits, reference, atol=1e-3)


def test_card_snippet_loads_the_fused_model_like_the_adapter(made):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    block = python_blocks((made["fused"] / "README.md").read_text(), made["fused"])[0]
    scope = {}
    exec(block, scope)
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(made["base"]), made["adapter"]).eval()
    with torch.no_grad():
        assert torch.allclose(scope["model"].eval()(IDS).logits, adapter(IDS).logits, atol=1e-4)


def test_card_is_byte_identical_for_the_same_merge(made, tmp_path):
    merge_adapters(made["adapters"], tmp_path / "again", method="linear", weights=[0.7, 0.3])
    assert (tmp_path / "again" / "README.md").read_bytes() == (made["adapter"] / "README.md").read_bytes()
    front = yaml.safe_load((tmp_path / "again" / "README.md").read_text().split("---")[1])
    assert front["library_name"] == "peft"
