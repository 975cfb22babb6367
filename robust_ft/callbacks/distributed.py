"""Ranks that ``ddp_spawn`` started leave their process group together."""

from __future__ import annotations

import multiprocessing

from lightning.pytorch.callbacks import Callback


class EndSpawnedProcessGroup(Callback):
    """In a rank started by ``ddp_spawn``, after its stage: wait for every rank, then destroy the
    process group. A rank that exited while another still worked (rank 0 writing its test
    artifacts) with its gloo group alive aborted ("terminate called without an active
    exception") in about one test stage in three on 2 CPU ranks; every fit or test launches
    new ranks, so nothing after the stage needs the group."""

    def teardown(self, trainer, pl_module, stage: str) -> None:
        import torch.distributed as dist

        if multiprocessing.parent_process() is None:  # not a spawned rank: the group stays
            return
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
