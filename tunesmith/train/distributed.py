"""Data-parallel training: the loop's few collective operations, and the launcher.

    tunesmith train recipes/lora.yaml --nproc 2      # one machine: re-executes itself under torchrun
    torchrun --nnodes 2 --node-rank 0 --master-addr HOST --master-port 29500 --nproc-per-node 8 \\
        -m tunesmith.cli train recipes/lora.yaml      # several machines: the same command on each node

Every process holds the whole model. Each optimizer step, the processes split the *same* global micro-batches
the single-process run would train on (:func:`shard`), each backpropagates its part of the step's token sum
divided by the step's *global* target count, and one all-reduce sums the gradients (:func:`sync_gradients`):
the sum of the parts is the single-process gradient, whatever each rank's share of tokens. Each rank then
runs the same optimizer step on the same gradient, so the weights stay equal without being sent again.

Why not DDP's wrapper: it averages gradients inside every backward (so the loss would need rescaling by the
world size, and accumulation needs ``no_sync``), renames every parameter ``module.*`` (checkpoints, methods
and losses would see another model), and needs ``find_unused_parameters`` for frozen paths and heads. One
flat all-reduce per optimizer step is the communication DDP does under ``no_sync``; what it gives up is
overlapping that all-reduce with the backward pass, which matters on fast GPUs, not on one machine's CPUs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from tunesmith.errors import RunError


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 when not distributed)."""

    rank: int = 0
    size: int = 1
    sharded: bool = False
    """``train.sharding: fsdp``: parameters, gradients and optimizer states are split across the ranks."""

    @property
    def main(self) -> bool:
        """Rank 0: the only process that writes the run directory, prints and logs."""
        return self.rank == 0


def env_world() -> World:
    """This process's rank and world size as torchrun / accelerate launch set them, before any process
    group exists (the pipeline asks before the loop starts one)."""
    return World(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))


def current_world() -> World:
    """The process group's rank and size (accelerate creates the group from torchrun's environment)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def shard(indices: list[int], world: World) -> list[int]:
    """This rank's contiguous share of one global micro-batch (the last ranks' shares may be short or
    empty at an epoch's end: the loss is a global token sum, so an empty share just adds nothing)."""
    per = -(-len(indices) // world.size)
    return indices[world.rank * per : (world.rank + 1) * per]


def all_sum(values: Sequence[float], world: World) -> list[float]:
    """``values`` summed over all ranks, in float64 (one small all-reduce)."""
    if world.size == 1:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def sync_gradients(params: list[torch.nn.Parameter], world: World) -> None:
    """Sum every parameter's gradient over all ranks (a rank that saw no tokens contributes zeros).

    One flattened all-reduce per dtype instead of one per tensor: far fewer collectives (LoRA has hundreds
    of small tensors), at the cost of one extra copy of the gradients.
    """
    if world.size == 1 or world.sharded:  # FSDP reduce-scatters the gradients inside backward itself
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        by_dtype.setdefault(p.grad.dtype, []).append(p.grad)  # type: ignore[union-attr]
    for grads in by_dtype.values():
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        for grad, synced in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
            grad.copy_(synced)


@torch.no_grad()
def broadcast_parameters(
    params: list[torch.nn.Parameter], world: World, device: torch.device | None = None
) -> None:
    """Rank 0's values of ``params`` on every rank (a freshly initialised head or adapter drawn from a
    different random state would otherwise differ between ranks from the first step). ``device``: where the
    process group's backend needs tensors (NCCL: the GPU) when ``params`` are elsewhere (an FSDP run keeps
    its whole model in host memory)."""
    if world.size == 1:
        return
    for p in params:
        if device is None or p.device == device:
            dist.broadcast(p.data, src=0)
            continue
        moved = p.data.to(device)
        dist.broadcast(moved, src=0)
        p.data.copy_(moved)


def shard_copy(model: Any) -> Any:
    """A copy of ``model`` sharded with FSDP (torch's ``fully_shard``, FSDP2). Units: each decoder block, then
    the decoder's own tensors (embeddings, final norm) grouped with the output head, then the root. Each
    unit is gathered for its forward and backward and freed after; parameters become DTensors holding this
    rank's slice, and gradients are reduce-scattered in backward.

    The decoder and the head are one unit because the losses call them one after the other, not through the
    model's forward (the head on target positions only), and because a head tied to the embeddings is one
    tensor that must live in one unit. A copy, not ``model`` itself: FSDP cannot be taken off a module again,
    and after training rank 0 must save and evaluate an ordinary model alone. The loop trains the copy and
    gathers its weights back into ``model`` at the end; the cost is ``model`` kept whole in host memory
    beside the shards (on GPUs only the shards go to the device).
    """
    import copy

    from torch.distributed.fsdp import fully_shard

    from tunesmith.models.anatomy import output_head, transformer_blocks

    sharded = copy.deepcopy(model)
    base = sharded.get_base_model() if hasattr(sharded, "get_base_model") else sharded
    for block in transformer_blocks(base):
        fully_shard(block)
    fully_shard([getattr(base, base.base_model_prefix), output_head(base)])
    fully_shard(sharded)
    # FSDP takes the module of the first forward for the root of the tree; the losses may call the decoder
    # first, which would make a two-module unit the root (refused). One token through the real root first.
    with torch.no_grad():
        device = next(sharded.parameters()).device
        sharded(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), use_cache=False)
    return sharded


