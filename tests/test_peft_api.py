"""merge_peft_adapters: the correct add_weighted_adapter, inside a PeftModel workflow."""

import pytest
import torch
from peft import PeftModel

from _adapters import make_adapters, peft_deltas, tiny_llama
from seedlora import merge_adapters, merge_peft_adapters
from seedlora.errors import IncompatibleInputsError

PROBE = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return make_adapters(tmp_path_factory.mktemp("inputs"), ranks=(2, 4, 8))


def loaded(folders):
    model = PeftModel.from_pretrained(tiny_llama(), str(folders[0]), adapter_name="a0")
    for i, folder in enumerate(folders[1:], 1):
        model.load_adapter(str(folder), adapter_name=f"a{i}")
    return model


def logits(model):
    with torch.no_grad():
        return model(PROBE).logits


def test_linear_in_model_equals_peft_cat_logits(folders):
    model = loaded(folders)
    merge_peft_adapters(model, ["a0", "a1", "a2"], "ours", method="linear")
    model.add_weighted_adapter(["a0", "a1", "a2"], [1 / 3] * 3, "cat", combination_type="cat")
    model.set_adapter("ours")
    ours = logits(model)
    model.set_adapter("cat")
    torch.testing.assert_close(ours, logits(model), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["seedlora", "ties"])
def test_in_model_merge_equals_the_folder_merge(folders, tmp_path, method):
    model = loaded(folders)
    report = merge_peft_adapters(model, ["a0", "a1", "a2"], "merged", method=method, seed=4)
    merge_adapters(folders, tmp_path / "out", method=method, seed=4)
    from_folder = peft_deltas(tmp_path / "out")
    for name, expected in from_folder.items():
        layer = model.base_model.model.get_submodule(name)
        torch.testing.assert_close(layer.get_delta_weight("merged"), expected, rtol=1e-5, atol=1e-6)
    assert report.rank == (15 if method == "seedlora" else 14)


def test_unknown_or_existing_adapter_names_are_refused(folders):
    model = loaded(folders)
    with pytest.raises(IncompatibleInputsError, match="adapter 'zz' is not loaded"):
        merge_peft_adapters(model, ["a0", "zz"], "new")
    with pytest.raises(IncompatibleInputsError, match="already exists"):
        merge_peft_adapters(model, ["a0", "a1"], "a2")
