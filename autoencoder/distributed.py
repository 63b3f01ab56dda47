"""Multi-process training under torchrun: the process group, each rank's share, DDP replicas.

``torchrun --nproc_per_node=N -m autoencoder.train ...`` starts N processes. Each holds a
replica of the five networks wrapped in DistributedDataParallel (Li et al. 2020, "PyTorch
Distributed", arXiv:2006.15704), which averages gradients across ranks during the backward
pass: gloo on CPU, nccl on GPU.

An N-process step computes what a 1-process step with the same global batch computes:
every rank draws the step's randomness for the whole global batch and keeps its own
contiguous share of the images and of the draws; every loss is a mean over equal shares,
so the average of the ranks' gradients is the 1-process gradient (up to float summation
order). Only rank 0 writes files (config, metrics, samples, checkpoints).

Example::

    torchrun --nproc_per_node=2 -m autoencoder.train --preset cpu --data data --out outputs/runs/ddp
"""
from __future__ import annotations

import contextlib
import os
import sys
import traceback
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from autoencoder.cli import release_all_folders
from autoencoder.data import epoch_order
from autoencoder.models import Networks


@dataclass(frozen=True)
class Shard:
    """Where this process stands: its rank among world_size processes, its GPU index on the node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and prints progress."""
        return self.rank == 0

    def part(self, count: int) -> slice:
        """This rank's contiguous share of ``count`` items (count divisible by world_size)."""
        size = count // self.world_size
        return slice(self.rank * size, (self.rank + 1) * size)


SINGLE = Shard()


def shard_from_env() -> Shard:
    """The shard torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK; one process without them."""
    return Shard(rank=int(os.environ.get("RANK", 0)), world_size=int(os.environ.get("WORLD_SIZE", 1)),
                 local_rank=int(os.environ.get("LOCAL_RANK", 0)))


@contextlib.contextmanager
def process_group(shard: Shard, device_type: str) -> Iterator[None]:
    """Join the process group of a multi-process run (nothing for one process); leave it after."""
    if shard.world_size == 1:
        yield
        return
    if device_type == "cuda":
        torch.cuda.set_device(shard.local_rank)
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def end_without_teardown(shard: Shard, body: Callable[[], Any]) -> None:
    """Run a rank's ``body``; under torchrun then end the process at once with its exit status, skipping the
    interpreter's teardown (one process: ``body`` alone, ending as usual).

    A gloo worker thread may still hold the last reference to a finished collective's tensors when the main thread
    reaches interpreter shutdown; freeing them needs the GIL, which a thread cannot take during shutdown, so the rank
    aborts ("terminate called without an active exception", SIGABRT) after every file was written, and torchrun
    reports the run failed: one run in about twenty under load on 2 cores, with the abort's core file showing
    ``ProcessGroupGloo::AsyncWork::~AsyncWork`` in ``take_gil`` while the main thread is in ``Py_FinalizeEx``
    (the race pytorch/pytorch#179291 describes). Ending with ``os._exit`` after the streams are flushed and the
    folder locks dropped leaves no teardown to race with. Status: 0, a SystemExit's code, 130 on an interrupt, and
    1 (traceback on stderr) on any other exception.
    """
    if shard.world_size == 1:
        body()
        return
    status = 0
    try:
        body()
    except SystemExit as stop:
        status = 0 if stop.code is None else stop.code
        if not isinstance(status, int):  # sys.exit("message"): the message, then status 1
            print(status, file=sys.stderr)
            status = 1
    except KeyboardInterrupt:
        status = 130
    except BaseException:  # noqa: BLE001 -- any other failure: its traceback, then status 1
        traceback.print_exc()
        status = 1
    release_all_folders()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def replicate(nets: Networks, shard: Shard, device: torch.device) -> Any:
    """What a training step calls: the networks themselves, or one DDP replica of each.

    Each network is wrapped on its own and called once per step, so that each replica
    sees one forward and the one backward that reaches its parameters.
    """
    if shard.world_size == 1:
        return nets
    device_ids = [device.index] if device.type == "cuda" else None
    return SimpleNamespace(**{name: DistributedDataParallel(getattr(nets, name), device_ids=device_ids)
                              for name in nets.names})


def mean_over_ranks(values: dict[str, torch.Tensor], shard: Shard) -> dict[str, torch.Tensor]:
    """Each scalar averaged over the ranks (one collective); unchanged for one process."""
    if shard.world_size == 1 or not values:
        return values
    names = sorted(values)
    stacked = torch.stack([values[n].float() for n in names])
    dist.all_reduce(stacked)
    return {n: v / shard.world_size for n, v in zip(names, stacked)}


def any_rank(flag: bool, shard: Shard, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one (one collective)."""
    if shard.world_size == 1:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def from_main(value: Any, shard: Shard) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object)."""
    if shard.world_size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(shard: Shard) -> None:
    """Wait until every rank has arrived here."""
    if shard.world_size > 1:
        dist.barrier()


class BatchSampler:
    """Batches of training images for any step, without replacement within an epoch.

    Under torchrun each rank gets its contiguous share of every global batch (a distributed
    sampler addressed by step, so that a resumed run takes up exactly where it stopped).
    """

    def __init__(self, images: torch.Tensor, batch_size: int, seed: int, shard: Shard = SINGLE,
                 labels: torch.Tensor | None = None):
        self.images, self.batch_size, self.seed, self.shard = images, batch_size, seed, shard
        self.labels = labels  # (N,) on the images' device, when the step needs them
        self.steps_per_epoch = max(1, len(images) // batch_size)
        self._epoch, self._order = -1, None

    def batch(self, step: int) -> torch.Tensor:
        """This rank's images of the global batch of ``step``: (batch_size / world_size, 3, 32, 32) uint8."""
        return self.images[self._index(step)]

    def batch_labels(self, step: int) -> torch.Tensor:
        """The labels of ``batch(step)``, in the same order."""
        if self.labels is None:
            raise ValueError("this sampler was built without labels")
        return self.labels[self._index(step)]

    def _index(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:  # the order goes to the images' device: indexing copies nothing per step
            self._epoch = epoch
            self._order = epoch_order(self.seed, epoch, len(self.images)).to(self.images.device)
        index = self._order[i * self.batch_size:(i + 1) * self.batch_size]
        if len(index) < self.batch_size:  # fewer images than one batch: wrap around
            index = torch.arange(i * self.batch_size, (i + 1) * self.batch_size,
                                 device=self.images.device) % len(self.images)
        return index[self.shard.part(self.batch_size)]
