"""Where rows come from: a local file, a local dataset folder, or a `datasets` name in the cache.

- a file: .jsonl / .json / .csv / .parquet, read by `datasets` into a private temporary
  cache (nothing is left in ~/.cache);
- a folder: written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`, or holding data
  files (`train.jsonl`, `test.csv`, ... as `datasets` names splits by file name);
- a name (`org/dataset`): `datasets.load_dataset(name)`, which reads the local cache and, on a
  machine that may download, the Hub; with HF_HUB_OFFLINE=1 only the cache.

A folder or name holding several splits needs `split` (default `train`). Rows are returned as
plain dicts in their stored order, so a row's position is its stable `index`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..errors import SeedLoraError

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def read_rows(source: str | Path, split: str | None = None, cache_dir: str | Path | None = None) -> list[dict]:
    """All rows of `source` (file, folder or dataset name) as dicts, in stored order."""
    text = str(source)
    path = Path(text).expanduser()
    if path.is_file():
        return _file_rows(path)
    if path.is_dir():
        return _folder_rows(path, split)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")) and Path(text).suffix == "":
        return _named_rows(text, split, cache_dir)
    raise SeedLoraError(
        f"data {text} does not exist; pass a JSONL/CSV/Parquet file, a dataset folder, or a datasets name (org/name)"
    )


def _file_rows(path: Path) -> list[dict]:
    builder = FORMATS.get(path.suffix.lower())
    if builder is None:
        raise SeedLoraError(f"data file {path} has unknown extension {path.suffix!r}; use .jsonl, .csv or .parquet")
    from datasets import load_dataset  # heavy import, only when data is read

    with tempfile.TemporaryDirectory() as cache:  # private Arrow cache: nothing left in ~/.cache
        try:
            dataset = load_dataset(builder, data_files=str(path), split="train", cache_dir=cache)
        except Exception as error:  # datasets raises many types for unreadable files
            raise SeedLoraError(f"data file {path} could not be read as {builder} ({error}); fix the file") from None
        return [dict(row) for row in dataset]


def _pick(dataset, split: str | None, where: str):
    """One split of a DatasetDict (default train), or the Dataset itself."""
    if not hasattr(dataset, "keys"):
        return dataset
    splits = sorted(dataset.keys())
    wanted = split or "train"
    if wanted not in dataset:
        raise SeedLoraError(f"{where} has no split {wanted!r} (splits: {splits}); pass --split")
    return dataset[wanted]


def _folder_rows(path: Path, split: str | None) -> list[dict]:
    from datasets import load_dataset, load_from_disk

    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return [dict(row) for row in _pick(load_from_disk(str(path)), split, str(path))]
    with tempfile.TemporaryDirectory() as cache:
        try:
            dataset = load_dataset(str(path), cache_dir=cache)
        except Exception as error:
            raise SeedLoraError(f"folder {path} holds no readable data files ({error}); pass a file or dataset folder") from None
        return [dict(row) for row in _pick(dataset, split, str(path))]


def _named_rows(name: str, split: str | None, cache_dir: str | Path | None) -> list[dict]:
    from datasets import load_dataset

    try:
        dataset = load_dataset(name, cache_dir=str(cache_dir) if cache_dir else None)
    except Exception as error:
        raise SeedLoraError(
            f"dataset {name} could not be loaded ({type(error).__name__}: {error}); offline it must be in the "
            "datasets cache (load it once online), or pass a local file"
        ) from None
    return [dict(row) for row in _pick(dataset, split, f"dataset {name}")]
