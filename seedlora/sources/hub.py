"""Hub ids as inputs: `org/name` or `org/name@revision`, resolved to a local snapshot folder.

Where a path is accepted (adapters, checkpoints, the base), a string that is not an existing
local path but has the shape of a Hub repo id is fetched with huggingface_hub.snapshot_download,
which honours HF_HOME / HF_HUB_CACHE, HF_HUB_OFFLINE and the user's token exactly as the rest of
the Hugging Face stack does (offline, a cached snapshot is used and nothing is fetched). A local
folder of that name always wins. Only the files a merge reads are fetched: first the configs
(to tell an adapter from a full model), then, pinned to the commit just resolved, the adapter's
weights or the model's safetensors, index, tokenizer and other small side files.

The resolved commit is the name of the snapshot folder (the Hub cache layout guarantees it);
provenance records the repo id and that commit, never the machine's cache path.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from ..errors import HubError

log = logging.getLogger(__name__)

# a repo id as the Hub spells it (owner/name, no "..", no leading "." or "-"), optional @revision
HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?:@(?P<revision>[\w./-]+))?$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
CONFIG_FILES = ["adapter_config.json", "config.json"]
ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"]
MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]  # weights, index, config, tokenizer


@dataclass(frozen=True)
class HubOrigin:
    """Where a folder came from on the Hub: the repo, the revision asked for, the commit it resolved to."""

    repo_id: str
    revision: str
    commit: str

    @property
    def pinned(self) -> str:
        """`org/name@commit`: the same files, whatever the branch has moved to since."""
        return f"{self.repo_id}@{self.commit}"


@dataclass(frozen=True)
class Resolved:
    """A local folder for what the user named, and its Hub origin (None for a local path)."""

    path: Path
    origin: Optional[HubOrigin] = None


def parse_hub_id(text: str) -> Optional[tuple]:
    """(repo_id, revision) if `text` has the shape of a Hub id, else None. '..' never is one."""
    match = HUB_ID.match(text)
    if match is None or ".." in text:
        return None
    return match.group("repo"), match.group("revision") or "main"


def resolve(spec: Union[str, Path], kind: str = "any") -> Resolved:
    """A local folder for `spec`: an existing path as it is, else a Hub id fetched (or found in the cache).

    `kind` picks the files fetched: "adapter", "model", or "any" (decided by the repo's configs).
    A string that is neither an existing path nor a Hub id is returned as a path: the opener
    then says what is wrong with it.
    """
    if isinstance(spec, Path) or Path(spec).exists():
        return Resolved(Path(spec))
    parsed = parse_hub_id(spec)
    if parsed is None:
        return Resolved(Path(spec))
    repo_id, revision = parsed
    configs = Path(download(repo_id, revision, CONFIG_FILES, spec))
    commit = configs.name
    if not COMMIT.match(commit):
        raise HubError(f"{spec}: huggingface_hub returned {configs}, not a snapshot folder named by its commit; "
                       "pass a local folder instead")
    if kind == "any":
        kind = "adapter" if (configs / "adapter_config.json").is_file() else "model"
    folder = Path(download(repo_id, commit, ADAPTER_FILES if kind == "adapter" else MODEL_FILES, spec))
    check_complete(folder, kind, spec)
    log.info("%s: Hub snapshot %s (commit %s)", spec, folder, commit)
    return Resolved(folder, HubOrigin(repo_id, revision, commit))


def download(repo_id: str, revision: str, patterns: list, spec: str) -> str:
    """snapshot_download with the user's environment; its errors as one line naming the fix."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    try:
        return snapshot_download(repo_id, revision=revision, allow_patterns=patterns)
    except RevisionNotFoundError:
        raise HubError(f"{spec}: the Hub repo {repo_id} has no revision {revision!r}; name a branch, tag or commit it has") from None
    except GatedRepoError:
        raise HubError(f"{spec}: {repo_id} is gated; accept its terms on the Hub and log in (`hf auth login` or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise HubError(f"{spec}: no local folder of that name and no Hub repo {repo_id} you can access "
                       "(private? log in with `hf auth login` or set HF_TOKEN)") from None
    except LocalEntryNotFoundError:
        raise HubError(f"{spec}: no local folder of that name, and {repo_id} (revision {revision}) is not in the Hub "
                       "cache while the Hub cannot be reached (HF_HUB_OFFLINE=1 or no network); download it first "
                       f"(`hf download {repo_id}`) or pass a local folder") from None
    except HfHubHTTPError as exc:
        raise HubError(f"{spec}: the Hub refused {repo_id}: {str(exc).splitlines()[0]}") from None
    except (OSError, ValueError) as exc:  # incomplete snapshots, unwritable cache, bad ids
        raise HubError(f"{spec}: cannot fetch {repo_id} from the Hub: {str(exc).splitlines()[0]}") from None


def check_complete(folder: Path, kind: str, spec: str) -> None:
    """A snapshot that holds no config for what it should be (a partial cache) is refused here."""
    needed = "adapter_config.json" if kind == "adapter" else None
    if needed and not (folder / needed).is_file():
        raise HubError(f"{spec}: the cached snapshot {folder} has no {needed}; re-download it (`hf download ...`) "
                       "or pass a local folder")
    if kind == "model" and not any(folder.glob("*.safetensors")):
        raise HubError(f"{spec}: the Hub snapshot {folder} has no adapter_config.json and no .safetensors weights; "
                       "seedlora reads PEFT adapters and safetensors models")
