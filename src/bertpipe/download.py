"""Fetch a zip archive from the first mirror that passes its SHA-1 checks; extract chosen members.

d2l saved whatever a server answered under the zip's name and never checked it, so a dead mirror
surfaced later as a `BadZipFile` (d2l issue #2588). Here the mirrors are tried in order. An HTTP
mirror is streamed with retries, exponential backoff and Range resume into a partial file beside
the output (`.<out>.partial/`), which outlives a killed or failed run so that the next run
resumes it; a `file://` URL or a plain path is read in place (for users behind a firewall).
No mirror can hold a run for ever: an attempt whose body arrives slower than a curl-style
low-speed limit is abandoned, and a mirror whose attempts keep stalling is given up (see
`HttpPolicy`). A mirror passes when the archive's SHA-1 matches `sha1`, or, for mirrors that
repackage the data, when every listed member has a SHA-1 and all of them match. Members are found
by basename anywhere in the archive and streamed flat into the output folder, which appears only
once everything passed; what they may unpack to is bounded before anything is written
(`ArchiveLimits`), and no member is written past the size its header declares.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import re
import shutil
import socket
import threading
import time
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import requests
import urllib3
from tqdm import tqdm

from bertpipe import __version__, artifacts
from bertpipe.config import DownloadConfig
from bertpipe.errors import UserError

log = logging.getLogger(__name__)

USER_AGENT = f"bertpipe/{__version__} (+python-requests)"  # some hosts refuse default client UAs
CHUNK = 1 << 16  # most bytes per read and per write while streaming
SHA1_RE = re.compile(r"[0-9a-fA-F]{40}")
# zipfile's ways of saying an archive is damaged (bad CRC, truncated) or needs what it lacks
# (a password, an unsupported compression method).
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, RuntimeError)


@dataclass(frozen=True)
class HttpPolicy:
    """How hard to try one HTTP mirror before moving on to the next.

    An attempt is abandoned as "too slow" when fewer than `low_speed_bytes * low_speed_time_s`
    body bytes arrived in the last `low_speed_time_s` seconds, counted from the attempt's start
    (checked every min(1, low_speed_time_s / 10) s): a server that never answers, or answers a
    byte at a time, headers included, ends there. So does a connection that goes silent for
    `read_timeout_s`, or takes longer than `connect_timeout_s` to open. Such a stall counts as an
    attempt, and the mirror is given up after `stall_attempts` of them, or after `attempts` in all.
    A transfer that keeps above the limit is never cut short, however long it takes.

    With the defaults, a mirror that never answers, or trickles, is given up after 2 attempts
    of at most 31 s and a 1 s wait: within 63 s. One that never reaches 1 KiB/s in any way is
    given up within 5 attempts of at most 31 s and 15 s of waits: 170 s.
    """

    attempts: int = 5  # requests per mirror, the first one included
    stall_attempts: int = 2  # of those, how many may end too slow before the mirror is given up
    backoff_s: float = 1.0  # the wait before retry k is backoff_s * 2**(k-1)
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0  # the longest silence of the connection
    low_speed_bytes: int = 1024  # bytes per second (0: no low-speed limit) ...
    low_speed_time_s: float = 30.0  # ... averaged over this many seconds


DEFAULT_HTTP = HttpPolicy()


@dataclass(frozen=True)
class ArchiveLimits:
    """What the wanted members of an archive may unpack to, by the sizes their headers declare.

    Checked before anything is extracted; no member is then written past its declared size.
    """

    max_ratio: float = 64.0  # declared total / archive size (text zips are ~3-11x)
    max_bytes: int = 16 << 30  # declared total


DEFAULT_LIMITS = ArchiveLimits()


class MirrorError(Exception):
    """This mirror cannot be used; the message says why. The next mirror is tried."""


class _Transient(Exception):
    """A failure worth retrying: connection trouble, HTTP 429 or 5xx, a body cut short."""


class _Stalled(_Transient):
    """An attempt that timed out or fell below the low-speed limit."""


def partial_path(out: str | Path, mirror: str) -> Path:
    """Where the download of `mirror` for output folder `out` is kept until it passes."""
    key = hashlib.sha1(mirror.encode("utf-8")).hexdigest()[:16]
    return _partials(Path(out)) / f"{key}.zip.part"


def _partials(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def fetch(
    cfg: DownloadConfig,
    out: str | Path,
    http: HttpPolicy = DEFAULT_HTTP,
    limits: ArchiveLimits = DEFAULT_LIMITS,
) -> dict:
    """Fill folder `out` with the members named in `cfg.files`, from the first mirror that passes.

    Returns the metrics: the mirror used, the archive's size and SHA-1, and each file's size.
    Raises UserError naming every mirror and why it failed; `out` is then left as it was, and
    interrupted downloads stay in `.<out>.partial/` for the next run to resume.
    """
    out = Path(out)
    _check_config(cfg, out.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out, cfg.mirrors)
    failures = []
    for mirror in cfg.mirrors:
        try:
            with artifacts.atomic_dir(out) as staging:
                partial = partial_path(out, mirror)
                metrics = _from_mirror(mirror, cfg, partial, staging, http, limits)
        except MirrorError as err:
            log.warning("mirror %s failed: %s", mirror, err)
            failures.append(f"  {mirror}: {err}")
            continue
        shutil.rmtree(_partials(out), ignore_errors=True)
        log.info(
            "wrote %d files (%d bytes) to %s",
            len(metrics["files"]),
            sum(metrics["files"].values()),
            out,
        )
        return metrics
    kept = _partials(out)
    resume = f"\n(partial downloads in {kept} are resumed by the next run)" if kept.is_dir() else ""
    raise UserError(
        f"{out.name}: none of the {len(failures)} mirrors passed; fix `mirrors` in the params "
        "file or add a local copy of the archive as a mirror:\n" + "\n".join(failures) + resume
    )


def _remove_leftovers(out: Path, mirrors: tuple[str, ...]) -> None:
    """Delete what a killed earlier run left beside `out` (besides `artifacts.atomic_dir`'s
    temporary folders, which it removes itself): the work folders of bertpipe versions that
    downloaded into a temporary folder (`.<out>.<8 characters>`), and partial downloads of
    mirrors that are no longer listed."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.[a-z0-9_]{{8}}")
    partials = _partials(out)
    for path in out.parent.iterdir():
        if pattern.fullmatch(path.name) and path != partials:
            log.info("removing %s, left by an earlier run", path)
            _remove(path)
    if partials.is_dir():
        listed = {partial_path(out, mirror).name for mirror in mirrors}
        for path in partials.iterdir():
            if path.name not in listed:
                log.info("removing %s, a partial download from a mirror no longer listed", path)
                _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


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
            sizes = _extract(archive, cfg.files, staging, limits)
            return {
                "mirror": mirror,
                "archive_bytes": archive.stat().st_size,
                "archive_sha1": sha1,
                "files": sizes,
            }
        except MirrorError as err:
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


