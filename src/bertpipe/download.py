"""Fetch a zip archive from the first mirror that passes its SHA-1 checks; extract chosen members.

d2l saved whatever a server answered under the zip's name and never checked it, so a dead mirror
surfaced later as a `BadZipFile` (d2l issue #2588). Here the mirrors are tried in order. An HTTP
mirror is streamed to a temporary file with retries, exponential backoff and Range resume; a
`file://` URL or a plain path is read in place (for users behind a firewall). A mirror passes
when the archive's SHA-1 matches `sha1`, or, for mirrors that repackage the data, when every
listed member has a SHA-1 and all of them match. Members are found by basename anywhere in the
archive and streamed flat into the output folder, which appears only once everything passed.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
import time
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import requests
from tqdm import tqdm

from bertpipe import __version__, artifacts
from bertpipe.cli import UserError
from bertpipe.config import DownloadConfig

log = logging.getLogger(__name__)

USER_AGENT = f"bertpipe/{__version__} (+python-requests)"  # some hosts refuse default client UAs
# Bytes per read and write while streaming. A read cut short by a dropped connection loses what
# it had buffered, so a resume restarts at most this much before the cut.
CHUNK = 1 << 16
SHA1_RE = re.compile(r"[0-9a-fA-F]{40}")
# zipfile's ways of saying an archive is damaged (bad CRC, truncated) or needs what it lacks
# (a password, an unsupported compression method).
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, RuntimeError)


@dataclass(frozen=True)
class HttpPolicy:
    """How hard to try one HTTP mirror before moving on to the next."""

    attempts: int = 5  # requests per mirror, the first one included
    backoff_s: float = 1.0  # the wait before retry k is backoff_s * 2**(k-1)
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0  # the longest silence allowed while the body streams


DEFAULT_HTTP = HttpPolicy()


class MirrorError(Exception):
    """This mirror cannot be used; the message says why. The next mirror is tried."""


class _Transient(Exception):
    """A failure worth retrying: connection trouble, a timeout, HTTP 429 or 5xx."""


def fetch(cfg: DownloadConfig, out: str | Path, http: HttpPolicy = DEFAULT_HTTP) -> dict:
    """Fill folder `out` with the members named in `cfg.files`, from the first mirror that passes.

    Returns the metrics: the mirror used, the archive's size and SHA-1, and each file's size.
    Raises UserError naming every mirror and why it failed; `out` is then left as it was.
    """
    out = Path(out)
    _check_config(cfg, out.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    # The archive lands in a temporary folder beside `out` (same disk); it goes away either way.
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as work:
        for mirror in cfg.mirrors:
            try:
                with artifacts.atomic_dir(out) as staging:
                    metrics = _from_mirror(mirror, cfg, Path(work) / "archive.zip", staging, http)
            except MirrorError as err:
                log.warning("mirror %s failed: %s", mirror, err)
                failures.append(f"  {mirror}: {err}")
                continue
            log.info(
                "wrote %d files (%d bytes) to %s",
                len(metrics["files"]),
                sum(metrics["files"].values()),
                out,
            )
            return metrics
    raise UserError(
        f"{out.name}: none of the {len(failures)} mirrors passed; fix `mirrors` in the params "
        "file or add a local copy of the archive as a mirror:\n" + "\n".join(failures)
    )


def _check_config(cfg: DownloadConfig, where: str) -> None:
    """Reject params that no mirror could ever satisfy, before any network traffic."""
    if not cfg.mirrors:
        raise UserError(f"{where}.mirrors: empty; list at least one URL or local path")
    if not cfg.files:
        raise UserError(f"{where}.files: empty; name the archive members to extract")
    for name in cfg.files:  # each becomes a path inside `out`
        if name in ("", ".", "..") or re.search(r"[/\\]", name):
            raise UserError(f"{where}.files: {name!r} is not a plain file name; give its basename")
    for sha1 in (cfg.sha1, *cfg.files.values()):
        if sha1 is not None and not SHA1_RE.fullmatch(sha1):
            raise UserError(f"{where}: {sha1!r} is not a SHA-1 (40 hex digits)")
    if cfg.sha1 is None and None in cfg.files.values():
        raise UserError(
            f"{where}: nothing to check the archive against; set `sha1`, or a SHA-1 "
            "for every entry of `files`"
        )


def _from_mirror(
    mirror: str, cfg: DownloadConfig, dest: Path, staging: Path, http: HttpPolicy
) -> dict:
    """Obtain, verify and extract one mirror's archive into `staging`; return the metrics."""
    log.info("trying mirror %s", mirror)
    try:
        archive = _obtain(mirror, dest, http)
        sha1 = _check_archive(archive, cfg)
        sizes = _extract(archive, cfg.files, staging)
        return {
            "mirror": mirror,
            "archive_bytes": archive.stat().st_size,
            "archive_sha1": sha1,
            "files": sizes,
        }
    finally:
        dest.unlink(missing_ok=True)  # a partial or rejected download is never kept


