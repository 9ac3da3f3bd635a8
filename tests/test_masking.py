"""Dynamic masking: new masks every epoch, by make_examples' rule, independent of batching."""

from __future__ import annotations

import numpy as np
import pytest
from test_make_examples import MASK_ID, SEP_ID, VOCAB, V, cfg, predicted, random_corpus, restored

from bertpipe import batches, make_examples
from bertpipe.masking import DynamicMasks, Specials
from bertpipe.pretrain import Collate

SPECIALS = Specials(VOCAB.cls_id, VOCAB.sep_id, VOCAB.mask_id, V)


@pytest.fixture(scope="module")
def examples() -> dict[str, np.ndarray]:
    """About 6,000 statically masked examples of up to 43 tokens (25,000 slots)."""
    corpus = random_corpus(seed=3, paragraphs=2001, longest=20)
    return make_examples.make_examples(corpus, VOCAB, cfg(max_len=43, seed=4))


def everything(ex: dict[str, np.ndarray], epoch: int, seed: int = 0) -> dict[str, np.ndarray]:
    return DynamicMasks(seed, SPECIALS).remask(ex, np.arange(len(ex["nsp_labels"])), epoch)


def test_dynamic_masks_keep_the_tokens_slot_counts_and_rule_of_the_static_ones(examples):
    remasked = everything(examples, epoch=0)
    assert np.array_equal(restored(remasked), restored(examples))  # the same original text
    for name in ("segments", "valid_lens", "nsp_labels"):
        assert np.array_equal(remasked[name], examples[name])
    assert np.array_equal(remasked["mlm_weights"].sum(1), examples["mlm_weights"].sum(1))
    real = remasked["mlm_weights"] > 0
    assert (remasked["pred_positions"][~real] == 0).all()  # padding slots as make_examples'
    changed_rows, _ = np.nonzero(remasked["token_ids"] != restored(remasked))
    assert set(changed_rows.tolist()) <= set(np.nonzero(real)[0].tolist())  # only at slots
    got, labels = predicted(remasked)
    assert not np.isin(labels, [VOCAB.cls_id, SEP_ID]).any()
    # 80/10/10: a random replacement can itself be <mask> or the original id (1/37 each)
    masked, kept = got == MASK_ID, got == labels
    assert masked.mean() == pytest.approx(0.8 + 0.1 / V, abs=0.012)
    assert kept.mean() == pytest.approx(0.1 + 0.1 / V, abs=0.01)
    assert (~masked & ~kept).mean() == pytest.approx(0.1 * (V - 2) / V, abs=0.01)


def test_each_epoch_masks_anew_whatever_the_batches_ranks_or_order(examples):
    first, second = everything(examples, epoch=1), everything(examples, epoch=2)
    moved = (first["pred_positions"] != second["pred_positions"]).any(1)
    assert moved.mean() > 0.8  # new slots for most examples
    assert not np.array_equal(everything(examples, 1, seed=1)["token_ids"], first["token_ids"])
    # The same (seed, epoch, example) gives the same masks in any batch, in any order, on any
    # rank, and after another epoch was drawn (a resumed run starts anywhere).
    masks = DynamicMasks(0, SPECIALS)
    masks.remask(examples, np.arange(5), epoch=7)
    order = np.random.default_rng(0).permutation(len(examples["nsp_labels"]))
    for idx in np.array_split(order, 9):
        batch = masks.remask(examples, idx, epoch=1)
        for name, array in batch.items():
            assert np.array_equal(array, first[name][idx]), name


def test_ranks_share_out_the_dynamically_masked_batch_of_one_process(examples):
    batch = batches.EpochBatch(3, np.array([40, 7, 19, 3, 11]))
    collate = Collate(DynamicMasks(0, SPECIALS))
    whole = collate(examples, batch, batches.Part())
    parts = [collate(examples, batch, batches.Part(rank, 2)) for rank in (0, 1)]
    for name in ("tokens", "slot_labels"):  # the same masked members, split between the ranks
        shared = np.concatenate([p[name].numpy() for p in parts])
        assert np.array_equal(np.sort(shared), np.sort(whole[name].numpy())), name
    assert all(p["num_slots"] == whole["num_slots"] for p in parts)  # the whole batch's