def _obtain(mirror: str, partial: Path, http: HttpPolicy) -> tuple[Path, bool]:
    """The archive's path, and whether it was stitched from several responses: downloaded to
    `partial` for http(s), else the local file itself (never stitched)."""
    url = urllib.parse.urlsplit(mirror)
    scheme = url.scheme.lower()
    if scheme in ("http", "https"):
        partial.parent.mkdir(parents=True, exist_ok=True)
        return partial, _download(mirror, partial, http) > 0
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


def _download(url: str, dest: Path, http: HttpPolicy) -> int:
    """Complete `dest` from `url`, resuming what is there, retrying transient failures.

    Returns the offset at which the last response's body went into `dest` (0: that one response
    holds the whole file). On failure `dest` keeps what arrived, for the next run to resume.
    """
    have = dest.stat().st_size if dest.exists() else 0
    if have:
        log.info("%s: resuming the %d bytes an earlier run saved in %s", url, have, dest)
    stalls = 0
    for attempt in range(1, http.attempts + 1):
        try:
            return _stream(url, dest, http)
        except _Transient as err:
            stalls += isinstance(err, _Stalled)
            tried = f"{attempt} attempt{'s' if attempt > 1 else ''}"
            if isinstance(err, _Stalled) and stalls >= http.stall_attempts:
                raise MirrorError(f"{err} (gave up after {tried}, {stalls} too slow)") from None
            if attempt == http.attempts:
                raise MirrorError(f"{err} (gave up after {tried})") from None
            delay = http.backoff_s * 2 ** (attempt - 1)
            log.warning(
                "%s: %s; retry %d of %d in %.2g s", url, err, attempt, http.attempts - 1, delay
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def _stream(url: str, dest: Path, http: HttpPolicy) -> int:
    """One GET under a watchdog: resume with a Range request when part of the file is there,
    else start over. Returns the offset the body was written at."""
    have = dest.stat().st_size if dest.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    timeout = (http.connect_timeout_s, http.read_timeout_s)
    dog = _Watchdog(http)
    try:
        # A session per attempt: its connections are new, so the watchdog sees their sockets.
        with (
            _session() as session,
            dog,
            session.get(url, headers=headers, stream=True, timeout=timeout) as r,
        ):
            dog.answered = True
            if r.status_code == 429 or r.status_code >= 500:
                raise _Transient(f"HTTP {r.status_code} {r.reason}")
            if r.status_code == 416 and have:
                if _complete_size(r) == have:  # a run was killed after the last byte
                    log.info("%s: the partial download is already complete", url)
                    return have
                dest.unlink()
                raise _Transient("HTTP 416 for a resumed download; starting over")
            if r.status_code not in (200, 206):
                raise MirrorError(f"HTTP {r.status_code} {r.reason}")
            offset = _resume_offset(r, have)
            _save_body(r, dest, offset, dog)
            return offset
    except requests.RequestException as err:
        if dog.reason:  # the watchdog ended it; what the connection said then is beside the point
            raise _Stalled(dog.reason) from None
        if isinstance(err, requests.exceptions.SSLError):  # a certificate will not fix itself
            raise MirrorError(_describe(err)) from None
        if isinstance(err, (requests.ConnectTimeout, requests.ReadTimeout)):
            raise _Stalled(_describe(err)) from None
        if isinstance(err, (requests.ConnectionError, requests.Timeout)):
            raise _Transient(_describe(err)) from None
        raise MirrorError(_describe(err)) from None


def _describe(err: Exception) -> str:
    """requests' message without urllib3's pool and object reprs, e.g. '[Errno 111] ...'."""
    text = str(err)
    errno = re.search(r"\[Errno -?\d+\][^'\")]*", text)
    detail = errno[0] if errno else re.sub(r"^HTTPS?ConnectionPool\([^)]*\): ", "", text)
    return f"{type(err).__name__}: {detail}"


def _complete_size(r: requests.Response) -> int | None:
    """The full size a 416 response states (`Content-Range: bytes */N`), if it does."""
    match = re.fullmatch(r"bytes \*/(\d+)", r.headers.get("Content-Range", "").strip())
    return int(match[1]) if match else None


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


def _save_body(r: requests.Response, dest: Path, offset: int, dog: _Watchdog) -> None:
    """Write the body at `offset` of `dest` as it arrives; a short body is transient (the next
    try resumes), a stalled one too (`_Stalled`)."""
    length = r.headers.get("Content-Length")
    expected = offset + int(length) if length and length.isdigit() else None
    name = urllib.parse.urlsplit(r.url).path.rsplit("/", 1)[-1]
    bar = _progress(f"download {name}", expected, initial=offset)
    # read1 returns what has arrived (up to CHUNK) instead of waiting for a full chunk, so the
    # watchdog counts bytes as they come. urllib3 1.x lacks it: small reads count nearly as well.
    read = getattr(r.raw, "read1", None) or (lambda _: r.raw.read(1024))
    error = None
    with open(dest, "ab" if offset else "wb") as f, bar:
        try:
            while chunk := read(CHUNK):
                f.write(chunk)
                dog.received += len(chunk)
                bar.update(len(chunk))
                if dog.reason:  # it could not reach the socket (e.g. behind a SOCKS proxy)
                    break
        except urllib3.exceptions.HTTPError as err:  # timeouts, resets, a body cut short
            error = err
        size = f.tell()
    if expected is not None and size == expected:
        return
    if dog.reason:
        raise _Stalled(dog.reason)
    if isinstance(error, urllib3.exceptions.ReadTimeoutError):
        raise _Stalled(_describe(error))
    if error is not None or expected is not None:
        raise _Transient(f"connection closed after {size} of {expected or 'unknown'} bytes")


def _session() -> requests.Session:
    session = requests.Session()
    adapter = _WatchedAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    # identity: Content-Length and Range then count the bytes we store.
    session.headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    return session


_watched = threading.local()  # .dog: the _Watchdog of the attempt running in this thread


class _Watchdog:
    """Ends an attempt that falls below the policy's low-speed limit (see `HttpPolicy`).

    It runs in its own thread, so it acts while the attempt is blocked in a read, and it counts
    from the attempt's start, so a server that sends no body (no answer, or headers a byte at a
    time) is ended too. It ends an attempt by shutting down the socket of each connection opened
    during the attempt (`_WatchedConnection`), which makes the blocked read fail at once.
    """

    def __init__(self, http: HttpPolicy):
        self.window = http.low_speed_time_s
        self.limit = http.low_speed_bytes
        self.received = 0  # body bytes so far, counted by the reading thread
        self.answered = False  # whether response headers arrived
        self.reason: str | None = None  # why it ended the attempt; None while it has not
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="download-watchdog", daemon=True)

    def __enter__(self) -> _Watchdog:
        _watched.dog = self
        if self.limit > 0 and self.window > 0:  # else the limit is off
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        _watched.dog = None
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def watch(self, sock: socket.socket) -> None:
        """Called with each new connection's socket."""
        with self._lock:
            self._sockets.append(sock)
            if self.reason:
                self._shut_down()

    def _run(self) -> None:
        start = time.monotonic()
        samples = collections.deque([(start, 0)])  # (time, bytes received by then)
        while not self._done.wait(min(1.0, self.window / 10)):
            now, received = time.monotonic(), self.received
            samples.append((now, received))
            while samples[1][0] <= now - self.window:  # keep one sample at or before the window
                samples.popleft()
            since, before = samples[0]
            if now - start < self.window or received - before >= self.limit * self.window:
                continue
            if self.answered:
                reason = (
                    f"too slow: {received - before} bytes in {now - since:.3g} s, below "
                    f"{self.limit} bytes/s over {self.window:g} s"
                )
            else:
                reason = f"too slow: no response in {now - start:.3g} s"
            with self._lock:
                self.reason = reason
                self._shut_down()
            return

    def _shut_down(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):  # already closed
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # under TLS too: the same fd