def from_main(obj: Any, world: World) -> Any:
    """Rank 0's ``obj`` on every rank: decisions that must agree (stop now, the precision ``auto`` picks)."""
    if world.size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def launch_command(argv: list[str], nproc: int) -> list[str]:
    """The command that runs ``tunesmith <argv>`` in ``nproc`` processes on this machine.

    torchrun (``torch.distributed.run``) rather than ``accelerate launch``: it ships with torch, needs no
    ``accelerate config`` file, and sets exactly the environment accelerate reads (RANK, WORLD_SIZE,
    MASTER_ADDR, ...). ``--standalone`` picks a free local rendezvous port.
    """
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "tunesmith.cli",
        *argv,
    ]


def launch_env(nproc: int) -> dict[str, str]:
    """The environment for :func:`launch_command`: torchrun sets ``OMP_NUM_THREADS=1`` per process when
    unset, which starves CPU training; each process gets its share of the cores instead."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return env


def launched() -> bool:
    """Whether this process was started by torchrun / accelerate launch (WORLD_SIZE in the environment)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


PROCESS_GROUP_TIMEOUT = timedelta(hours=4)
"""How long a rank waits in a collective. Long because of the first one: rank 0 evaluates the base model
(zero-/k-shot baselines, probes: many minutes on CPU) while the other ranks already wait to train; torch's
default (30 min) would kill them. The cost: a rank that hangs is noticed only after this long."""

SHARDED_LAUNCH = ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")
"""What ``accelerate launch`` sets for an FSDP / DeepSpeed config: accelerate's sharding, which this loop does
not use (it shards with torch's FSDP itself, ``train.sharding: fsdp``)."""


def start_world() -> World:
    """Join the process group when launched by torchrun / accelerate launch (accelerate creates it: gloo on
    CPU, NCCL on CUDA); otherwise rank 0 of 1, with no group.

    Raises:
        RunError: launched with an FSDP or DeepSpeed accelerate config, whose settings this loop would
            ignore (it shards with ``train.sharding: fsdp``; DeepSpeed is not supported).
    """
    sharded = [name for name in SHARDED_LAUNCH if os.environ.get(name, "").lower() in ("1", "true")]
    if sharded:
        raise RunError(
            f"{sharded[0]} is set (an FSDP / DeepSpeed `accelerate config`): tunesmith does not read "
            "accelerate's sharding settings; choose distributed_type MULTI_GPU or MULTI_CPU in `accelerate "
            "config` and add --set train.sharding=fsdp to shard with FSDP (see docs/distributed.md)"
        )
    if launched():
        from accelerate import PartialState  # deferred: only distributed runs need it here

        PartialState(cpu=not torch.cuda.is_available(), timeout=PROCESS_GROUP_TIMEOUT)
    return current_world()