def _check_archive(archive: Path, cfg: DownloadConfig) -> str:
    """Return the SHA-1 of a zip that matches `cfg.sha1` or may still pass on its members."""
    _require_zip(archive)
    sha1 = artifacts.sha1_of_file(archive)
    if cfg.sha1 is None or sha1 == cfg.sha1.lower():
        return sha1
    if None in cfg.files.values():
        raise MirrorError(f"archive SHA-1 {sha1} != expected {cfg.sha1}")
    log.info(
        "archive SHA-1 %s != %s: a repackaged copy passes if every member matches", sha1, cfg.sha1
    )
    return sha1


def _obtain(mirror: str, dest: Path, http: HttpPolicy) -> Path:
    """The archive's path: downloaded to `dest` for http(s), else the local file itself."""
    url = urllib.parse.urlsplit(mirror)
    scheme = url.scheme.lower()
    if scheme in ("http", "https"):
        _download(mirror, dest, http)
        return dest
    if scheme == "file":
        if url.netloc not in ("", "localhost"):
            raise MirrorError(f"file:// URL names host {url.netloc!r}; only local files work")
        path = Path(urllib.request.url2pathname(url.path))
    elif len(scheme) <= 1:  # no scheme, or a Windows drive letter: a plain path
        path = Path(mirror)
    else:
        raise MirrorError(f"unsupported URL scheme {scheme!r}; use http(s), file:// or a path")
    if not path.is_file():
        raise MirrorError(f"no such file {path}")
    return path


def _download(url: str, dest: Path, http: HttpPolicy) -> None:
    """Stream `url` into `dest`, retrying transient failures and resuming where a cut left off."""
    dest.unlink(missing_ok=True)
    with requests.Session() as session:
        # identity: Content-Length and Range then count the bytes we store.
        session.headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
        for attempt in range(1, http.attempts + 1):
            try:
                _stream(session, url, dest, http)
                return
            except _Transient as err:
                if attempt == http.attempts:
                    raise MirrorError(f"{err} (gave up after {attempt} attempts)") from None
                delay = http.backoff_s * 2 ** (attempt - 1)
                log.warning(
                    "%s: %s; retry %d of %d in %.2g s", url, err, attempt, http.attempts - 1, delay
                )
                time.sleep(delay)


def _stream(session: requests.Session, url: str, dest: Path, http: HttpPolicy) -> None:
    """One GET: resume with a Range request when part of the file is there, else start over."""
    have = dest.stat().st_size if dest.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    timeout = (http.connect_timeout_s, http.read_timeout_s)
    try:
        with session.get(url, headers=headers, stream=True, timeout=timeout) as r:
            if r.status_code == 429 or r.status_code >= 500:
                raise _Transient(f"HTTP {r.status_code} {r.reason}")
            if r.status_code == 416 and have:  # the partial file no longer fits: start over
                dest.unlink()
                raise _Transient("HTTP 416 for a resumed download; starting over")
            if r.status_code not in (200, 206):
                raise MirrorError(f"HTTP {r.status_code} {r.reason}")
            _save_body(r, dest, _resume_offset(r, have))
    except requests.exceptions.SSLError as err:  # a certificate will not fix itself on retry
        raise MirrorError(_describe(err)) from None
    except (requests.ConnectionError, requests.Timeout) as err:
        raise _Transient(_describe(err)) from None
    except requests.RequestException as err:
        raise MirrorError(_describe(err)) from None


def _describe(err: requests.RequestException) -> str:
    """requests' message without urllib3's pool and object reprs, e.g. '[Errno 111] ...'."""
    text = str(err)
    errno = re.search(r"\[Errno -?\d+\][^'\")]*", text)
    detail = errno[0] if errno else re.sub(r"^HTTPS?ConnectionPool\([^)]*\): ", "", text)
    return f"{type(err).__name__}: {detail}"


