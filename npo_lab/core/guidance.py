"""The guide gate and the slot merge (NPO, arXiv 2604.20733).

A prompt is *gated* when the accuracy of its on-policy group is at most ``threshold`` (p-hat <= 0.6 in the paper;
the first author's public verl fork compares with a strict <, a documented option).
Each gated group then has ``k`` of its G slots replaced by verified-correct guide rows (k = 1 in the
paper). A wrong guide row is never inserted: if the guide source found fewer than k correct rows for a
prompt, that group stays fully on-policy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from npo_lab.batch import RolloutBatch

SLOT_CHOICES = ("last", "incorrect_first")
GATE_OPS = ("le", "lt")


def group_accuracy(rewards: Tensor, group_ids: Tensor, correct_threshold: float = 0.5) -> dict[int, float]:
    """Fraction of rows with reward > ``correct_threshold`` in each group, keyed by prompt id.

    >>> group_accuracy(torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([7, 7, 9, 9]))
    {7: 0.5, 9: 1.0}
    """
    acc: dict[int, list[float]] = {}
    for r, g in zip(rewards.tolist(), group_ids.tolist()):
        acc.setdefault(g, []).append(1.0 if r > correct_threshold else 0.0)
    return {g: sum(v) / len(v) for g, v in acc.items()}


def guide_gate(group_acc: Tensor, threshold: float = 0.6, op: str = "le") -> Tensor:
    """Which groups get guidance: accuracy at most ``threshold`` (``op="le"``) or strictly below it (``"lt"``).

    Args:
        group_acc: (n_groups,) float in [0, 1].
        threshold: the gate; 0.6 is the paper's value.
        op: ``le`` (p-hat <= threshold, the paper) or ``lt`` (the authors' public code).

    Returns:
        (n_groups,) bool.

    >>> guide_gate(torch.tensor([0.0, 0.5, 0.6, 1.0])).tolist()
    [True, True, True, False]
    >>> guide_gate(torch.tensor([0.0, 0.5, 0.6, 1.0]), op="lt").tolist()
    [True, True, False, False]
    """
    if op not in GATE_OPS:
        raise ValueError(f"op must be one of {GATE_OPS}, got {op!r}")
    return group_acc <= threshold if op == "le" else group_acc < threshold


def _pool(
    on_policy: RolloutBatch, guides: RolloutBatch, correct_threshold: float
) -> tuple[RolloutBatch, dict[int, list[int]], dict[int, list[int]]]:
    """On-policy rows followed by guide rows (marked ``is_guide``), the on-policy row indices of each group, and
    the indices (into the combined batch) of each group's verified-correct guide rows."""
    n_on = on_policy.size
    guides = guides.replace(is_guide=torch.ones(guides.size, dtype=torch.bool, device=guides.is_guide.device))
    combined = RolloutBatch.cat([on_policy, guides])
    rows_of: dict[int, list[int]] = {}
    for i, g in enumerate(on_policy.group_ids.tolist()):
        rows_of.setdefault(g, []).append(i)
    correct: dict[int, list[int]] = {}
    for j, (g, r) in enumerate(zip(guides.group_ids.tolist(), guides.rewards.tolist())):
        if r > correct_threshold:
            correct.setdefault(g, []).append(n_on + j)
    return combined, rows_of, correct


def merge_guides(
    on_policy: RolloutBatch,
    guides: RolloutBatch,
    gated: Sequence[int],
    k: int = 1,
    slot: str = "last",
    correct_threshold: float = 0.5,
) -> tuple[RolloutBatch, dict[str, float]]:
    """Replace ``k`` slots of each gated group with verified-correct guide rows.

    Args:
        on_policy: the on-policy batch (B rows, groups of G).
        guides: candidate guide rows; their ``group_ids`` name the prompt they answer. Rows with
            reward <= ``correct_threshold`` are never used. Their ``is_guide`` is set to True here.
        gated: prompt ids whose groups may receive guides.
        k: slots to replace per gated group (must be < G so one on-policy row stays).
        slot: ``last`` replaces the last k rows of the group (rows are i.i.d., so any fixed choice is a
            uniformly random slot); ``incorrect_first`` replaces wrong on-policy rows first.
        correct_threshold: reward above which a row counts as correct.

    Returns:
        (merged batch with the same B and group layout, metrics).
    """
    if slot not in SLOT_CHOICES:
        raise ValueError(f"slot must be one of {SLOT_CHOICES}, got {slot!r}")
    if k < 1:
        raise ValueError(f"k (guide slots per group) must be >= 1, got {k}")
    n_on = on_policy.size
    combined, rows_of, correct_guides = _pool(on_policy, guides, correct_threshold)
    gated_set = set(int(g) for g in gated)
    index = list(range(n_on))
    injected = 0
    replaced_correct = 0
    on_rewards = on_policy.rewards.tolist()
    for g, rows in rows_of.items():
        if g not in gated_set:
            continue
        if k >= len(rows):
            raise ValueError(f"k={k} guide slots would replace every row of group {g} (size {len(rows)})")
        cands = correct_guides.get(g, [])
        if len(cands) < k:
            continue  # nothing verified to inject: the group stays on-policy
        if slot == "last":
            targets = rows[-k:]
        else:  # wrong rows first (from the end), then correct ones
            wrong = [i for i in reversed(rows) if on_rewards[i] <= correct_threshold]
            right = [i for i in reversed(rows) if on_rewards[i] > correct_threshold]
            targets = (wrong + right)[:k]
        for tgt, src in zip(targets, cands[:k]):
            replaced_correct += int(on_rewards[tgt] > correct_threshold)
            index[tgt] = src
        injected += 1

    merged = combined.select(index).trim()  # unused longer guide candidates must not widen the batch
    n_groups = max(len(rows_of), 1)
    metrics = {
        "guide/gated_frac": len(gated_set & set(rows_of)) / n_groups,
        "guide/injected_frac": injected / n_groups,
        "guide/found_frac": injected / max(len(gated_set & set(rows_of)), 1),
        "guide/rows": float(injected * k),
        "guide/replaced_correct": float(replaced_correct),
    }
    return merged, metrics


def append_guides(
    on_policy: RolloutBatch,
    guides: RolloutBatch,
    targets: Sequence[int],
    k: int = 2,
    correct_threshold: float = 0.5,
) -> tuple[RolloutBatch, dict[str, float]]:
    """Append up to ``k`` verified-correct guide rows to each target group (RLEP: the group grows to G + k).

    Args:
        on_policy: the on-policy batch (B rows).
        guides: candidate rows; ``group_ids`` names the prompt each answers; wrong rows are never used.
        targets: prompt ids whose groups receive rows.
        k: at most this many rows per group (fewer when fewer correct candidates exist).
        correct_threshold: reward above which a row counts as correct.

    Returns:
        (batch with each group's appended rows right after it, metrics). ``is_guide`` marks appended rows.

    >>> on = RolloutBatch.from_rows(behavior_logprobs=torch.zeros(2, 1), mask=torch.ones(2, 1),
    ...                             rewards=torch.tensor([0.0, 0.0]), group_ids=torch.tensor([4, 4]))
    >>> g = RolloutBatch.from_rows(behavior_logprobs=torch.zeros(3, 1), mask=torch.ones(3, 1),
    ...                            rewards=torch.tensor([1.0, 0.0, 1.0]), group_ids=torch.tensor([4, 4, 4]))
    >>> merged, _ = append_guides(on, g, [4], k=2)
    >>> merged.rewards.tolist(), merged.is_guide.tolist()
    ([0.0, 0.0, 1.0, 1.0], [False, False, True, True])
    """
    if k < 1:
        raise ValueError(f"k (appended rows per group) must be >= 1, got {k}")
    combined, rows_of, correct = _pool(on_policy, guides, correct_threshold)
    wanted = set(int(t) for t in targets)
    index: list[int] = []
    added = 0
    groups_with = 0
    for g, rows in rows_of.items():  # keep each group's rows together: on-policy rows, then its guides
        index += rows
        if g in wanted and correct.get(g):
            extra = correct[g][:k]
            index += extra
            added += len(extra)
            groups_with += 1
    merged = combined.select(index).trim()
    n_groups = max(len(rows_of), 1)
    metrics = {
        "guide/gated_frac": len(wanted & set(rows_of)) / n_groups,
        "guide/injected_frac": groups_with / n_groups,
        "guide/found_frac": groups_with / max(len(wanted & set(rows_of)), 1),
        "guide/rows": float(added),
        "guide/replaced_correct": 0.0,
    }
    return merged, metrics
