"""Tests for bertpipe.checkpoints: loading and the checks that name the problem."""

from __future__ import annotations

import pytest

from bertpipe import artifacts, checkpoints, routes
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
        routes.load_classifier(tmp_path / "bert.safetensors")
    with pytest.raises(UserError, match="no such checkpoint"):
        checkpoints.load_bert(tmp_path / "missing.safetensors")


def test_check_snli_fits_reads_the_hf_routes_header():
    """transformers' BertConfig names its positions max_position_embeddings; the ids' identity
    is the tokenizer's (tokenizer.json's SHA-1)."""
    meta = checkpoints.hf_bert_meta({"vocab_size": 30, "max_position_embeddings": 16}, "a" * 40)
    assert checkpoints.is_transformers(meta) and checkpoints.max_position(meta) == 16
    snli = {"vocab_sha1": "a" * 40, "max_len": 16}
    checkpoints.check_snli_fits(snli, "snli", meta, "ckpt")
    with pytest.raises(
        UserError,
        match="tokenised with vocabulary bbbbbbbbbb, but ckpt was trained with tokenizer aaa",
    ):
        checkpoints.check_snli_fits({**snli, "vocab_sha1": "b" * 40}, "snli", meta, "ckpt")
    with pytest.raises(UserError, match="max_len 17 exceeds"):
        checkpoints.check_snli_fits({**snli, "max_len": 17}, "snli", meta, "ckpt")
