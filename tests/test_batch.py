import pytest
import torch
from helpers import make_batch

from npo_lab.batch import RolloutBatch


def good(**over):
    kw = dict(
        behavior_logprobs=torch.zeros(2, 3),
        mask=torch.ones(2, 3),
        rewards=torch.zeros(2),
        group_ids=torch.tensor([0, 0]),
    )
    kw.update(over)
    return RolloutBatch.from_rows(**kw)  # every field given: the validation tests replace any of them


def test_the_shared_builder_makes_the_same_batch():
    a, b = good(), make_batch([0.0, 0.0], [0, 0], t=3)
    for name in ("behavior_logprobs", "mask", "rewards", "group_ids", "is_guide"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_from_rows_defaults():
    b = good()
    assert b.is_guide.dtype == torch.bool and not b.is_guide.any()
    assert b.extras == [None, None] and torch.equal(b.old_logprobs, b.behavior_logprobs)


@pytest.mark.parametrize(
    "over,msg",
    [
        (dict(mask=torch.ones(2, 4)), "behavior_logprobs must have shape"),
        (dict(rewards=torch.zeros(3)), "rewards must have shape"),
        (dict(group_ids=torch.tensor([0.0, 1.0])), "group_ids must be an integer"),
        (dict(is_guide=torch.zeros(2)), "is_guide must be bool"),
        (dict(extras=[1]), "extras must have one entry per row"),
        (dict(mask=torch.ones(6), behavior_logprobs=torch.zeros(6)), r"mask must be \(B, T\)"),
    ],
)
def test_validation_names_the_field(over, msg):
    with pytest.raises(ValueError, match=msg):
        good(**over)


def test_select_and_cat_keep_rows_and_extras_together():
    a = good(rewards=torch.tensor([1.0, 2.0]), extras=["a0", "a1"])
    b = RolloutBatch.from_rows(
        behavior_logprobs=torch.ones(1, 5),
        mask=torch.ones(1, 5),
        rewards=torch.tensor([3.0]),
        group_ids=torch.tensor([4]),
        extras=["b0"],
    )
    c = RolloutBatch.cat([a, b])
    assert c.mask.shape == (3, 5) and c.mask[0, 3:].sum() == 0
    s = c.select([2, 0])
    assert s.rewards.tolist() == [3.0, 1.0] and s.extras == ["b0", "a0"] and s.group_ids.tolist() == [4, 0]
