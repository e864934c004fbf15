"""Tiny offline models and tokenizers for fast tests (no hub access).

`make_tiny_tokenizer` builds a byte-level tokenizer with no merges (one token per byte, so
any text encodes) and saves it with transformers' fast-tokenizer files; `make_tiny_llama`
saves a seeded 2-layer Llama next to it. Other test files import these plain functions.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0..3


def _byte_vocab() -> dict[str, int]:
    """Special tokens first, then the 256 byte-level characters."""
    vocab = {token: i for i, token in enumerate(SPECIALS)}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    return vocab


def make_tiny_tokenizer(directory: str | Path) -> PreTrainedTokenizerFast:
    """Save a byte-level tokenizer (BOS added, EOS/PAD set) to `directory` and return it."""
    tok = Tokenizer(models.BPE(vocab=_byte_vocab(), merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    Path(directory).mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(directory))
    return fast


def make_tiny_llama(
    directory: str | Path, hidden: int = 32, layers: int = 2, heads: int = 2, seed: int = 0
) -> Path:
    """Save a seeded tiny LlamaForCausalLM (config + safetensors) and its tokenizer; return the path."""
    directory = Path(directory)
    tokenizer = make_tiny_tokenizer(directory)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.save_pretrained(str(directory))
    return directory
