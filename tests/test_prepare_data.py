"""eval/prepare_data.py: tweet cleaning, balanced disjoint splits, and the committed files' shape."""

import json
from pathlib import Path

import pytest

from eval.prepare_data import DEFAULT_OUTPUT, PAPERS_SIZES, clean_tweet, split_balanced, split_gsm, split_sentiment

PACKAGES_NEEDED = "reasoning_gym"


def test_clean_tweet_unescapes_drops_urls_and_mojibake():
    assert clean_tweet("Great  flight &amp; crew http://t.co/abc123 !") == "Great flight & crew !"
    assert clean_tweet("I\x8a\x97Èm having trouble") is None  # garbled emoji bytes
    assert clean_tweet("thanks http://t.co/x") is None  # fewer than 3 words left


def test_sentiment_split_is_balanced_disjoint_and_seeded():
    by_label = {"positive": [f"good text {i}" for i in range(30)], "negative": [f"bad text {i}" for i in range(40)]}
    train, test = split_sentiment(by_label, 20, 10, seed=0)
    assert len(train) == 20 and len(test) == 10
    for rows in (train, test):
        completions = [r["completion"] for r in rows]
        assert completions.count(" positive") == completions.count(" negative")
        assert all(r["prompt"].startswith("Tweet: ") and r["prompt"].endswith("\nSentiment:") for r in rows)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert split_sentiment(by_label, 20, 10, seed=0) == (train, test)
    assert split_sentiment(by_label, 20, 10, seed=1) != (train, test)


def test_gsm_split_has_numeric_answers_and_no_shared_questions():
    pytest.importorskip(PACKAGES_NEEDED)
    train, test = split_gsm(12, 5, seed=0)
    assert len(train) == 12 and len(test) == 5
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    for row in train + test:
        assert row["prompt"].startswith("Question: ") and row["prompt"].endswith("\nAnswer:")
        assert "Give the result" not in row["prompt"]
        assert row["completion"].startswith(" ") and row["completion"].strip().lstrip("-").isdigit()


@pytest.mark.parametrize("task", ["sentiment", "gsm"])
def test_committed_datasets_have_prompt_and_completion(task):
    folder = Path(DEFAULT_OUTPUT) / task
    if not (folder / "train.jsonl").is_file():
        pytest.skip(f"{folder} not prepared (python -m eval.prepare_data)")
    info = json.loads((folder / "info.json").read_text())
    for split in ("train", "test"):
        rows = [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]
        assert len(rows) == info[split] and all(set(r) == {"prompt", "completion"} for r in rows)


def test_balanced_three_way_split_is_disjoint_and_seeded():
    by_label = {"positive": [f"good text {i}" for i in range(40)], "negative": [f"bad text {i}" for i in range(50)]}
    splits = split_balanced(by_label, {"train": 20, "validation": 8, "test": 12}, seed=5)
    assert {name: len(rows) for name, rows in splits.items()} == {"train": 20, "validation": 8, "test": 12}
    prompts = [{r["prompt"] for r in rows} for rows in splits.values()]
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    for rows in splits.values():
        completions = [r["completion"] for r in rows]
        assert completions.count(" positive") == completions.count(" negative")
    assert split_balanced(by_label, {"train": 20, "validation": 8, "test": 12}, seed=5) == splits


@pytest.mark.parametrize("task", ["sentiment", "gsm"])
def test_committed_papers_splits_are_disjoint_and_sized(task):
    folder = Path(DEFAULT_OUTPUT) / "papers" / task
    if not (folder / "train.jsonl").is_file():
        pytest.skip(f"{folder} not prepared (python -m eval.prepare_data --papers)")
    splits = {split: [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()] for split in PAPERS_SIZES[task]}
    assert {split: len(rows) for split, rows in splits.items()} == PAPERS_SIZES[task]
    prompts = {split: {r["prompt"] for r in rows} for split, rows in splits.items()}
    assert not prompts["train"] & prompts["test"] and not prompts["train"] & prompts["validation"]
    assert not prompts["validation"] & prompts["test"]
