"""merge_adapters end to end: what PEFT loads from the output equals the method's formula."""

import json

import pytest
import torch
from peft import PeftModel
from peft.utils import merge_utils

from _adapters import make_adapter, make_adapters, peft_deltas, tiny_llama
from seedlora import merge_adapters
from seedlora.lowrank import LowRank

PROBE = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Three seed adapters of different ranks (2, 4, 8) on the same tiny Llama."""
    return make_adapters(tmp_path_factory.mktemp("inputs"), ranks=(2, 4, 8))


@pytest.fixture(scope="module")
def input_deltas(adapters):
    return [peft_deltas(a) for a in adapters]


def logits(model):
    with torch.no_grad():
        return model(PROBE).logits


def test_linear_gives_the_logits_of_peft_exact_cat(adapters, tmp_path):
    merge_adapters(adapters, tmp_path / "out", method="linear")
    ours = logits(PeftModel.from_pretrained(tiny_llama(), str(tmp_path / "out")))

    model = PeftModel.from_pretrained(tiny_llama(), str(adapters[0]), adapter_name="a0")
    for i, folder in enumerate(adapters[1:], 1):
        model.load_adapter(str(folder), adapter_name=f"a{i}")
    model.add_weighted_adapter(["a0", "a1", "a2"], [1 / 3] * 3, "cat", combination_type="cat")
    model.set_adapter("cat")
    torch.testing.assert_close(ours, logits(model), rtol=1e-5, atol=1e-5)


def seedlora_reference(deltas):
    """SeedLoRA eq. 4-5 written out on dense float64 matrices."""
    d = [x.double() for x in deltas]
    avg = sum(d) / len(d)
    mu_hat = sum(x.mean() for x in d) / len(d)
    sigma_hat = sum(x.std(unbiased=False) for x in d) / len(d)
    return (sigma_hat * (avg - avg.mean()) / avg.std(unbiased=False) + mu_hat).float()


def dense_reference(method, deltas):
    ones = torch.ones(len(deltas))
    return {
        "linear": lambda: sum(deltas) / len(deltas),
        "seedlora": lambda: seedlora_reference(deltas),
        "ties": lambda: merge_utils.ties(deltas, ones, density=0.5),
        "magnitude_prune": lambda: merge_utils.magnitude_prune(deltas, ones / len(deltas), density=0.5),
        "dare_linear": lambda: merge_utils.dare_linear(deltas, ones / len(deltas), density=1.0),
        "dare_ties": lambda: merge_utils.dare_ties(deltas, ones, density=1.0),
    }[method]()


PARAMS = {"ties": {"density": 0.5}, "magnitude_prune": {"density": 0.5}, "dare_linear": {"density": 1.0}, "dare_ties": {"density": 1.0}}


@pytest.mark.filterwarnings("ignore:The density")
@pytest.mark.parametrize("method", ["linear", "seedlora", "ties", "magnitude_prune", "dare_linear", "dare_ties"])
def test_every_method_output_equals_its_dense_reference(adapters, input_deltas, tmp_path, method):
    # rank 32 >= min(out, in) of every module: dense results are written without loss
    report = merge_adapters(adapters, tmp_path / "out", method=method, params=PARAMS.get(method), rank=32)
    assert report.lossless
    written = peft_deltas(tmp_path / "out")
    for name, update in written.items():
        expected = dense_reference(method, [d[name] for d in input_deltas])
        torch.testing.assert_close(update, expected, rtol=1e-4, atol=1e-5)


def test_selection_takes_every_entry_from_one_input(adapters, input_deltas, tmp_path):
    merge_adapters(adapters, tmp_path / "out", method="selection", params={"resample": 0}, rank=32, seed=3)
    for name, update in peft_deltas(tmp_path / "out").items():
        stacked = torch.stack([d[name] for d in input_deltas])
        distance = (stacked - update).abs().min(dim=0).values
        assert distance.max() < 1e-4
        sources = (stacked - update).abs().argmin(dim=0)
        assert len(sources.unique()) == 3  # every input contributes


def test_seedlora_is_exact_rank_sum_plus_one_without_dense_matrices(adapters, input_deltas, tmp_path, monkeypatch):
    import seedlora.pipeline.rank as rank

    monkeypatch.setattr(LowRank, "dense", lambda self: pytest.fail("formed an out x in matrix"))
    monkeypatch.setattr(rank, "factorize", lambda *a, **k: pytest.fail("took the dense SVD path"))
    report = merge_adapters(adapters, tmp_path / "out", method="seedlora")
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert report.rank == config["r"] == config["lora_alpha"] == 2 + 4 + 8 + 1
    assert config["rank_pattern"] == {} and not config["use_rslora"]
    monkeypatch.undo()
    for name, update in peft_deltas(tmp_path / "out").items():
        torch.testing.assert_close(update, seedlora_reference([d[name] for d in input_deltas]), rtol=1e-4, atol=1e-5)


def test_compression_reports_the_energy_the_svd_keeps(adapters, input_deltas, tmp_path):
    report = merge_adapters(adapters, tmp_path / "out", method="linear", rank=4)
    for module in report.modules:
        singular = torch.linalg.svdvals(sum(d[module.name] for d in input_deltas).double() / 3)
        expected = float((singular[:4] ** 2).sum() / (singular**2).sum())
        assert module.energy_kept == pytest.approx(expected, rel=1e-5)
        assert module.relative_error == pytest.approx((1 - expected) ** 0.5, rel=1e-4)
    saved = json.loads((tmp_path / "out" / "merge_report.json").read_text())
    assert saved["energy_kept"] == pytest.approx(report.energy_kept) and 0 < report.energy_kept < 1


@pytest.mark.parametrize("rank", [14, 20])
def test_compressing_to_at_least_the_exact_rank_is_lossless(adapters, input_deltas, tmp_path, rank):
    report = merge_adapters(adapters, tmp_path / "out", method="linear", rank=rank)
    assert report.lossless and report.energy_kept == 1.0 and report.rank == 14
    for name, update in peft_deltas(tmp_path / "out").items():
        torch.testing.assert_close(update, sum(d[name] for d in input_deltas) / 3, rtol=1e-4, atol=1e-6)


def test_mixed_module_ranks_are_zero_padded_to_one_uniform_rank(tmp_path):
    patterned = make_adapter(tmp_path / "p", r=4, alpha=4, rank_pattern={"v_proj": 2}, alpha_pattern={"v_proj": 6})
    plain = make_adapter(tmp_path / "q", seed=5, r=4, alpha=8, use_rslora=True)
    merge_adapters([patterned, plain], tmp_path / "out", method="linear", weights=[0.7, 0.3])
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["rank_pattern"] == {} and config["alpha_pattern"] == {}
    expected_p, expected_q = peft_deltas(patterned), peft_deltas(plain)
    for name, update in peft_deltas(tmp_path / "out").items():
        torch.testing.assert_close(update, 0.7 * expected_p[name] + 0.3 * expected_q[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["dare_ties", "selection", "seedlora"])
def test_same_seed_gives_byte_identical_files(adapters, tmp_path, method):
    for name in ("one", "two"):
        merge_adapters(adapters, tmp_path / name, method=method, seed=7)
    merge_adapters(adapters, tmp_path / "other", method=method, seed=8)
    for file in sorted(p.name for p in (tmp_path / "one").iterdir()):
        assert (tmp_path / "one" / file).read_bytes() == (tmp_path / "two" / file).read_bytes(), file
    differs = (tmp_path / "one" / "adapter_model.safetensors").read_bytes() != (tmp_path / "other" / "adapter_model.safetensors").read_bytes()
    assert differs == (method != "seedlora")


def test_provenance_names_inputs_by_content_hash(adapters, tmp_path):
    merge_adapters(adapters, tmp_path / "out", method="ties", seed=1)
    record = json.loads((tmp_path / "out" / "seedlora_provenance.json").read_text())
    assert record["method"] == "ties" and record["seed"] == 1 and record["params"]["density"] == 0.2
    assert [len(i["sha256"]["adapter_model.safetensors"]) for i in record["inputs"]] == [64, 64, 64]
    assert "ties" in (tmp_path / "out" / "README.md").read_text()


def test_vllm_option_pads_to_a_served_rank(adapters, input_deltas, tmp_path):
    report = merge_adapters(adapters, tmp_path / "out", method="seedlora", vllm=True)
    assert report.rank == 16 and report.lossless  # exact rank 15 padded with zeros
    for name, update in peft_deltas(tmp_path / "out").items():
        torch.testing.assert_close(update, seedlora_reference([d[name] for d in input_deltas]), rtol=1e-4, atol=1e-5)
