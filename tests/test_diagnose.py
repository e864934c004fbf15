"""`seedlora diagnose`: correlations, the PNG, and merged-model scoring on tiny trained runs."""

import json
import math

import pytest

from _tiny import make_tiny_llama
from seedlora.cli import main
from seedlora.analysis.diagnose import binned_means, diagnose, merged_losses, pearson, ranks, spearman
from seedlora.errors import SeedLoraError
from seedlora.train import train_adapters

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("diag")
    base = make_tiny_llama(root / "base")
    rows = [{"prompt": f"Item {i} is", "completion": " ok" if i % 3 else " bad"} for i in range(12)]
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return train_adapters(base, data, root / "runs", [0, 1], epochs=2, batch_size=4, lr=1e-2,
                          eval_split=0.25, progress=False)


def test_correlations_on_known_series():
    x = [0, 1, 2, 3, 4]
    assert pearson(x, [2 * v + 1 for v in x]) == pytest.approx(1.0)
    assert pearson(x, [-v for v in x]) == pytest.approx(-1.0)
    cubic = [v**3 for v in x]
    assert spearman(x, cubic) == pytest.approx(1.0) and pearson(x, cubic) < 1.0
    assert ranks([3.0, 1.0, 3.0, 2.0]) == [2.5, 0.0, 2.5, 1.0]
    assert math.isnan(pearson(x, [1.0] * 5))


def test_correlations_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    x = [0, 1, 2, 3, 4, 5, 6, 7]
    y = [2.0, 1.5, 1.5, 0.3, 0.9, 0.2, 0.2, 0.1]
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y).statistic)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)


def test_binned_means_average_each_bin():
    centers, means = binned_means([0, 1, 2, 3], [1.0, 3.0, 5.0, 7.0], bins=2, span=4)
    assert centers == [1.0, 3.0] and means == [2.0, 6.0]


def test_diagnose_writes_png_and_returns_correlations(runs, tmp_path):
    result = diagnose(runs, tmp_path / "plots" / "imbalance.png")
    assert (tmp_path / "plots" / "imbalance.png").read_bytes()[:8] == PNG_MAGIC
    assert set(result["runs"]) == {"seed-0", "seed-1"}
    for stats in result["runs"].values():
        assert stats["n"] == 9
        assert -1.0 <= stats["pearson"] <= 1.0 and -1.0 <= stats["spearman"] <= 1.0


def test_merged_scoring_equals_peft_per_row_loss(runs, tmp_path):
    """A merged adapter is scored on the anchor's training rows exactly as transformers + PEFT compute each row's loss."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = diagnose(runs, tmp_path / "m.png", merged=runs[1])
    assert result["merged"]["anchor"] == "seed-0" and result["merged"]["n"] == 9
    scored = merged_losses(runs[0], runs[1])
    log = json.loads((runs[0] / "train_log.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(log["base_model"])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(log["base_model"]), runs[1]).eval()
    rows = [json.loads(line) for line in open(log["data"])]
    for index, loss in scored.items():
        prompt = tokenizer(rows[index]["prompt"])["input_ids"]
        answer = tokenizer(rows[index]["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([prompt + answer])
        labels = torch.tensor([[-100] * len(prompt) + answer])
        with torch.no_grad():
            assert loss == pytest.approx(model(input_ids=ids, labels=labels).loss.item(), rel=1e-5)


def test_missing_samples_file_is_an_actionable_error(tmp_path):
    with pytest.raises(SeedLoraError, match="samples.jsonl does not exist"):
        diagnose([tmp_path], tmp_path / "x.png")


def test_cli_prints_correlations_and_writes_json(runs, tmp_path, capsys):
    code = main(["diagnose", *map(str, runs), "-o", str(tmp_path / "p.png"), "--json", str(tmp_path / "r.json")])
    assert code == 0
    out = capsys.readouterr().out
    assert "seed-0: n=9 pearson=" in out and "spearman=" in out
    assert json.loads((tmp_path / "r.json").read_text())["runs"]["seed-1"]["n"] == 9
