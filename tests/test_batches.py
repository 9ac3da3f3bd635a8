"""Tests for bertpipe.batches: plans, packed and padded batches, rank slices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bertpipe import batches, checkpoints
from bertpipe.model import BERTClassifier


def test_collate_examples_packs_real_positions_in_order_of_length(tmp_path, fake):
    ex, _ = batches.load_examples(fake.examples(tmp_path / "ex", n=40, max_len=20))
    idx = np.array([7, 3, 30, 12, 5, 21])
    b = batches.collate_examples(ex, idx)
    lens = ex["valid_lens"][idx].astype(int)
    order = np.argsort(lens, kind="stable")
    sorted_idx, sorted_lens = idx[order], lens[order]
    assert b["tokens"].dtype == torch.int64 and b["slot_weights"].dtype == torch.float32
    # every real position once, example by example (shortest first), and nothing else
    pairs = list(zip(sorted_idx, sorted_lens, strict=True))
    tokens = np.concatenate([ex["token_ids"][i, :n] for i, n in pairs])
    segments = np.concatenate([ex["segments"][i, :n] for i, n in pairs])
    assert b["tokens"].tolist() == tokens.tolist() and b["segments"].tolist() == segments.tolist()
    assert b["packing"].valid_lens.tolist() == sorted_lens.tolist()
    assert b["nsp_labels"].tolist() == ex["nsp_labels"][sorted_idx].tolist()
    starts = np.cumsum(sorted_lens) - sorted_lens
    assert b["cls_rows"].tolist() == starts.tolist()
    assert (b["tokens"][b["cls_rows"]] == 3).all()  # <cls>
    # the real slots, in order: their rows hold the predicted positions of their examples
    slots = [(int(s + p), int(y), float(w))
             for i, s in zip(sorted_idx, starts, strict=True)
             for p, y, w in zip(ex["pred_positions"][i], ex["mlm_labels"][i], ex["mlm_weights"][i],
                                strict=True)
             if w > 0]  # fmt: skip
    got = [b["slot_rows"].tolist(), b["slot_labels"].tolist(), b["slot_weights"].tolist()]
    assert list(zip(*got, strict=True)) == slots
    assert len(slots) < ex["mlm_weights"][idx].size  # some slots were padding


def test_collate_snli_builds_cls_p_sep_h_sep_with_segments_and_padding(tmp_path, fake):
    pairs = [([7, 8, 9], [10, 11]), ([12], [13, 14, 15, 16]), ([17, 18], [19])]
    snli = fake.snli_arrays(pairs, np.array([2, 0, 1], np.uint8))
    b = batches.collate_snli(snli, np.array([2, 0]))
    assert b["tokens"].tolist() == [[3, 17, 18, 4, 19, 4, 0, 0], [3, 7, 8, 9, 4, 10, 11, 4]]
    assert b["segments"].tolist() == [[0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1, 1, 1]]
    assert b["valid_lens"].tolist() == [6, 8] and b["labels"].tolist() == [1, 2]
    assert b["index"].tolist() == [2, 0] and b["tokens"].dtype == torch.int64


def test_padding_a_batch_to_its_longest_member_does_not_change_predictions(tmp_path, fake):
    snli = batches.load_snli_split(fake.snli(tmp_path / "snli", {"test": 20}), "test")
    model = BERTClassifier(
        checkpoints.load_bert(fake.bert(tmp_path / "bert.safetensors"))[0]
    ).eval()

    def logits(idx: np.ndarray) -> torch.Tensor:
        b = batches.collate_snli(snli, idx)
        return model(b["tokens"], b["segments"], b["valid_lens"])

    together = logits(np.arange(20))  # padded to the longest of the 20
    alone = torch.cat([logits(np.array([i])) for i in range(20)])  # no padding at all
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_length_buckets_cover_every_example_once_seeded_and_reshuffled():
    lengths = np.random.default_rng(0).integers(5, 60, 1037)

    def epochs(seed: int) -> list[list[np.ndarray]]:
        gen = torch.Generator().manual_seed(seed)
        return [batches.length_buckets(lengths, 16, gen) for _ in range(2)]

    first, second = epochs(3)
    for epoch in (first, second):
        assert np.array_equal(np.sort(np.concatenate(epoch)), np.arange(1037))
        assert sum(len(b) < 16 for b in epoch) == 1  # only one short batch
    assert [b.tolist() for b in epochs(3)[0]] == [b.tolist() for b in first]
    assert [b.tolist() for b in first] != [b.tolist() for b in second]
    spread = np.mean([np.ptp(lengths[b]) for b in first])
    assert spread < 0.25 * np.ptp(lengths)  # similar lengths share a batch: little padding


def test_pretraining_plan_cycles_through_shuffled_epochs():
    plan = [b.idx for b in batches.pretraining_plan(10, 4, 7, torch.Generator().manual_seed(0))]
    assert [len(b) for b in plan] == [4, 4, 2, 4, 4, 2, 4]
    assert np.array_equal(np.sort(np.concatenate(plan[:3])), np.arange(10))
    assert np.array_equal(np.sort(np.concatenate(plan[3:6])), np.arange(10))
    assert not np.array_equal(np.concatenate(plan[:3]), np.concatenate(plan[3:6]))


@pytest.mark.parametrize(("n", "batch_size"), [(10, 4), (8, 4), (3, 4)])
def test_the_plan_numbers_each_batch_with_its_epoch(n, batch_size):
    plan = batches.pretraining_plan(n, batch_size, 11, torch.Generator().manual_seed(0))
    epochs = [b.epoch for b in plan]
    assert epochs == sorted(epochs) and epochs[0] == 0
    assert set(epochs) == set(range(epochs[-1] + 1))  # no epoch skipped
    for epoch in range(plan[-1].epoch):  # every epoch but the last (cut short) is whole
        members = np.concatenate([b.idx for b in plan if b.epoch == epoch])
        assert np.array_equal(np.sort(members), np.arange(n))


def test_ranks_take_disjoint_slices_of_every_batch_and_never_drop_one(fake, tmp_path):
    snli = batches.load_snli_split(fake.snli(tmp_path / "snli", {"test": 12}), "test")
    for idx in (np.arange(8), np.arange(8, 11), np.array([11])):
        parts = [batches.collate_snli(snli, idx, batches.Part(r, 2)) for r in (0, 1)]
        members = [p["index"][p["weights"] > 0].tolist() for p in parts]
        assert sorted(members[0] + members[1]) == idx.tolist()  # every member, once
        assert all(p["num_examples"].item() == len(idx) for p in parts)  # the whole batch's
    # a 1-member batch: rank 1 stands in with that member at weight 0, so it still steps
    assert parts[1]["index"].tolist() == [11] and parts[1]["weights"].tolist() == [0.0]
