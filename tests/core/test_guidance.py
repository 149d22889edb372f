import pytest
import torch
from helpers import make_batch as shared_batch

from npo_lab.core.guidance import group_accuracy, guide_gate, merge_guides


def make_batch(rewards, group_ids, t=3, tag=0.0):
    """Rows whose behaviour log-probs and extras carry ``tag``, so a merged row shows where it came from."""
    return shared_batch(rewards, group_ids, t, behavior=tag, extras=[("row", tag, i) for i in range(len(rewards))])


def test_gate_is_at_most_the_threshold_as_in_the_paper_or_strictly_below():
    acc = torch.tensor([0.0, 0.59, 0.6, 0.61, 1.0])
    assert guide_gate(acc, 0.6).tolist() == [True, True, True, False, False]  # p-hat <= 0.6 (the paper)
    assert guide_gate(acc, 0.6, op="lt").tolist() == [True, True, False, False, False]  # the authors' code: <
    assert guide_gate(torch.tensor([0.0, 1.0]), 0.0).tolist() == [True, False]
    assert guide_gate(torch.tensor([0.0, 1.0]), 0.0, op="lt").tolist() == [False, False]
    with pytest.raises(ValueError, match="op must be one of"):
        guide_gate(acc, 0.6, op="<=")


def test_group_accuracy():
    acc = group_accuracy(torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0]), torch.tensor([3, 3, 3, 4, 4, 4]))
    assert acc == {3: pytest.approx(1 / 3), 4: 1.0}


def test_merge_replaces_exactly_k_slots_in_gated_groups_with_correct_rows():
    # 3 groups of 4; groups 10 and 11 gated, 12 not
    on = make_batch([0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1, 0], [10] * 4 + [11] * 4 + [12] * 4, tag=0.0)
    # guide candidates: for 10 a wrong then a correct row, for 11 two correct rows, for 12 a correct row
    guides = make_batch([0, 1, 1, 1, 1], [10, 10, 11, 11, 12], t=5, tag=-1.0)
    merged, m = merge_guides(on, guides, gated=[10, 11], k=1)
    assert merged.size == on.size
    assert merged.group_ids.tolist() == on.group_ids.tolist()
    assert merged.is_guide.tolist() == [False, False, False, True] + [False, False, False, True] + [False] * 4
    assert merged.mask.shape[1] == 5  # padded to the longer guide rows
    # only verified-correct guide rows went in, and the wrong candidate (guide index 0) never did
    assert (merged.rewards[merged.is_guide] == 1).all()
    assert merged.extras[3] == ("row", -1.0, 1) and merged.extras[7] == ("row", -1.0, 2)
    # ungated group untouched
    assert merged.extras[8:] == on.extras[8:]
    assert m["guide/gated_frac"] == pytest.approx(2 / 3) and m["guide/injected_frac"] == pytest.approx(2 / 3)
    assert m["guide/rows"] == 2.0 and m["guide/replaced_correct"] == 1.0  # group 10's last slot was correct


def test_merge_k2_and_incorrect_first():
    on = make_batch([1, 0, 1, 0, 0, 1], [7] * 6)
    guides = make_batch([1, 1, 1], [7, 7, 7], tag=-1.0)
    merged, m = merge_guides(on, guides, gated=[7], k=2, slot="incorrect_first")
    assert merged.is_guide.sum().item() == 2
    # wrong rows are replaced first, from the end: indices 4 and 3
    assert merged.is_guide.tolist() == [False, False, False, True, True, False]
    assert m["guide/replaced_correct"] == 0.0


def test_group_without_enough_correct_guides_stays_on_policy():
    on = make_batch([0, 0, 0, 0], [1] * 4)
    merged, m = merge_guides(on, make_batch([0, 0, 1], [1, 1, 1], tag=-1.0), gated=[1], k=2)
    assert not merged.is_guide.any() and merged.extras == on.extras
    assert m["guide/found_frac"] == 0.0


def test_merge_rejects_bad_k_and_slot():
    on = make_batch([0, 0], [1, 1])
    g = make_batch([1, 1], [1, 1])
    with pytest.raises(ValueError, match="every row"):
        merge_guides(on, g, [1], k=2)
    with pytest.raises(ValueError, match="guide slots per group"):
        merge_guides(on, g, [1], k=0)
    with pytest.raises(ValueError, match="slot"):
        merge_guides(on, g, [1], slot="first")


def test_unused_longer_guide_candidates_do_not_widen_the_batch():
    on = make_batch([0, 0, 0, 0], [1] * 4, t=3)
    guides = make_batch([0, 0], [1, 1], t=7, tag=-1.0)  # long but wrong: never used
    merged, _ = merge_guides(on, guides, gated=[1], k=1)
    assert merged.mask.shape[1] == 3