class _WatchedConnection:
    """Mixed into urllib3's connections: hands each new socket to the attempt's watchdog, as
    soon as it is connected (before a TLS handshake or a proxy tunnel)."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        dog = getattr(_watched, "dog", None)
        if dog is not None:
            dog.watch(sock)
        return sock


class _HTTPConnection(_WatchedConnection, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_WatchedConnection, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _WatchedAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter with connections that report their sockets to the watchdog, direct or
    through an HTTP(S) proxy (a SOCKS proxy keeps its own connections)."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if manager.pool_classes_by_scheme is urllib3.poolmanager.pool_classes_by_scheme:
            manager.pool_classes_by_scheme = _POOLS
        return manager


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


def _extract(
    archive: Path, files: dict[str, str | None], dest: Path, limits: ArchiveLimits
) -> dict[str, int]:
    """Stream each wanted member into `dest/<basename>`, checking SHA-1s; return their sizes.

    Refuses, before writing anything, members that declare more than `limits` allow.
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            members = _find_members(zf, files)
            total = sum(info.file_size for info in members.values())
            _check_limits(total, archive.stat().st_size, limits)
            with _progress("extract", total) as bar:
                return {
                    name: _extract_one(zf, info, dest / name, files[name], bar)
                    for name, info in members.items()
                }
    except ZIP_ERRORS as err:
        raise MirrorError(f"damaged or unreadable zip archive: {err}") from None


def _check_limits(total: int, archive_bytes: int, limits: ArchiveLimits) -> None:
    if total > limits.max_bytes:
        raise MirrorError(
            f"refused before extracting: the wanted members would unpack to {total:,} bytes, "
            f"more than the limit of {limits.max_bytes:,} bytes"
        )
    if total > limits.max_ratio * archive_bytes:
        raise MirrorError(
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
    """Copy one member to `target` in chunks (never whole in memory); return its size.

    Reads stop at the size the header declares (zipfile stops there too): a member whose data is
    longer than declared is cut there and then fails zipfile's CRC-32 check.
    """
    digest, size = hashlib.sha1(), 0
    try:
        with zf.open(info) as src, open(target, "wb") as dst:
            while chunk := src.read(min(CHUNK, info.file_size - size + 1)):
                size += len(chunk)
                if size > info.file_size:
                    raise MirrorError(
                        f"member {info.filename!r} holds more than the {info.file_size:,} bytes "
                        "its header declares"
                    )
                digest.update(chunk)
                dst.write(chunk)
                bar.update(len(chunk))
    except zipfile.BadZipFile as err:
        raise MirrorError(
            f"member {info.filename!r} does not match its header ({err}): a damaged or crafted "
            "archive"
        ) from None
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
