"""Will vLLM and transformers load this model folder (a fused merge, a full checkpoint)? (headers only)

`seedlora check` sends model folders here rather than to the adapter rules: a full model needs
no LoRA options, so nothing about ranks or --vllm applies. What vLLM 0.32 and transformers need
from a folder: config.json with `architectures` (vLLM picks the model class from it), safetensors
weights whose index and shards agree, and a tokenizer (else pass --tokenizer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import SeedLoraError
from .serving import ERROR, WARNING, Finding
from .sources.model_folder import ModelFolder

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model", "tokenizer_config.json")


@dataclass(frozen=True)
class ModelCheck:
    """All findings for one model folder."""

    path: Path
    findings: tuple

    @property
    def problems(self) -> tuple:
        return tuple(f for f in self.findings if f.severity == ERROR)


def check_model(path) -> ModelCheck:
    """Every reason vLLM or transformers would refuse the model folder at `path`."""
    path = Path(path)
    try:
        folder = ModelFolder.open(path)
    except SeedLoraError as exc:
        return ModelCheck(path, (Finding(ERROR, str(exc)),))
    findings = []
    if folder.config is None:
        findings.append(Finding(ERROR, f"{path}: no config.json; vLLM and transformers need the model's config (copy the base's)"))
    elif not folder.config.get("architectures"):
        findings.append(Finding(ERROR, f"{path / 'config.json'}: no \"architectures\"; vLLM picks the model class from it "
                                       "(copy it from the base's config.json)"))
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        findings.append(Finding(WARNING, f"{path}: no tokenizer files; serve with --tokenizer BASE (or copy the base's tokenizer here)"))
    return ModelCheck(path, tuple(findings))