def _resume_offset(r: requests.Response, have: int) -> int:
    """Where this response's body goes in the file: `have` for a matching 206, 0 for a 200."""
    if r.status_code == 200:
        if have:
            log.info("server sent the whole file instead of a range: restarting the download")
        return 0
    match = re.match(r"bytes (\d+)-", r.headers.get("Content-Range", ""))
    if not match or int(match[1]) != have:
        raise _Transient(f"asked for bytes {have}- but got {r.headers.get('Content-Range')!r}")
    if have:
        log.info("resuming at byte %d", have)
    return have


def _save_body(r: requests.Response, dest: Path, offset: int) -> None:
    """Write the body at `offset` of `dest`; a short body is transient (the next try resumes)."""
    length = r.headers.get("Content-Length")
    expected = offset + int(length) if length and length.isdigit() else None
    name = urllib.parse.urlsplit(r.url).path.rsplit("/", 1)[-1]
    bar = _progress(f"download {name}", expected, initial=offset)
    with open(dest, "ab" if offset else "wb") as f, bar:
        try:
            for chunk in r.iter_content(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
            complete = expected is None or f.tell() == expected
        except requests.exceptions.ChunkedEncodingError:  # urllib3 saw the body end early
            complete = False
        size = f.tell()
    if not complete:
        raise _Transient(f"connection closed after {size} of {expected or 'unknown'} bytes")


def _require_zip(path: Path) -> None:
    """Say what the file looks like when it is not a zip (e.g. an error page saved as .zip)."""
    if zipfile.is_zipfile(path):
        return
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(40).decode("utf-8", errors="replace")
    if not head:
        raise MirrorError("not a zip archive: the file is empty")
    more = "..." if size > 40 else ""
    raise MirrorError(f"not a zip archive: starts with {head!r}{more} ({size} bytes)")


def _extract(archive: Path, files: dict[str, str | None], dest: Path) -> dict[str, int]:
    """Stream each wanted member into `dest/<basename>`, checking SHA-1s; return their sizes."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = _find_members(zf, files)
            total = sum(info.file_size for info in members.values())
            with _progress("extract", total) as bar:
                return {
                    name: _extract_one(zf, info, dest / name, files[name], bar)
                    for name, info in members.items()
                }
    except ZIP_ERRORS as err:
        raise MirrorError(f"damaged or unreadable zip archive: {err}") from None


def _find_members(zf: zipfile.ZipFile, files: dict[str, str | None]) -> dict[str, zipfile.ZipInfo]:
    """Map each wanted basename to the one member that has it, wherever it sits in the archive."""
    found: dict[str, list[zipfile.ZipInfo]] = {name: [] for name in files}
    for info in zf.infolist():
        parts = re.split(r"[/\\]", info.filename)
        # Only basenames are ever written, but a hostile name says the archive is not to be trusted.
        if parts[0] == "" or ".." in parts or re.match(r"[A-Za-z]:", info.filename):
            raise MirrorError(f"unsafe member name {info.filename!r} (absolute or with '..')")
        if not info.is_dir() and parts[0] != "__MACOSX" and parts[-1] in found:
            found[parts[-1]].append(info)
    for name, infos in found.items():
        if not infos:
            raise MirrorError(f"no member named {name!r} in the archive")
        if len(infos) > 1:
            paths = ", ".join(info.filename for info in infos)
            raise MirrorError(f"{len(infos)} members named {name!r} ({paths}); cannot pick one")
    return {name: infos[0] for name, infos in found.items()}


def _extract_one(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, sha1: str | None, bar: tqdm
) -> int:
    """Copy one member to `target` in chunks (never whole in memory); return its size."""
    digest, size = hashlib.sha1(), 0
    with zf.open(info) as src, open(target, "wb") as dst:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            dst.write(chunk)
            size += len(chunk)
            bar.update(len(chunk))
    if sha1 is not None and digest.hexdigest() != sha1.lower():
        raise MirrorError(
            f"member {info.filename!r} has SHA-1 {digest.hexdigest()}, expected {sha1}"
        )
    return size


def _progress(desc: str, total: int | None, initial: int = 0) -> tqdm:
    """A bytes progress bar on stderr."""
    return tqdm(
        total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024
    )
