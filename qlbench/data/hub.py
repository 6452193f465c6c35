"""Hugging Face Hub names: use the local cache when it has them, and fail at once — not after a minute of
retries — when it does not and the hub cannot be reached (HF_HUB_OFFLINE set, or no route to the endpoint)."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from qlbench.errors import QlbenchError

PROBE_TIMEOUT_S = 3.0
_PROXIES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def offline() -> bool:
    return any(os.environ.get(var, "0").strip().lower() not in ("0", "", "false", "no", "off")
               for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"))


PARQUET_EXPORT = "refs/convert/parquet"  # the hub's own parquet conversion of every public dataset, as a branch


def cached(repo_id: str, repo_type: str = "model", revision: str | None = None) -> str | None:
    """The local snapshot folder of `repo_id` (at `revision`) if the Hugging Face cache holds one (no network)."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, repo_type=repo_type, revision=revision, local_files_only=True)
    except Exception:  # not cached, or not a valid repo id: either way nothing local
        return None


def endpoint() -> tuple[str, int]:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """One TCP connect to the hub endpoint (skipped behind a proxy, where only the proxy knows)."""
    if any(os.environ.get(v) for v in _PROXIES):
        return True
    try:
        socket.create_connection(endpoint(), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve(repo_id: str, what: str, repo_type: str = "model", revision: str | None = None) -> tuple[str, bool]:
    """(what to load, local_files_only) for a hub name; a QlbenchError line at once if it cannot be had."""
    local = cached(repo_id, repo_type, revision)
    if local is not None:
        return local, True
    if offline():
        raise QlbenchError(f"{what}: {repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set "
                           "(download it once where the hub is reachable, or give a local path)")
    if not reachable():
        host, port = endpoint()
        raise QlbenchError(f"{what}: {repo_id!r} is not in the local Hugging Face cache and {host}:{port} cannot "
                           "be reached (set HF_HUB_OFFLINE=1 on machines without internet, or give a local path)")
    return repo_id, False


def repo_files(where: str, local: bool, repo_type: str = "dataset") -> list[str]:
    """The files of a resolved repository: a local snapshot's, or the hub's listing."""
    from pathlib import Path

    if local:
        root = Path(where)
        return sorted(str(f.relative_to(root)) for f in root.rglob("*") if f.is_file())
    from huggingface_hub import list_repo_files

    return list_repo_files(where, repo_type=repo_type)


def parquet_export(repo_id: str, what: str, config: str, split: str) -> list[str]:
    """The parquet files of one split of a dataset's hub conversion (branch refs/convert/parquet): the way to a
    dataset whose repository holds only a loading script, which `datasets` >= 4 refuses to run. Layouts:
    `{config}/{split}/0000.parquet` (today) and `{config}/{name}-{split}.parquet` (older conversions)."""
    from pathlib import Path

    where, local = resolve(repo_id, f"{what} (parquet export)", "dataset", PARQUET_EXPORT)
    if not local:
        from huggingface_hub import snapshot_download

        where = snapshot_download(repo_id, repo_type="dataset", revision=PARQUET_EXPORT,
                                  allow_patterns=[f"{config}/{split}/*", f"{config}/*-{split}.parquet"])
    root = Path(where) / config
    files = sorted(root.glob(f"{split}/*.parquet")) or sorted(root.glob(f"*-{split}.parquet"))
    if not files:
        raise QlbenchError(f"{what}: the parquet export of {repo_id!r} has no {config}/{split} files")
    return [str(f) for f in files]
