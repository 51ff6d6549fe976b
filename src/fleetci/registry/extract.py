"""Unpack a downloaded artifact into plain ``docker save`` archives, as ``prepare`` needs them.

An artifact zip holds the archives themselves, gzipped or not, or one outer tar (the seed's
``docker save | gzip`` bundle) with an archive per image. Everything lands in the tag's ``extracted/``
directory through ``.partial`` files, so an interrupted extraction never looks finished.
"""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from fleetci.errors import FleetciError
from fleetci.files import partial
from fleetci.registry.archive import READ_CHUNK, gunzip_to, is_gzip
from fleetci.registry.plan import META_FILE

Log = Callable[[str], None]


def docker_archives(zips: list[Path], dest: Path, log: Log) -> list[Path]:
    """Every ``docker save`` archive in ``zips``, extracted (and decompressed) into ``dest``."""
    candidates: list[Path] = []
    for z in zips:
        candidates += _extract_zip(z, dest, log)
    archives: list[Path] = []
    for path in candidates:
        plain = _plain_tar(path, log)
        if _is_docker_archive(plain):
            archives.append(plain)
            continue
        if tarfile.is_tarfile(plain):
            for inner in _expand_bundle(plain, dest, log):
                inner_plain = _plain_tar(inner, log)
                if _is_docker_archive(inner_plain):
                    archives.append(inner_plain)
                else:
                    raise FleetciError(f"{inner.name} in the bundle is not a docker save archive")
        else:
            raise FleetciError(f"{path.name} in the artifact is not a docker save archive (corrupt tarball?)")
    return archives


def _is_docker_archive(path: Path) -> bool:
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if info.name.lstrip("./") in ("manifest.json", "index.json"):
                    return True
    except (tarfile.TarError, OSError, EOFError):
        return False
    return False


def _extract_zip(zip_path: Path, dest: Path, log: Log) -> list[Path]:
    out = []
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                name = Path(info.filename).name
                if not name or name == META_FILE:
                    continue
                target = dest / name
                log(f"extract {name} ({info.file_size / 1e6:.1f} MB) from {zip_path.name}")
                with partial(target) as tmp, zf.open(info) as src, tmp.open("wb") as fh:
                    shutil.copyfileobj(src, fh, READ_CHUNK)
                out.append(target)
    except (zipfile.BadZipFile, OSError, EOFError, zipfile.LargeZipFile) as exc:
        raise FleetciError(f"{zip_path} is not a valid zip archive: {exc}") from exc
    return out


def _plain_tar(path: Path, log: Log) -> Path:
    if not is_gzip(path):
        return path
    stem = path.name.removesuffix(".gz").removesuffix(".tgz")
    target = path.with_name(stem if stem.endswith(".tar") else stem + ".tar")
    log(f"decompress {path.name}")
    gunzip_to(path, target)
    path.unlink()  # our own intermediate copy; the downloaded zip still holds the original
    return target


def _expand_bundle(path: Path, dest: Path, log: Log) -> list[Path]:
    """An outer tar that holds one tarball per image (the seed's ``docker save | gzip`` bundle)."""
    out = []
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if not info.isreg():
                    continue
                name = Path(info.name).name
                src = tar.extractfile(info)
                if src is None or not name:
                    continue
                target = dest / name
                with partial(target) as tmp, tmp.open("wb") as fh:
                    shutil.copyfileobj(src, fh, READ_CHUNK)
                out.append(target)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise FleetciError(f"{path} is not a valid tar archive: {exc}") from exc
    log(f"unpacked {len(out)} file(s) from bundle {path.name}")
    path.unlink()
    return out
