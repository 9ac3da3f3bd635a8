"""A scratch DVC workspace: the repository's files copied, generated data served on loopback.

`copy_repository` and `commit_all` make the workspace, `make_archives` and `serve` stand in for
the WikiText-2 and SNLI mirrors (`bertpipe.synthetic` writes the archives), `write_params` points
`params-small.yaml`'s download sections at them, and `dvc` runs DVC inside. `python -m
bertpipe.small`, the end-to-end tests (tests/test_pipeline.py) and benchmarks/run_pipeline.py
build their runs from these.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import yaml

from bertpipe import artifacts, synthetic


def copy_repository(repo: Path, workdir: Path) -> None:
    """Copy the files git knows of (tracked, or untracked but not ignored) into `workdir`."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo, check=True, capture_output=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = repo / name
        if source.is_file():
            (workdir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, workdir / name)


def commit_all(workdir: Path, message: str) -> None:
    """Make `workdir` a git repository with one commit (`dvc exp` and `params diff` need one)."""
    git = ["git", "-c", "user.name=bertpipe", "-c", "user.email=bertpipe@localhost"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", message]):
        subprocess.run(git + command, cwd=workdir, check=True, capture_output=True)


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """Serve `folder` over HTTP on a free loopback port; yield the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # a quiet server in tests and CI
        pass


def make_archives(folder: Path) -> dict[str, dict]:
    """Generate both archives into `folder`; return the download params sections for them."""
    wiki_files = synthetic.write_wikitext_archive(folder / "wikitext-2-v1.zip")
    synthetic.write_snli_archive(folder / "snli_1.0.zip")
    return {
        "download_wikitext": {
            "sha1": artifacts.sha1_of_file(folder / "wikitext-2-v1.zip"),
            "files": {name: artifacts.sha1_of_bytes(data) for name, data in wiki_files.items()},
        },
        "download_snli": {
            "sha1": artifacts.sha1_of_file(folder / "snli_1.0.zip"),
            "files": {f"snli_1.0_{split}.txt": None for split in ("train", "dev", "test")},
        },
    }


def write_params(workdir: Path, downloads: dict[str, dict], base_url: str) -> None:
    """`params-small.yaml` plus download sections pointing at the loopback server."""
    params = yaml.safe_load((workdir / "params-small.yaml").read_text(encoding="utf-8"))
    archives = {"download_wikitext": "wikitext-2-v1.zip", "download_snli": "snli_1.0.zip"}
    for section, archive in archives.items():
        mirrors = [f"{base_url}/missing/{archive}", f"{base_url}/{archive}"]
        params[section] = {"mirrors": mirrors, **downloads[section]}
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def dvc_env(workdir: Path) -> dict[str, str]:
    """The environment for DVC in `workdir`: this interpreter first on PATH (dvc.yaml runs
    `python`), and the workspace's own `src/` first on the import path, so its stages run the
    code DVC hashed there, not the code an editable install points at, which may be changing."""
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(workdir / "src"), env.get("PYTHONPATH")]))
    return env


def dvc(workdir: Path, *args: str, capture: bool = False) -> str:
    """Run `dvc <args>` in `workdir`; raise with DVC's output when it fails."""
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=workdir, env=dvc_env(workdir), text=True,
        capture_output=capture,
    )  # fmt: skip
    if result.returncode != 0:
        detail = f"\n{result.stdout}\n{result.stderr}" if capture else ""
        raise RuntimeError(f"dvc {' '.join(args)} failed with status {result.returncode}{detail}")
    return result.stdout if capture else ""
