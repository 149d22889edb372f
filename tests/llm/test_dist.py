"""Row sharding and error agreement across ranks (2 CPU processes, gloo)."""

import pytest
import torch.distributed as dist
import torch.multiprocessing as tmp
from npo_lab.llm.dist import World, agree, gather_rows, shard_rows

pytestmark = pytest.mark.llm


def test_shard_rows_pads_every_rank_to_the_same_length_and_gather_restores_the_order():
    for n in (1, 5, 8):
        parts = [shard_rows(n, World(rank=r, size=3)) for r in range(3)]
        assert len({len(idx) for idx, _ in parts}) == 1  # the same number of passes on every rank
        valid = [idx[:v] for idx, v in parts]
        assert [i for part in valid for i in part] == list(range(n))


def _worker(rank: int, path: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    world = World(rank=rank, size=2)
    rows = gather_rows([f"r{rank}-{i}" for i in range(2)], 2 if rank == 0 else 1, world)
    result = agree(world, lambda: rank * 10)  # no error: every rank gets its own result back

    def bad() -> int:
        if rank == 1:
            raise ValueError("row 7: the prompt is too long")
        return 0

    try:
        agree(world, bad)  # fails on rank 1 only: both ranks must raise, neither may hang
        msg = "no error"
    except ValueError as e:
        msg = str(e)
    with open(f"{out}.{rank}", "w") as f:
        f.write(f"{rows}|{result}|{msg}")
    dist.destroy_process_group()


def test_an_error_on_one_rank_is_raised_on_every_rank(tmp_path):
    out = str(tmp_path / "out")
    tmp.spawn(_worker, args=(str(tmp_path / "store"), out), nprocs=2, join=True)
    got = [open(f"{out}.{r}").read().split("|") for r in (0, 1)]
    assert got[0][0] == got[1][0] == str(["r0-0", "r0-1", "r1-0"])
    assert [g[1] for g in got] == ["0", "10"]
    assert all(g[2] == "rank 1: ValueError: row 7: the prompt is too long" for g in got), got
