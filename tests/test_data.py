"""Data loading: file formats, label masks, truncation, eval split, batch plans, per-sample loss."""

import json

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from _tiny import make_tiny_llama, make_tiny_tokenizer
from seedlora.data import (
    IGNORE, Fields, collate, load_examples, per_sample_losses, plan_epoch, split_examples,
)
from seedlora.errors import SeedLoraError

ROWS = [{"prompt": f"Tweet {i}: nice day. Sentiment:", "completion": " positive"} for i in range(10)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def test_completion_mode_masks_prompt_and_appends_eos(tmp_path, tokenizer):
    examples = load_examples(write_jsonl(tmp_path / "d.jsonl", ROWS), tokenizer)
    prompt = tokenizer(ROWS[3]["prompt"])["input_ids"]
    completion = tokenizer(" positive", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ex = examples[3]
    assert ex.index == 3
    assert list(ex.input_ids) == prompt + completion
    assert list(ex.labels) == [IGNORE] * len(prompt) + completion


def test_text_mode_scores_every_token(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "t.jsonl", [{"body": "hello there"}])
    (ex,) = load_examples(path, tokenizer, Fields(text="body"))
    assert ex.labels == ex.input_ids and ex.input_ids[-1] == tokenizer.eos_token_id


def test_a_text_column_alone_is_used_without_flags(tmp_path, tokenizer):
    (ex,) = load_examples(write_jsonl(tmp_path / "t.jsonl", [{"text": "abc"}]), tokenizer)
    assert IGNORE not in ex.labels


def test_truncation_cuts_prompt_from_the_left_and_keeps_the_completion(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "x" * 50 + "END", "completion": " yes"}])
    (ex,) = load_examples(path, tokenizer, max_length=12)
    assert len(ex.input_ids) == 12
    assert tokenizer.decode(ex.input_ids).endswith("END yes</s>")
    assert sum(label != IGNORE for label in ex.labels) == len(" yes") + 1


def test_csv_and_parquet_read_like_jsonl(tmp_path, tokenizer):
    pd.DataFrame(ROWS).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(ROWS).to_parquet(tmp_path / "d.parquet")
    reference = load_examples(write_jsonl(tmp_path / "d.jsonl", ROWS), tokenizer)
    assert load_examples(tmp_path / "d.csv", tokenizer) == reference
    assert load_examples(tmp_path / "d.parquet", tokenizer) == reference


def test_custom_field_names(tmp_path, tokenizer):
    rows = [{"q": r["prompt"], "a": r["completion"]} for r in ROWS]
    examples = load_examples(write_jsonl(tmp_path / "d.jsonl", rows), tokenizer, Fields(prompt="q", completion="a"))
    assert examples == load_examples(write_jsonl(tmp_path / "r.jsonl", ROWS), tokenizer)


def test_missing_column_names_file_column_and_flag(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "answer": "b"}])
    with pytest.raises(SeedLoraError, match=r"d\.jsonl has no column 'completion'; pass --completion-field"):
        load_examples(path, tokenizer)
    with pytest.raises(SeedLoraError, match="no column 'body'; pass --text-field"):
        load_examples(path, tokenizer, Fields(text="body"))


def test_missing_file_and_unknown_extension(tmp_path, tokenizer):
    with pytest.raises(SeedLoraError, match="does not exist"):
        load_examples(tmp_path / "nope.jsonl", tokenizer)
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(SeedLoraError, match="unknown extension"):
        load_examples(tmp_path / "d.txt", tokenizer)


def test_eval_split_is_seeded_disjoint_and_complete(tmp_path, tokenizer):
    examples = load_examples(write_jsonl(tmp_path / "d.jsonl", ROWS), tokenizer)
    train, held = split_examples(examples, 0.3, seed=0)
    assert len(held) == 3 and len(train) == 7
    assert sorted(e.index for e in train + held) == list(range(10))
    assert split_examples(examples, 0.3, seed=0) == (train, held)
    with pytest.raises(SeedLoraError, match="--eval-split"):
        split_examples(examples, 1.5)


def test_collate_pads_right_with_ignored_labels(tmp_path, tokenizer):
    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "longer prompt", "completion": "c"}]
    short, long = load_examples(write_jsonl(tmp_path / "d.jsonl", rows), tokenizer)
    batch = collate([short, long], pad_id=tokenizer.pad_token_id)
    n = len(short.input_ids)
    assert batch["input_ids"].shape == (2, len(long.input_ids))
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (len(long.input_ids) - n)
    assert (batch["labels"][0, n:] == IGNORE).all()
    assert (batch["input_ids"][0, n:] == tokenizer.pad_token_id).all()


def test_plan_epoch_shuffle_is_a_seeded_permutation():
    batches = plan_epoch(10, 3, epoch=0, order_seed=1)
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert sorted(sum(batches, [])) == list(range(10))
    assert plan_epoch(10, 3, 0, 1) == batches
    assert plan_epoch(10, 3, 0, 2) != batches
    assert plan_epoch(10, 3, 1, 1) != batches  # each epoch reshuffles


def test_plan_epoch_fixed_batches_only_reorders_batches():
    a = plan_epoch(12, 3, epoch=0, order_seed=1, compose_seed=0)
    b = plan_epoch(12, 3, epoch=0, order_seed=2, compose_seed=0)
    assert sorted(map(sorted, a)) == sorted(map(sorted, b))
    assert a != b


def test_per_sample_losses_equal_transformers_loss(tmp_path, tokenizer):
    base = make_tiny_llama(tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(base)
    rows = [{"prompt": "p" * (i + 1), "completion": " q" * (i + 1)} for i in range(3)]
    examples = load_examples(write_jsonl(tmp_path / "d.jsonl", rows), tokenizer)
    losses = per_sample_losses(model, examples, tokenizer.pad_token_id, batch_size=3)
    for ex, loss in zip(examples, losses):
        ids, labels = torch.tensor([ex.input_ids]), torch.tensor([ex.labels])
        expected = model(input_ids=ids, labels=labels).loss.item()
        assert loss == pytest.approx(expected, rel=1e-5)
