"""Fill a folder with chosen members of a zip archive, from the first of its mirrors that passes.

d2l saved whatever a server answered under the zip's name and never checked it, so a dead mirror
surfaced later as a `BadZipFile` (d2l issue #2588). Here the mirrors are tried in order. An HTTP
mirror is downloaded by `bertpipe.transfer` (retries, Range resume, a low-speed limit) into a
partial file in `.<out>.partial/` beside the stage's output: outside the output, which DVC
deletes before it reruns a stage, and outside any temporary folder, so it outlives a killed or
failed run and the next run resumes it. A `file://` URL or a plain path is read in place (for
users behind a firewall). A mirror passes when the archive's SHA-1 matches `sha1`, or, for
mirrors that repackage the data, when every listed member has a SHA-1 and all of them match.
`bertpipe.archives` extracts the members into the output folder, which appears only once
everything passed.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

from bertpipe import archives, artifacts, transfer
from bertpipe.archives import ArchiveError, ArchiveLimits
from bertpipe.config import DownloadConfig
from bertpipe.errors import UserError
from bertpipe.transfer import HttpPolicy, TransferError

log = logging.getLogger(__name__)

SHA1_RE = re.compile(r"[0-9a-fA-F]{40}")


class MirrorError(Exception):
    """This mirror cannot be used (no such file, an unsupported URL); the message says why."""


# What makes one mirror fail, with a message that says why: the next mirror is tried.
MIRROR_ERRORS = (MirrorError, TransferError, ArchiveError)


def partials_for(out: str | Path) -> Path:
    """The folder that keeps the interrupted downloads of the stage that writes `out`."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def partial_path(partials: Path, mirror: str) -> Path:
    """Where the download of `mirror` is kept in folder `partials` until it passes."""
    key = hashlib.sha1(mirror.encode("utf-8")).hexdigest()[:16]
    return partials / f"{key}.zip.part"


def fetch(
    cfg: DownloadConfig,
    out: str | Path,
    http: HttpPolicy = transfer.DEFAULT_HTTP,
    limits: ArchiveLimits = archives.DEFAULT_LIMITS,
    partials: Path | None = None,
) -> dict:
    """Fill folder `out` with the members named in `cfg.files`, from the first mirror that passes.

    Interrupted downloads are kept in `partials` (default: `partials_for(out)`) for the next run
    to resume; a stage that extracts into a temporary folder passes the one for its output.
    Returns the metrics: the mirror used, the archive's size and SHA-1, and each file's size.
    Raises UserError naming every mirror and why it failed; `out` is then left as it was.
    """
    out = Path(out)
    partials = partials_for(out) if partials is None else partials
    _check_config(cfg, out.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    _drop_unlisted_partials(partials, cfg.mirrors)
    failures = []
    for mirror in cfg.mirrors:
        try:
            with artifacts.atomic_dir(out) as staging:
                partial = partial_path(partials, mirror)
                metrics = _from_mirror(mirror, cfg, partial, staging, http, limits)
        except MIRROR_ERRORS as err:
            log.warning("mirror %s failed: %s", mirror, err)
            failures.append(f"  {mirror}: {err}")
            continue
        shutil.rmtree(partials, ignore_errors=True)
        log.info(
            "wrote %d files (%d bytes) to %s",
            len(metrics["files"]),
            sum(metrics["files"].values()),
            out,
        )
        return metrics
    resume = f"\n(partial downloads in {partials} are resumed by the next run)"
    raise UserError(
        f"{out.name}: none of the {len(failures)} mirrors passed; fix `mirrors` in the params "
        "file or add a local copy of the archive as a mirror:\n"
        + "\n".join(failures)
        + (resume if partials.is_dir() else "")
    )


def _drop_unlisted_partials(partials: Path, mirrors: tuple[str, ...]) -> None:
    """Delete the partial downloads of mirrors that the params no longer list."""
    if not partials.is_dir():
        return
    listed = {partial_path(partials, mirror) for mirror in mirrors}
    for path in partials.iterdir():
        if path not in listed:
            log.info("removing %s, a partial download from a mirror no longer listed", path)
            path.unlink()


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
    mirror: str,
    cfg: DownloadConfig,
    partial: Path,
    staging: Path,
    http: HttpPolicy,
    limits: ArchiveLimits,
) -> dict:
    """Obtain, verify and extract one mirror's archive into `staging`; return the metrics.

    A downloaded archive that fails a check is deleted, never resumed. When it was stitched
    together from more than one response (resumed from an earlier attempt or run), the bytes kept
    from before may be what is wrong, so it is downloaded once more from the start.
    """
    log.info("trying mirror %s", mirror)
    for last_try in (False, True):
        archive, stitched = _obtain(mirror, partial, http)
        try:
            sha1 = _check_archive(archive, cfg)
            sizes = archives.extract(archive, cfg.files, staging, limits)
            return {
                "mirror": mirror,
                "archive_bytes": archive.stat().st_size,
                "archive_sha1": sha1,
                "files": sizes,
            }
        except ArchiveError as err:
            if archive != partial:  # a local copy: nothing to download again
                raise
            partial.unlink(missing_ok=True)
            if last_try or not stitched:
                raise
            log.warning(
                "%s: %s; the archive was resumed from an earlier partial download, which may "
                "be what is wrong: downloading it again from the start",
                mirror,
                err,
            )
            for path in staging.iterdir():
                path.unlink()
    raise AssertionError("unreachable")


def _check_archive(archive: Path, cfg: DownloadConfig) -> str:
    """Return the SHA-1 of a zip that matches `cfg.sha1` or may still pass on its members."""
    archives.require_zip(archive)
    sha1 = artifacts.sha1_of_file(archive)
    if cfg.sha1 is None or sha1 == cfg.sha1.lower():
        return sha1
    if None in cfg.files.values():
        raise ArchiveError(f"archive SHA-1 {sha1} != expected {cfg.sha1}")
    log.info(
        "archive SHA-1 %s != %s: a repackaged copy passes if every member matches", sha1, cfg.sha1
    )
    return sha1


def _obtain(mirror: str, partial: Path, http: HttpPolicy) -> tuple[Path, bool]:
    """The archive's path, and whether it was stitched from several responses: downloaded to
    `partial` for http(s), else the local file itself (never stitched)."""
    url = urllib.parse.urlsplit(mirror)
    scheme = url.scheme.lower()
    if scheme in ("http", "https"):
        partial.parent.mkdir(parents=True, exist_ok=True)
        return partial, transfer.download(mirror, partial, http) > 0
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
    return path, False
