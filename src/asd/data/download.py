"""Download and unzip the official DCASE 2025 Task 2 zips, resumably and without half-done states.

Each zip is streamed to a temporary file, verified (size against Content-Length, SHA-256 when
known, every member's CRC), extracted into a temporary folder and only then moved into place,
after which a completion marker is written. A zip whose marker exists is skipped; a failure
removes what that zip had put down, so nothing ever looks complete that is not.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path

from tqdm import tqdm

from asd.data.dataset import DEV_MACHINE_TYPES, EVAL_MACHINE_TYPES
from asd.errors import AsdError
from asd.io import write_json

# From the official baseline's download scripts (DCASE 2025 Task 2).
_OFFICIAL_URLS = {
    "dev": ("https://zenodo.org/records/15097779/files/dev_{machine}.zip",),
    "eval": (
        "https://zenodo.org/records/15392814/files/eval_data_{machine}_train.zip",
        "https://zenodo.org/records/15519362/files/eval_data_{machine}_test.zip",
    ),
}
_DEFAULT_MACHINE_TYPES = {"dev": DEV_MACHINE_TYPES, "eval": EVAL_MACHINE_TYPES}
_CHUNK_BYTES = 1 << 20


def official_urls(dataset: str, machine_types: list[str] | None = None) -> list[str]:
    """Zip URLs of the dev set (``dev_<m>.zip``) or the eval set (``eval_data_<m>_{train,test}.zip``)."""
    if dataset not in _OFFICIAL_URLS:
        raise AsdError(f"download dataset {dataset!r} is unknown; use dev or eval.")
    machines = _DEFAULT_MACHINE_TYPES[dataset] if machine_types is None else machine_types
    return [template.format(machine=machine) for machine in machines for template in _OFFICIAL_URLS[dataset]]


def completion_marker(dest_root: str | os.PathLike, url: str) -> Path:
    """The file whose presence says the zip at ``url`` was fully downloaded and extracted."""
    return Path(dest_root) / f".{_zip_name(url)}.complete"


def download_dataset(
    *, urls: list[str], dest_root: str | os.PathLike, sha256: dict[str, str] | None = None, progress: bool = True
) -> dict[str, str]:
    """Fetch and extract every zip into ``dest_root``; ``sha256`` maps a URL or zip name to its digest.

    Returns ``{url: 'downloaded' | 'skipped'}``.
    """
    dest_root = Path(dest_root).resolve()
    dest_root.mkdir(parents=True, exist_ok=True)
    outcome = {}
    for url in urls:
        if completion_marker(dest_root, url).is_file():
            outcome[url] = "skipped"
            continue
        digests = sha256 or {}
        expected_digest = digests.get(url) or digests.get(_zip_name(url))
        _download_one(url, dest_root, expected_digest=expected_digest, progress=progress)
        outcome[url] = "downloaded"
    return outcome


def _zip_name(url: str) -> str:
    return os.path.basename(urllib.parse.urlparse(url).path)


def _download_one(url: str, dest_root: Path, *, expected_digest: str | None, progress: bool) -> None:
    name = _zip_name(url)
    archive = dest_root / f".{name}.part"
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.extract-", dir=dest_root))
    placed: list[Path] = []
    try:
        digest = _fetch(url, archive, progress=progress)
        if expected_digest is not None and digest != expected_digest.lower():
            raise AsdError(
                f"{url}: SHA-256 is {digest}, expected {expected_digest}; the download is damaged or the "
                "file changed upstream. Run the download again, or check the expected checksum."
            )
        try:
            with zipfile.ZipFile(archive) as zipped:
                damaged = zipped.testzip()
                if damaged is not None:
                    raise AsdError(f"{url}: member {damaged} of the zip is damaged; run the download again.")
                zipped.extractall(staging)
        except (zipfile.BadZipFile, zlib.error) as error:
            raise AsdError(
                f"{url}: the downloaded file is not a valid zip ({error}); run the download again."
            ) from error
        _move_into_place(staging, dest_root, placed=placed)
        write_json(completion_marker(dest_root, url), {"url": url, "sha256": digest, "files": len(placed)})
    except BaseException as error:
        for path in placed:  # a failed zip leaves none of its files behind
            path.unlink(missing_ok=True)
        if isinstance(error, (AsdError, KeyboardInterrupt)):
            raise
        raise AsdError(f"{url}: download failed ({error}); run the download again.") from error
    finally:
        archive.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)


def _fetch(url: str, archive: Path, *, progress: bool) -> str:
    """Stream ``url`` to ``archive``; return its SHA-256. AsdError on HTTP errors or a short body."""
    request = urllib.request.Request(url, headers={"User-Agent": "asd-downloader"})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as error:
        raise AsdError(
            f"{url}: the server answered HTTP {error.code} ({error.reason}); check the URL (the official "
            "ones are in asd.data.download.official_urls) and try again later."
        ) from error
    except (urllib.error.URLError, OSError) as error:
        raise AsdError(
            f"{url}: cannot connect ({getattr(error, 'reason', error)}); check the network, or download the "
            f"zip by hand and unzip it into {archive.parent}."
        ) from error
    with response:
        length = response.headers.get("Content-Length")
        expected_bytes = int(length) if length is not None else None
        digest = hashlib.sha256()
        received = 0
        with open(archive, "wb") as handle, tqdm(
            total=expected_bytes, unit="B", unit_scale=True, desc=_zip_name(url), disable=not progress
        ) as bar:
            while chunk := response.read(_CHUNK_BYTES):
                handle.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if expected_bytes is not None and received != expected_bytes:
        raise AsdError(
            f"{url}: received {received} bytes, the server announced {expected_bytes}; the connection "
            "broke off. Run the download again."
        )
    return digest.hexdigest()


def _move_into_place(staging: Path, dest_root: Path, *, placed: list[Path]) -> None:
    """Move every extracted file into ``dest_root`` (merging folders), recording each destination in ``placed``."""
    for source in sorted(path for path in staging.rglob("*") if path.is_file()):
        destination = dest_root / source.relative_to(staging)
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, destination)
        placed.append(destination)
