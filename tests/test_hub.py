"""Hub ids as inputs: `org/name[@revision]` resolved offline from a Hub-layout cache made here.

The cache is laid out as huggingface_hub lays it out (tests/_hub_cache.py); every run sets
HF_HOME to it and HF_HUB_OFFLINE=1, so nothing is fetched. The merges from Hub ids must give
the same files as the same merges from local folders, and provenance must name repo and commit.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _adapters import make_adapters, save_tiny_llama
from _hub_cache import cache_repo
from seedlora.sources.hub import parse_hub_id

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """HF_HOME with org/adapter-a (main), org/adapter-b (main and tag v1) and org/tiny-base cached."""
    root = tmp_path_factory.mktemp("hub")
    local = make_adapters(root / "local", ranks=(2, 4))
    base = save_tiny_llama(root / "local" / "base")
    home = root / "hf_home"
    commits = {
        "org/adapter-a": cache_repo(home, "org/adapter-a", local[0]),
        "org/adapter-b": cache_repo(home, "org/adapter-b", local[1], refs=("main", "v1")),
        "org/tiny-base": cache_repo(home, "org/tiny-base", base),
    }
    work = root / "work"
    work.mkdir()
    return {"home": home, "local": local, "base": base, "commits": commits, "work": work}


def seedlora(hub, *argv, check=True):
    env = {**os.environ, "HF_HOME": str(hub["home"]), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-m", "seedlora", *argv], cwd=hub["work"], env=env,
                          capture_output=True, text=True, check=check, timeout=300)


def files(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


def test_parse_hub_id_accepts_repo_ids_and_revisions_only():
    assert parse_hub_id("org/name") == ("org/name", "main")
    assert parse_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct@v1.0") == ("HuggingFaceTB/SmolLM2-135M-Instruct", "v1.0")
    assert parse_hub_id("org/name@" + "a" * 40) == ("org/name", "a" * 40)
    for path in ("merged/", "./org/name", "/abs/path", "a/b/c", "../x", "org/..", "name", "org/na me", "~/x"):
        assert parse_hub_id(path) is None, path


def test_adapters_and_base_from_hub_ids_fuse_offline_like_local_folders(hub):
    work, c = hub["work"], hub["commits"]
    seedlora(hub, "merge", "org/adapter-a", "org/adapter-b@v1", "--base", "org/tiny-base", "--fuse",
             "-m", "linear", "-o", "from-hub")
    seedlora(hub, "merge", *map(str, hub["local"]), "--base", str(hub["base"]), "--fuse", "-m", "linear", "-o", "from-local")
    hub_files, local_files = files(work / "from-hub"), files(work / "from-local")
    assert hub_files["model.safetensors"] == local_files["model.safetensors"]
    record = json.loads(hub_files["seedlora_provenance.json"])
    assert [i["hub"] for i in record["inputs"]] == [
        {"repo_id": "org/adapter-a", "commit": c["org/adapter-a"]}, {"repo_id": "org/adapter-b", "commit": c["org/adapter-b"]}]
    assert record["base"]["hub"] == {"repo_id": "org/tiny-base", "commit": c["org/tiny-base"]}
    assert "path" not in record["base"] and all("path" not in i for i in record["inputs"])  # no cache paths
    local_record = json.loads(local_files["seedlora_provenance.json"])
    assert [i["sha256"] for i in record["inputs"]] == [i["sha256"] for i in local_record["inputs"]]
    card = hub_files["README.md"].decode()
    assert f"org/adapter-a@{c['org/adapter-a']}" in card and "base_model: org/tiny-base" in card


def test_adapter_merge_from_hub_ids_and_a_local_folder_of_that_name_wins(hub):
    work, c = hub["work"], hub["commits"]
    seedlora(hub, "merge", "org/adapter-a", "org/adapter-b@" + c["org/adapter-b"], "-m", "seedlora", "-o", "adapter-out")
    record = json.loads((work / "adapter-out" / "seedlora_provenance.json").read_text())
    assert [i["hub"]["commit"] for i in record["inputs"]] == [c["org/adapter-a"], c["org/adapter-b"]]
    # a folder ./org/adapter-a in the working directory is taken instead of the Hub repo
    (work / "org").mkdir()
    os.symlink(hub["local"][1], work / "org" / "adapter-a")
    try:
        seedlora(hub, "merge", "org/adapter-a", "org/adapter-b", "-m", "linear", "-o", "local-wins")
    finally:
        (work / "org" / "adapter-a").unlink()
        (work / "org").rmdir()
    record = json.loads((work / "local-wins" / "seedlora_provenance.json").read_text())
    assert record["inputs"][0] == {"path": str(work / "org" / "adapter-a"), "sha256": record["inputs"][1]["sha256"]}


def test_unknown_hub_id_offline_is_one_line_error_and_writes_nothing(hub):
    done = seedlora(hub, "merge", "org/adapter-a", "org/not-cached", "-o", "never", check=False)
    assert done.returncode != 0 and done.stderr.count("\n") == 1, done.stderr
    assert "org/not-cached" in done.stderr and "HF_HUB_OFFLINE" in done.stderr and "hf download" in done.stderr
    done = seedlora(hub, "merge", "org/adapter-a", "org/adapter-b@v9", "-o", "never", check=False)
    assert done.returncode != 0 and "v9" in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert not (hub["work"] / "never").exists()
