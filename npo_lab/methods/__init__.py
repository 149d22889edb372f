"""The methods, one file each, and the registry a run picks them from by name.

=========  =================================================================  ===========================
method     guide rows                                                         group composition
=========  =================================================================  ===========================
grpo       none                                                               G on-policy
npo        verified-correct rows of pi_{t+Delta} (this run, looked ahead)     k of G replaced, gate 0.6
autonpo    as npo, Delta* = argmax Q-hat/V-hat, triggered online              k of G replaced, gate 0.6
luffy      verified-correct rows of an external teacher (another style)       1 of G replaced, every group
exgrpo     this run's own past correct rows (medium-difficulty buckets)       1 of G replaced, replay prompts
rlep       a fixed pool of correct rows decoded by a previous run's final     G + 2 (appended)
=========  =================================================================  ===========================

A new method is a class in a file of its own that extends :class:`GRPO` (overriding the hooks of
:class:`npo_lab.train.method.Method` it needs and ``from_configs``), a config section in :mod:`npo_lab.config`
(``MethodConfigs`` and ``METHODS``), and one line here. docs/methods.md maps each method to its paper.
"""

from __future__ import annotations

from npo_lab.backend import Checkpoint
from npo_lab.config import METHODS as METHOD_DESCRIPTIONS
from npo_lab.config import GRPOConfig, MethodConfigs
from npo_lab.methods.autonpo import AutoNPO, AutoNPOController, AutoNPOLookahead, MistakePool
from npo_lab.methods.base import failing_groups, policy_rows_for
from npo_lab.methods.exgrpo import ExGRPO
from npo_lab.methods.grpo import GRPO
from npo_lab.methods.luffy import Luffy
from npo_lab.methods.npo import NPO
from npo_lab.methods.rlep import RLEP, train_previous_run
from npo_lab.registry import Registry

METHODS: Registry[type[GRPO]] = Registry("method")
for _cls in (GRPO, NPO, AutoNPO, Luffy, ExGRPO, RLEP):
    METHODS.register(_cls.name)(_cls)
assert METHODS.names() == sorted(METHOD_DESCRIPTIONS), "npo_lab.config.METHODS and the registry must agree"


def make_method(
    name: str,
    cfgs: MethodConfigs,
    total_steps: int,
    *,
    grpo: GRPOConfig,
    teacher: Checkpoint | None = None,
    previous: Checkpoint | None = None,
    seed: int = 0,
) -> GRPO:
    """The method ``name`` (``grpo``, ``npo``, ``autonpo``, ``luffy``, ``exgrpo``, ``rlep``) with its settings.

    ``teacher`` is the external teacher (luffy); ``previous`` the final policy of a previous run (rlep)."""
    cls = METHODS.get(name)
    return cls.from_configs(cfgs, total_steps=total_steps, grpo=grpo, teacher=teacher, previous=previous, seed=seed)


__all__ = [
    "GRPO",
    "METHODS",
    "NPO",
    "RLEP",
    "AutoNPO",
    "AutoNPOLookahead",
    "AutoNPOController",
    "ExGRPO",
    "Luffy",
    "MistakePool",
    "failing_groups",
    "make_method",
    "policy_rows_for",
    "train_previous_run",
]
