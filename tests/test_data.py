"""Data loading: file formats, label masks, truncation, eval split, batch plans, per-sample loss."""

import json

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from _tiny import make_tiny_llama, make_tiny_tokenizer
from seedlora.train.batches import collate, per_sample_losses, plan_epoch
from seedlora.train.data import IGNORE, DataFormat, load_examples, split_examples
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
    (ex,) = load_examples(path, tokenizer, DataFormat(text="body"))
    assert ex.labels == ex.input_ids and ex.input_ids[-1] == tokenizer.eos_token_id


def test_a_text_column_alone_is_used_without_flags(tmp_path, tokenizer):
    (ex,) = load_examples(write_jsonl(tmp_path / "t.jsonl", [{"text": "abc"}]), tokenizer)
    assert IGNORE not in ex.labels


def test_truncation_cuts_prompt_from_the_left_and_keeps_the_completion(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "x" * 50 + "END", "completion": " yes"}])
    (ex,) = load_examples(path, tokenizer, DataFormat(max_length=12))
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
    examples = load_examples(write_jsonl(tmp_path / "d.jsonl", rows), tokenizer, DataFormat(prompt="q", completion="a"))
    assert examples == load_examples(write_jsonl(tmp_path / "r.jsonl", ROWS), tokenizer)


def test_missing_column_names_file_column_and_flag(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "answer": "b"}])
    with pytest.raises(SeedLoraError, match=r"d\.jsonl has no column 'completion'; pass --completion-field"):
        load_examples(path, tokenizer)
    with pytest.raises(SeedLoraError, match="no column 'body'; pass --text-field"):
        load_examples(path, tokenizer, DataFormat(text="body"))


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
    c = plan_epoch(10, 3, epoch=0, order_seed=1, compose_seed=0)  # a partial batch stays last
    assert [len(batch) for batch in c] == [3, 3, 3, 1]


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


CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
CHAT = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Tweet {i}: nice."},
                      {"role": "assistant", "content": "positive"}]} for i in range(3)]


@pytest.fixture
def chat_tokenizer(tmp_path):
    tokenizer = make_tiny_tokenizer(tmp_path / "chat-tok")
    tokenizer.chat_template = CHATML
    return tokenizer


def test_messages_get_the_chat_template_and_loss_on_the_assistant_turn_only(tmp_path, chat_tokenizer):
    ex = load_examples(write_jsonl(tmp_path / "c.jsonl", CHAT), chat_tokenizer)[1]
    prompt = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nTweet 1: nice.<|im_end|>\n<|im_start|>assistant\n"
    answer = "positive<|im_end|>\n"
    assert chat_tokenizer.decode(ex.input_ids) == prompt + answer
    assert chat_tokenizer.decode([t for t in ex.labels if t != IGNORE]) == answer
    assert list(ex.labels[: ex.answer_start]) == [IGNORE] * ex.answer_start
    assert chat_tokenizer.decode(ex.input_ids[: ex.answer_start]) == prompt and ex.answer == "positive"


def test_multi_turn_scores_every_assistant_turn_and_the_last_is_the_answer(tmp_path, chat_tokenizer):
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
             {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    (ex,) = load_examples(write_jsonl(tmp_path / "m.jsonl", [{"messages": turns}]), chat_tokenizer)
    scored = chat_tokenizer.decode([t for t in ex.labels if t != IGNORE])
    assert scored == "b<|im_end|>\nd<|im_end|>\n" and ex.answer == "d"
    assert chat_tokenizer.decode(ex.input_ids[ex.answer_start:]) == "d<|im_end|>\n"


def test_chat_template_none_refuses_messages_and_a_file_wraps_prompt_completion(tmp_path, chat_tokenizer):
    with pytest.raises(SeedLoraError, match="--chat-template none"):
        load_examples(write_jsonl(tmp_path / "c.jsonl", CHAT), chat_tokenizer, DataFormat(chat_template="none"))
    plain = make_tiny_tokenizer(tmp_path / "plain")
    with pytest.raises(SeedLoraError, match="tokenizer has no chat template to apply to .*; pass --chat-template PATH"):
        load_examples(tmp_path / "c.jsonl", plain)
    template = tmp_path / "chatml.jinja"
    template.write_text(CHATML)
    rows = [{"prompt": "Tweet 1: nice.", "completion": "positive"}]
    (ex,) = load_examples(write_jsonl(tmp_path / "pc.jsonl", rows), plain, DataFormat(chat_template=str(template)))
    assert plain.decode(ex.input_ids) == "<|im_start|>user\nTweet 1: nice.<|im_end|>\n<|im_start|>assistant\npositive<|im_end|>\n"
    (auto,) = load_examples(tmp_path / "pc.jsonl", chat_tokenizer)  # auto: no template for prompt/completion rows
    assert chat_tokenizer.decode(auto.input_ids) == "<s>Tweet 1: nice.positive</s>"
    (own,) = load_examples(tmp_path / "pc.jsonl", chat_tokenizer, DataFormat(chat_template="tokenizer"))
    assert own == ex and own.answer == "positive"


def test_bad_messages_are_refused_with_the_row(tmp_path, chat_tokenizer):
    rows = [{"messages": [{"role": "user", "content": "only a question"}]}]
    with pytest.raises(SeedLoraError, match="row 0: no assistant message"):
        load_examples(write_jsonl(tmp_path / "b.jsonl", rows), chat_tokenizer)


def test_dataset_folders_and_cached_dataset_names(tmp_path, tokenizer):
    from datasets import Dataset, DatasetDict, load_dataset

    from seedlora.train.sources import read_rows

    train, test = ROWS[:6], ROWS[6:]
    DatasetDict({"train": Dataset.from_list(train), "test": Dataset.from_list(test)}).save_to_disk(tmp_path / "saved")
    assert read_rows(tmp_path / "saved") == train and read_rows(tmp_path / "saved", "test") == test
    files = tmp_path / "files"
    files.mkdir()
    write_jsonl(files / "train.jsonl", train), write_jsonl(files / "test.jsonl", test)
    assert read_rows(files, "test") == test
    with pytest.raises(SeedLoraError, match="no split 'validation'"):
        read_rows(files, "validation")
    # a dataset name as the datasets cache holds it after a download (here written from local files)
    cache = tmp_path / "hf-cache"
    load_dataset(str(files), cache_dir=str(cache))
    (cache / "files").rename(cache / "myorg___tweets")
    for arrow in cache.rglob("files-*.arrow"):
        arrow.rename(arrow.with_name(arrow.name.replace("files-", "tweets-")))
    assert read_rows("myorg/tweets", "test", cache_dir=cache) == test
    with pytest.raises(SeedLoraError, match="dataset myorg/missing could not be loaded"):
        read_rows("myorg/missing", cache_dir=cache)
