"""Tests for bertpipe.checkpoints: loading and the checks that name the problem."""

from __future__ import annotations

import pytest

from bertpipe import artifacts, checkpoints
from bertpipe.errors import UserError


def test_checkpoint_checks_name_the_problem(tmp_path, fake):
    _, meta = checkpoints.load_bert(fake.bert(tmp_path / "bert.safetensors"))
    good = artifacts.read_json(fake.snli(tmp_path / "a", {"train": 3}) / "meta.json")
    checkpoints.check_snli_fits(good, "snli", meta, "ckpt")
    with pytest.raises(UserError, match="vocabulary"):
        checkpoints.check_snli_fits({**good, "vocab_sha1": "f" * 40}, "snli", meta, "ckpt")
    with pytest.raises(UserError, match="max_len 41 exceeds"):
        checkpoints.check_snli_fits({**good, "max_len": 41}, "snli", meta, "ckpt")
    with pytest.raises(UserError, match="expected a 'classifier' checkpoint"):
        checkpoints.load_classifier(tmp_path / "bert.safetensors")
    with pytest.raises(UserError, match="no such checkpoint"):
        checkpoints.load_bert(tmp_path / "missing.safetensors")
