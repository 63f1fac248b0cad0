"""Identities that decide reruns: file content hashes (cached), the backbone's identity, stage code versions.

Snakemake reruns a job when its ``params`` change. The workflow therefore passes *what* a result
depends on, never *where* it lies: the backbone by the SHA-256 of its weights (moving the file
reruns nothing, replacing its content retrains), and each stage's code version. Light module:
the Snakefile imports it while building the DAG, so it imports no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from asd.errors import AsdError

# Bump a stage's number when a code change alters what that stage writes: `snakemake -n
# --rerun-triggers params` then lists exactly the outdated results, and a normal run recomputes them.
STAGE_VERSIONS = {"features": 1, "train": 1, "embed": 1, "score": 1, "evaluate": 1, "plots": 1, "submission": 1}


def _cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "asd" / "sha256.json"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's content, cached by (real path, size, mtime) so a 350 MB checkpoint is read once."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as error:
        raise AsdError(f"cannot read {path} to hash it ({error.strerror}); check the path.") from None
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_file = _cache_path()
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as error:
        raise AsdError(f"cannot read {path} to hash it ({error.strerror}); check the path.") from None
    cache[key] = digest.hexdigest()
    try:  # the cache is an optimisation: a read-only home only costs a re-hash
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_file)
    except OSError:
        pass
    return cache[key]


def recorded_backbone_label(path: str, weights: str) -> str | None:
    """The label ``asd pretrain`` recorded in ``<path>.json`` for exactly these weights (sha256 ``weights``),
    else None. Read without torch, so the workflow can name the backbone while it parses."""
    report = Path(f"{path}.json")
    try:
        recorded = json.loads(report.read_text())
    except (OSError, ValueError):
        return None
    label = recorded.get("label") if isinstance(recorded, dict) else None
    return label if isinstance(label, str) and recorded.get("sha256") == weights else None


def resolve_checkpoint(path: str | None, pipeline_dir: str | os.PathLike) -> str | None:
    """``backbone.checkpoint`` as a path to open: a relative one that is not in the working directory
    is taken from the pipeline's own folder, where the shipped demo backbone lives (so the demo also
    runs with ``snakemake --directory``)."""
    if not path or Path(path).is_absolute() or Path(path).exists():
        return path
    shipped = Path(pipeline_dir) / path
    return str(shipped) if shipped.exists() else path


def backbone_identity(backbone: dict) -> dict:
    """What a trained model depends on in the ``backbone`` section: the weights' content, not their path."""
    path = backbone.get("checkpoint")
    if path and not Path(path).is_file():
        raise AsdError(f"config key 'backbone.checkpoint': {path} does not exist; download BEATs_iter3.pt (linked "
                       "from microsoft/unilm beats/README.md) to that path, or set it to null for a random-init "
                       "backbone.")
    weights = file_sha256(path) if path else f"random-init:{backbone.get('random_init_size', 'iter3')}"
    return {"weights": weights, "num_layers": backbone["num_layers"]}
