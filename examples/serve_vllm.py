"""Serve a seedlora merge with vLLM: a merged adapter through LoRARequest, and a fused model.

    # your own merge (made with `seedlora merge ... -o MERGED` and `... --base BASE --fuse -o FUSED`)
    python examples/serve_vllm.py --base BASE --adapter MERGED [--fused FUSED] [--prompt TEXT]
    # self-contained: builds a tiny Llama and 3 PEFT adapters offline, merges, fuses, serves (CPU ok)
    python examples/serve_vllm.py --demo

The merged adapter is served on the base model with `enable_lora=True` and a `--max-lora-rank`
that `seedlora check` computes (vLLM zero-pads smaller ranks exactly); the fused model is an
ordinary model folder. A model folder without tokenizer files is served from token ids
(`skip_tokenizer_init=True`). vLLM starts worker processes, hence the `__main__` guard.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

DEMO_PROMPT_IDS = [[1, 17, 42, 99, 3], [1, 200, 5]]  # token ids: the demo model has no tokenizer


def has_tokenizer(model_dir) -> bool:
    return any((Path(model_dir) / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"))


def max_lora_rank(adapter, base) -> int:
    """The --max-lora-rank to serve `adapter` with; stops on anything vLLM would refuse or mis-scale."""
    from seedlora.serving import check_adapter

    report = check_adapter(adapter, base=base)
    if report.problems:
        raise SystemExit("\n".join(map(str, report.problems)) + "\nre-merge with `seedlora merge ... --vllm`")
    return report.max_lora_rank


def prompts_for(model_dir, text: str) -> list:
    """Text prompts if the model has a tokenizer, else token-id prompts."""
    if has_tokenizer(model_dir):
        return [text]
    return [{"prompt_token_ids": ids} for ids in DEMO_PROMPT_IDS]


def show(label: str, outputs) -> None:
    for out in outputs:
        completion = out.outputs[0]  # no tokenizer: no text, show the token ids
        print(f"{label:>8}: {completion.text!r}" if completion.text else f"{label:>8}: {list(completion.token_ids)}")


def serve_adapter(base, adapter, prompt: str, dtype: str) -> None:
    """One engine on the base model; the same prompts without and with the merged adapter."""
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    rank = max_lora_rank(adapter, base)
    llm = LLM(
        model=str(base), dtype=dtype, enable_lora=True, max_lora_rank=rank, max_loras=1,
        skip_tokenizer_init=not has_tokenizer(base), max_model_len=128, enforce_eager=True,
    )
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    prompts = prompts_for(base, prompt)
    show("base", llm.generate(prompts, params, use_tqdm=False))
    merged = LoRARequest("merged", 1, str(adapter))  # name, unique positive id, adapter folder
    show("merged", llm.generate(prompts, params, lora_request=merged, use_tqdm=False))
    llm.llm_engine.engine_core.shutdown()  # free this engine before the next one starts


def serve_fused(fused, prompt: str, dtype: str) -> None:
    """A fused model is a plain model folder: no LoRA options at all."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(fused), dtype=dtype, skip_tokenizer_init=not has_tokenizer(fused), max_model_len=128, enforce_eager=True)
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    show("fused", llm.generate(prompts_for(fused, prompt), params, use_tqdm=False))
    llm.llm_engine.engine_core.shutdown()


def build_demo(work: Path) -> tuple:
    """Tiny Llama (head_dim 32, as vLLM's CPU attention needs) + 3 PEFT adapters → merged adapter, fused model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    import seedlora
    from seedlora import fuse_adapters

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, initializer_range=0.2, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(work / "base")
    adapters = []
    for i, rank in enumerate((3, 5, 8)):  # ranks differ; seedlora's exact merged rank is 3+5+8+1 = 17
        lora = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
                          init_lora_weights=False)  # random non-zero B: a stand-in for trained adapters
        get_peft_model(LlamaForCausalLM.from_pretrained(work / "base"), lora).save_pretrained(work / f"adapter{i}")
        adapters.append(work / f"adapter{i}")
    seedlora.merge_adapters(adapters, work / "merged", method="seedlora")
    fuse_adapters(adapters, work / "base", work / "fused", method="seedlora")
    return work / "base", work / "merged", work / "fused"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="base model folder the adapters were trained on")
    parser.add_argument("--adapter", help="merged adapter folder (seedlora merge ... -o)")
    parser.add_argument("--fused", help="fused model folder (seedlora merge ... --base BASE --fuse -o)")
    parser.add_argument("--prompt", default="The capital of France is", help="text prompt (models with a tokenizer)")
    parser.add_argument("--dtype", default="auto", help="vLLM dtype (default auto; the demo uses float32)")
    parser.add_argument("--demo", action="store_true", help="build a tiny model and adapters offline and serve them")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache when running on CPU (default 4)
    if args.demo:
        work = Path(tempfile.mkdtemp(prefix="seedlora_vllm_demo_"))
        args.base, args.adapter, args.fused = build_demo(work)
        args.dtype = "float32"
        print(f"demo folders in {work}")
    if args.adapter:
        if not args.base:
            parser.error("--adapter needs --base")
        serve_adapter(args.base, args.adapter, args.prompt, args.dtype)
    if args.fused:
        serve_fused(args.fused, args.prompt, args.dtype)
    if not (args.adapter or args.fused):
        parser.error("give --adapter (with --base), --fused, or --demo")


if __name__ == "__main__":
    main()
