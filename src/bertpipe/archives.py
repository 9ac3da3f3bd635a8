"""Extract chosen members of an untrusted zip archive: by basename, flat, within size limits.

A downloaded archive is whatever a server sent. Members are found by basename anywhere in it and
streamed flat into a folder, so no member name can place a file outside it, and a name that
tries (absolute, with `..`) condemns the whole archive. What the wanted members may unpack to is
bounded before anything is written (`ArchiveLimits`: a zip bomb is refused by its headers), and
no member is written past the size its header declares. Every way the archive can be damaged
ends in an `ArchiveError` that says what is wrong, never in zipfile's or zlib's traceback.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

CHUNK = 1 << 16  # bytes per read and write while extracting: a member is never whole in memory
# zipfile's ways of saying an archive is damaged (bad CRC, truncated) or needs what it lacks
# (a password, an unsupported compression method). A corrupt deflate stream is zlib's to say.
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, RuntimeError)


@dataclass(frozen=True)
class ArchiveLimits:
    """What the wanted members of an archive may unpack to, by the sizes their headers declare.

    Checked before anything is extracted; no member is then written past its declared size.
    """

    max_ratio: float = 64.0  # declared total / archive size (text zips are ~3-11x)
    max_bytes: int = 16 << 30  # declared total


DEFAULT_LIMITS = ArchiveLimits()


class ArchiveError(Exception):
    """This archive cannot be used; the message says why."""


def require_zip(path: Path) -> None:
    """Say what the file looks like when it is not a zip (e.g. an error page saved as .zip)."""
    if zipfile.is_zipfile(path):
        return
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(40).decode("utf-8", errors="replace")
    if not head:
        raise ArchiveError("not a zip archive: the file is empty")
    more = "..." if size > 40 else ""
    raise ArchiveError(f"not a zip archive: starts with {head!r}{more} ({size} bytes)")


def extract(
    archive: Path, files: dict[str, str | None], dest: Path, limits: ArchiveLimits
) -> dict[str, int]:
    """Stream each wanted member into `dest/<basename>`, checking SHA-1s; return their sizes.

    `files` maps each wanted basename to its SHA-1 (None: unchecked). Refuses, before writing
    anything, members that declare more than `limits` allow.
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            members = _find_members(zf, files)
            total = sum(info.file_size for info in members.values())
            _check_limits(total, archive.stat().st_size, limits)
            with tqdm(
                total=total, desc="extract", unit="B", unit_scale=True, unit_divisor=1024
            ) as bar:
                return {
                    name: _extract_one(zf, info, dest / name, files[name], bar)
                    for name, info in members.items()
                }
    except ZIP_ERRORS as err:
        raise ArchiveError(f"damaged or unreadable zip archive: {err}") from None


def _check_limits(total: int, archive_bytes: int, limits: ArchiveLimits) -> None:
    if total > limits.max_bytes:
        raise ArchiveError(
            f"refused before extracting: the wanted members would unpack to {total:,} bytes, "
            f"more than the limit of {limits.max_bytes:,} bytes"
        )
    if total > limits.max_ratio * archive_bytes:
        raise ArchiveError(
            f"refused before extracting: the wanted members would unpack to {total:,} bytes, "
            f"{total / max(archive_bytes, 1):,.0f} times the archive's {archive_bytes:,} bytes "
            f"(the limit is {limits.max_ratio:g} times): a zip bomb, or a damaged archive"
        )


def _find_members(zf: zipfile.ZipFile, files: dict[str, str | None]) -> dict[str, zipfile.ZipInfo]:
    """Map each wanted basename to the one member that has it, wherever it sits in the archive."""
    found: dict[str, list[zipfile.ZipInfo]] = {name: [] for name in files}
    for info in zf.infolist():
        parts = re.split(r"[/\\]", info.filename)
        # Only basenames are ever written, but a hostile name says the archive is not to be trusted.
        if parts[0] == "" or ".." in parts or re.match(r"[A-Za-z]:", info.filename):
            raise ArchiveError(f"unsafe member name {info.filename!r} (absolute or with '..')")
        if not info.is_dir() and parts[0] != "__MACOSX" and parts[-1] in found:
            found[parts[-1]].append(info)
    for name, infos in found.items():
        if not infos:
            raise ArchiveError(f"no member named {name!r} in the archive")
        if len(infos) > 1:
            paths = ", ".join(info.filename for info in infos)
            raise ArchiveError(f"{len(infos)} members named {name!r} ({paths}); cannot pick one")
    return {name: infos[0] for name, infos in found.items()}


def _extract_one(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, sha1: str | None, bar: tqdm
) -> int:
    """Copy one member to `target` in chunks; return its size.

    Reads stop at the size the header declares (zipfile stops there too): a member whose data is
    longer than declared is cut there and then fails zipfile's CRC-32 check.
    """
    digest, size = hashlib.sha1(), 0
    try:
        with zf.open(info) as src, open(target, "wb") as dst:
            while chunk := src.read(min(CHUNK, info.file_size - size + 1)):
                size += len(chunk)
                if size > info.file_size:
                    raise ArchiveError(
                        f"member {info.filename!r} holds more than the {info.file_size:,} bytes "
                        "its header declares"
                    )
                digest.update(chunk)
                dst.write(chunk)
                bar.update(len(chunk))
    except zipfile.BadZipFile as err:
        raise ArchiveError(
            f"member {info.filename!r} does not match its header ({err}): a damaged or crafted "
            "archive"
        ) from None
    except zlib.error as err:
        raise ArchiveError(
            f"member {info.filename!r} is damaged: its compressed data does not decompress ({err})"
        ) from None
    if sha1 is not None and digest.hexdigest() != sha1.lower():
        raise ArchiveError(
            f"member {info.filename!r} has SHA-1 {digest.hexdigest()}, expected {sha1}"
        )
    return size
