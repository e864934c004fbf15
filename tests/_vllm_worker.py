"""Run greedy decoding with vLLM (CPU, fp32) for the serving test, in its own process.

vLLM spawns an engine process and configures logging and threads on import, so the pytest
process never imports it: tests/test_vllm_serving.py runs this file as a script with a job
file and reads back a results file (both JSON).

    python tests/_vllm_worker.py JOB.json RESULTS.json

JOB: {"prompts": [[token ids]...], "max_tokens": n, "logprobs": k,
      "engines": [{"model": dir, "max_lora_rank": r or null,
                   "runs": [{"name": str, "lora": adapter dir or null}, ...]}, ...]}
RESULTS: {"vllm": version, "startup_s": {model: s}, "runs": {name: [{"tokens": [...],
          "logprobs": [{token id: logprob}, ...]} per prompt]}}, or {"import_error": text}
(exit code 3) when vLLM cannot be imported. Engines run one after another, each shut down
before the next starts; every LoRA run of one engine reuses it via successive LoRARequests.
"""

from __future__ import annotations

import json
import os
import sys
import time

IMPORT_FAILED = 3
ENGINE_OPTIONS = dict(  # small and exact: fp32, eager, no tokenizer (token-id prompts)
    skip_tokenizer_init=True,
    dtype="float32",
    max_model_len=128,
    max_num_seqs=4,
    enforce_eager=True,
    seed=0,
    distributed_executor_backend="uni",
)


def configure_environment() -> None:
    """Offline, small KV cache, no CPU pinning (shared machine), one process; before importing vLLM."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's default is 4
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    # engine core and model runner in this process (with backend "uni" below): an engine starts
    # in ~5 s instead of ~25-60 s; the model, LoRA and sampling code is the same
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def decode(llm, prompts: list, max_tokens: int, k: int, lora_request=None) -> list:
    """Greedy tokens and each step's top-k logprobs, per token-id prompt."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=max_tokens, logprobs=k, ignore_eos=True)
    outputs = llm.generate(
        [{"prompt_token_ids": list(p)} for p in prompts], params, lora_request=lora_request, use_tqdm=False
    )
    results = []
    for out in outputs:
        completion = out.outputs[0]
        steps = [{str(tid): lp.logprob for tid, lp in step.items()} for step in completion.logprobs]
        results.append({"tokens": list(completion.token_ids), "logprobs": steps})
    return results


def run_engine(engine: dict, job: dict, lora_ids: list) -> tuple:
    """Start one engine, decode every run on it, shut it down; returns (startup s, {name: results})."""
    from vllm import LLM
    from vllm.lora.request import LoRARequest

    rank = engine.get("max_lora_rank")
    lora = dict(enable_lora=True, max_lora_rank=rank, max_loras=1) if rank else {}
    started = time.perf_counter()
    llm = LLM(model=engine["model"], **ENGINE_OPTIONS, **lora)
    startup = time.perf_counter() - started
    results = {}
    try:
        for run in engine["runs"]:
            request = None
            if run.get("lora"):
                lora_ids.append(run["name"])  # LoRA ids must be unique and > 0
                request = LoRARequest(run["name"], len(lora_ids), run["lora"])
            results[run["name"]] = decode(llm, job["prompts"], job["max_tokens"], job["logprobs"], request)
    finally:
        llm.llm_engine.engine_core.shutdown()
    return startup, results


def main(job_path: str, results_path: str) -> int:
    configure_environment()
    try:
        import vllm
    except Exception as exc:  # ImportError, or a broken install (e.g. a torchvision mismatch)
        with open(results_path, "w") as fh:
            json.dump({"import_error": f"{type(exc).__name__}: {exc}"}, fh)
        return IMPORT_FAILED
    with open(job_path) as fh:
        job = json.load(fh)
    report = {"vllm": vllm.__version__, "startup_s": {}, "runs": {}}
    lora_ids: list = []
    for engine in job["engines"]:
        startup, results = run_engine(engine, job, lora_ids)
        report["startup_s"][engine["model"]] = round(startup, 2)
        report["runs"].update(results)
    with open(results_path, "w") as fh:
        json.dump(report, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
