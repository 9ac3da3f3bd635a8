"""Tests for bertpipe.curves: DVCLive curves."""

from __future__ import annotations

import subprocess

from bertpipe import curves


def test_dvclive_curves_work_in_a_git_repository_without_commits(tmp_path, monkeypatch, fake):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)  # dvclive 3.49 fails here
    monkeypatch.chdir(tmp_path)
    with curves.open_live(tmp_path / "live") as live:
        live.step = 3
        live.log_metric("train/loss", 0.5)
    assert fake.curve(tmp_path / "live", "train/loss").tolist() == [[3.0, 0.5]]
    assert not (tmp_path / "dvc.yaml").exists()  # DVCLive never writes a dvc.yaml
