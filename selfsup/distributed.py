"""Small helpers for torch.distributed (one process per device, launched by torchrun).

Everything here is a no-op in a single process, so the same code runs everywhere.
"""
from __future__ import annotations

import contextlib
import os
import weakref

import torch
import torch.distributed as dist

from selfsup.errors import SelfSupError


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


_ALONE = False          # inside ``alone()``: this process works as if it were the only one


@contextlib.contextmanager
def alone():
    """Run a block on this process as a single process would (world size 1: no collectives), for work one process
    does for all while the others wait (``transfer``'s pseudo-labels, made on rank 0)."""
    global _ALONE
    before, _ALONE = _ALONE, True
    try:
        yield
    finally:
        _ALONE = before


def world_size() -> int:
    return dist.get_world_size() if is_initialized() and not _ALONE else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def resolve_device(name: str) -> torch.device:
    """The device a name asks for (auto, cpu or cuda), or a one-line error when it is not there."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SelfSupError("device=cuda was asked for but no CUDA GPU is visible: use device=cpu or device=auto")
    if name not in ("cpu", "cuda"):
        raise SelfSupError(f"unknown device {name!r}: use auto, cpu or cuda")
    if name == "cuda" and is_initialized():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


def init_from_env(device_type: str) -> bool:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1).

    gloo on CPU, NCCL on CUDA. Returns True when running distributed.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_initialized():
        return is_initialized()
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    _control_group()
    return True


_CONTROL: weakref.ref | None = None


def _control_group():
    """A gloo group for host-side flags (stop, non-finite loss): agreeing on them never
    syncs a CUDA stream. Under gloo it is the default group.

    Held by a weak reference: torch owns its groups, so destroy_process_group ends this one too. A group
    kept alive past it is torn down at interpreter exit, where gloo's threads can abort the process
    (SIGABRT, "terminate called without an active exception")."""
    global _CONTROL
    group = _CONTROL() if _CONTROL is not None else None
    if group is None:
        group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
        _CONTROL = weakref.ref(group)
    return group


def agree_any(*flags: bool) -> tuple[bool, ...]:
    """Each flag, true on every process when it is true on any (an all-reduce of host
    booleans over the control group; free in a single process)."""
    if world_size() == 1:
        return tuple(bool(f) for f in flags)
    t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control_group())
    return tuple(bool(v) for v in t.tolist())


def gather_objects(obj) -> list | None:
    """``obj`` of every process, in rank order, on rank 0 (None elsewhere). Tensors inside
    should be on the CPU; in a single process, ``[obj]``."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0, group=_control_group())
    return out


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        out = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()          # collectives need contiguous buffers (grads of permuted views are not)
        dist.all_reduce(grad)
        n = grad.shape[0] // world_size()
        return grad[rank() * n:(rank() + 1) * n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (same shape on every process) along dim 0, keeping gradients.

    The backward pass gives each process the gradient of its own slice summed over
    all processes, so a loss over the gathered batch, averaged by DDP, has the
    gradient of the loss over the global batch.
    """
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process along dim 0, without gradients."""
    if world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        dist.all_reduce(x)
    return x


def broadcast(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    if world_size() > 1:
        dist.broadcast(x, src)
    return x


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def wait_for_all(hours: float = 48) -> None:
    """A barrier over the control group (gloo) that waits up to ``hours``, not the process group's timeout
    (30 minutes by default): for the processes that wait while one works alone (``alone``)."""
    if world_size() > 1:
        import datetime

        dist.monitored_barrier(group=_control_group(), timeout=datetime.timedelta(hours=hours))


def shutdown(finished: bool = True) -> None:
    """Leave the process group at the end of a run: after a normal end every rank first waits for the
    others (a barrier), then each destroys its group, so that no rank exits while another still uses their
    connections (a gloo process whose peer has gone can abort, SIGABRT, instead of exiting). After an error
    the ranks may not all get here, so there is no barrier. A later run in the same process joins anew."""
    if not is_initialized():
        return
    if finished:
        dist.barrier()
    dist.destroy_process_group()
