"""Tests for the baseline stage: a bag-of-words logistic regression on the SNLI splits."""

from __future__ import annotations

import pytest
import yaml

from bertpipe import artifacts, synthetic
from bertpipe.errors import UserError


@pytest.fixture
def tables(tmp_path):
    """A download_snli folder of generated pairs (the small profile's NLI task)."""
    folder = tmp_path / "download_snli"
    folder.mkdir()
    for split, n in (("train", 600), ("test", 200), ("dev", 50)):
        rows = synthetic.snli_rows(n, seed=len(split))
        text = "".join("\t".join(row) + "\n" for row in rows)
        (folder / f"snli_1.0_{split}.txt").write_text(text, encoding="utf-8")
    return folder


def run_baseline(stage, tmp_path, tables, split="test", name="baseline.json") -> dict:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "baseline": {"l2": 3.0e-3, "min_count": 2}, "evaluate": {"batch_size": 8, "split": split},
    }))  # fmt: skip
    out = tmp_path / name
    stage("baseline").main(
        ["--params", str(params), "--tables", str(tables), "--metrics", str(out)]
    )
    return artifacts.read_json(out)


def test_the_baseline_learns_the_task_and_is_deterministic(stage, tmp_path, tables):
    first = run_baseline(stage, tmp_path, tables)
    assert first["split"] == "test" and first["num_train_pairs"] > 500
    assert first["accuracy"] > 0.6  # chance is 1/3; the generated task is lexical
    assert first["train_accuracy"] >= first["accuracy"] and 0 < first["macro_f1"] <= 1
    again = run_baseline(stage, tmp_path, tables, name="again.json")
    assert {k: v for k, v in again.items() if k != "seconds"} == {
        k: v for k, v in first.items() if k != "seconds"
    }


def test_the_split_comes_from_evaluate_and_must_exist(stage, tmp_path, tables):
    assert run_baseline(stage, tmp_path, tables, split="dev")["split"] == "dev"
    (tables / "snli_1.0_dev.txt").unlink()
    with pytest.raises(UserError, match=r"no 'dev' split for evaluate\.split"):
        run_baseline(stage, tmp_path, tables, split="dev")
