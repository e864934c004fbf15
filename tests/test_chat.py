"""Chat data end to end: the token ids training feeds the model are the ids the evaluator feeds it."""

import json

from transformers import TrainerCallback

from _tiny import make_tiny_llama
from eval.evaluate import evaluate_models, load_eval_examples, load_model, score_examples
from seedlora.train import DataFormat, load_tokenizer, train_adapters

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def chat_rows(n):
    return [{"messages": [{"role": "user", "content": f"Tweet {i}: {'good' if i % 2 else 'bad'} day. Sentiment?"},
                          {"role": "assistant", "content": "positive" if i % 2 else "negative"}]} for i in range(n)]


class InputRecorder(TrainerCallback):
    """Records the input ids every training forward pass receives (hook on the embedding layer)."""

    def __init__(self):
        self.seen = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model.get_input_embeddings().register_forward_pre_hook(lambda module, inputs: self.seen.append(inputs[0].tolist()))


def test_trainer_and_evaluator_feed_the_same_chat_token_ids(tmp_path):
    base = make_tiny_llama(tmp_path / "base")
    tokenizer = load_tokenizer(base)
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(base)
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in chat_rows(4)))

    recorder = InputRecorder()
    train_adapters(base, data, tmp_path / "runs", [0], batch_size=1, epochs=1, lr=1e-2, progress=False, callbacks=[recorder])
    trained = {tuple(ids[0]) for ids in recorder.seen}
    assert len(trained) == 4

    examples = load_eval_examples(data, load_tokenizer(base), DataFormat())
    model = load_model(base, tmp_path / "runs" / "seed-0")
    fed = []
    model.get_input_embeddings().register_forward_pre_hook(lambda module, inputs: fed.append(inputs[0].tolist()))
    score_examples(model, examples, tokenizer.pad_token_id, None, batch_size=1)
    assert {tuple(ids[0]) for ids in fed} == trained
    text = tokenizer.decode(examples[1].input_ids)
    assert text == "<|im_start|>user\nTweet 1: good day. Sentiment?<|im_end|>\n<|im_start|>assistant\npositive<|im_end|>\n"
    assert tokenizer.decode(examples[1].input_ids[: examples[1].answer_start]).endswith("<|im_start|>assistant\n")

    result = evaluate_models(base, {"seed-0": tmp_path / "runs" / "seed-0"}, data, "classification", progress=False)
    assert result["labels"] == ["negative", "positive"] and result["examples"] == 4
    assert result["data_format"]["chat_template"] == "auto"
