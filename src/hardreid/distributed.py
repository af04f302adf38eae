"""Several processes (``torchrun``): who this process is, what it shares with the others.

One place for rank / world logic, so that the trainer, the methods and the memories read as
they do in one process. One process is a world of size 1 and every helper is then a no-op:
it returns its input (or does nothing) without touching ``torch.distributed``.

Launch: ``torchrun --nproc_per_node N -m hardreid train ...`` sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT; ``setup`` joins that process group (NCCL with one
GPU per process, GPU = LOCAL_RANK; gloo on CPUs) with a timeout, so that a rank that dies or
stops answering ends every rank's collective with an error instead of a hang.

What the training run shares (see the trainer and ``ComposedMethod.after_step``):

- the global P x K batch: every rank draws the same one and loads its contiguous share
  (``data.loaders``), so a run means the same at any world size;
- features: extracted on contiguous shards (``shard``) and gathered in order (``all_gather_cat``);
- pseudo labels: computed once on rank 0 and broadcast (``broadcast_object``);
- gradients: averaged by DistributedDataParallel (``data_parallel``) or, for a component's own
  networks, by ``average_gradients``;
- BatchNorm running statistics: rank 0's (``broadcast_buffers``), as ``nn.DataParallel`` keeps
  the first GPU's.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import os
import random
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .errors import UserError

T = TypeVar("T")

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_world_size() -> int:
    """The number of processes torchrun started for this job (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def active() -> bool:
    """Whether this process belongs to a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the process that writes files, logs and shows progress."""
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def setup(device: str = "auto", timeout_minutes: float = 30.0) -> torch.device:
    """Join the process group torchrun describes (once per process) and return this rank's device.

    Without torchrun (or with one process) nothing is joined and ``device`` is resolved as usual
    (``auto``: CUDA when available). With several processes each one drives GPU LOCAL_RANK with NCCL,
    or the CPU with gloo (``train.device=cpu``, or no GPU). ``timeout_minutes`` bounds every collective:
    longer than the longest step rank 0 takes alone (clustering, scoring, writing a checkpoint).
    """
    world = launched_world_size()
    if world <= 1:
        return single_device(device)
    missing = [name for name in ENV if name not in os.environ]
    if missing:
        raise UserError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: start several processes with torchrun "
                        "(torchrun --nproc_per_node N -m hardreid train ...)")
    if timeout_minutes <= 0:
        raise UserError(f"train.dist_timeout must be > 0 minutes, got {timeout_minutes}")
    chosen = _rank_device(device)
    if not dist.is_initialized():
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes),
                                device_id=chosen if chosen.type == "cuda" else None)
    elif dist.get_world_size() != world:
        raise RuntimeError(f"a process group of {dist.get_world_size()} processes exists, torchrun started {world}")
    return chosen


def single_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device={name} but no CUDA device is available; use train.device=cpu or auto")
    return torch.device(name)


def _rank_device(name: str) -> torch.device:
    """cuda:LOCAL_RANK or cpu for one of several processes."""
    if name == "cpu":
        return torch.device("cpu")
    if name not in ("auto", "cuda"):
        raise UserError(f"train.device={name}: under torchrun every process uses the GPU of its LOCAL_RANK; "
                        "use train.device=auto, cuda or cpu")
    if not torch.cuda.is_available():
        if name == "cuda":
            raise UserError("train.device=cuda but no CUDA device is available; use train.device=cpu or auto")
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if local_rank() >= count:
        raise UserError(f"process LOCAL_RANK={local_rank()} has no GPU: this node has {count}; start at most {count} "
                        "processes per node (torchrun --nproc_per_node)")
    return torch.device("cuda", local_rank())


# -- collectives (no-ops in one process) ----------------------------------------------------------------
def _comm_device() -> torch.device:
    """Where tensors must be for the backend: the rank's GPU for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextlib.contextmanager
def _collective(what: str) -> Iterator[None]:
    """A collective that fails (another process died, or did not answer within train.dist_timeout) says so."""
    try:
        yield
    except RuntimeError as exc:
        raise RuntimeError(f"rank {rank()} of {world_size()}: {what} failed: another process died or did not answer "
                           f"within train.dist_timeout minutes (its own error is above): {exc}") from exc


def barrier() -> None:
    if active():
        with _collective("waiting for the other processes"):
            dist.barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` of rank ``src`` on every rank (pickled; for labels, statistics, small states)."""
    if not active():
        return obj
    box = [obj if rank() == src else None]
    with _collective(f"receiving rank {src}'s results"):
        dist.broadcast_object_list(box, src=src, device=_comm_device())
    return box[0]


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    with _collective("gathering values from every process"):
        dist.all_gather_object(out, obj)
    return out


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows, concatenated in rank order (ranks may hold different numbers of rows). No gradient."""
    if not active():
        return tensor
    device = _comm_device()
    local = tensor.detach().contiguous().to(device)
    sizes = torch.tensor([local.shape[0]], device=device)
    all_sizes = [torch.zeros_like(sizes) for _ in range(world_size())]
    with _collective("gathering rows from every process"):
        dist.all_gather(all_sizes, sizes)
        counts = [int(s) for s in all_sizes]
        padded = local.new_zeros((max(counts), *local.shape[1:]))
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, counts)]).to(tensor.device)


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows (the same number on every rank), concatenated in rank order: one collective. No gradient."""
    if not active():
        return tensor
    local = tensor.detach().contiguous().to(_comm_device())
    parts = [torch.empty_like(local) for _ in range(world_size())]
    with _collective("gathering the global batch"):
        dist.all_gather(parts, local)
    return torch.cat(parts).to(tensor.device)


def sum_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Key-wise sums over the ranks (a key missing on a rank counts 0 there)."""
    if not active():
        return dict(values)
    total: dict[str, float] = {}
    for part in all_gather_object(dict(values)):
        for key, value in part.items():
            total[key] = total.get(key, 0.0) + float(value)
    return total


@contextlib.contextmanager
def random_state_kept() -> Iterator[None]:
    """torch's (CPU and current GPU), Python's and numpy's global random states are restored after the block."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def main_then_broadcast(fn: Callable[[], T]) -> T:
    """``fn()`` computed on rank 0 only (pseudo labels, scores, files) and its result sent to every rank.

    ``fn`` must not use collectives. It does not move the random streams (also in one process), so every
    rank keeps drawing the same numbers. An exception on rank 0 is raised on every rank (the others get
    a RuntimeError naming it when it cannot be sent), so that all of them stop together.
    """
    with random_state_kept():
        if not active():
            return fn()
        result: Any = None
        error: BaseException | None = None
        if is_main():
            try:
                result = fn()
            except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
                error = exc
        sent = broadcast_object((result, _describe(error)))
    if error is not None:
        raise error
    if sent[1] is not None:
        raise _rebuild(sent[1])
    return sent[0]


def _describe(error: BaseException | None) -> tuple[bool, str] | None:
    """Rank 0's error as plain data for the other ranks: (is a UserError, its message); no exception object is
    sent, so no rank ever unpickles one."""
    if error is None:
        return None
    if isinstance(error, UserError):
        return True, str(error)
    return False, f"rank 0 failed: {type(error).__name__}: {error}"


def _rebuild(description: tuple[bool, str]) -> BaseException:
    """The exception another rank raises for rank 0's error: the same UserError message, else a RuntimeError."""
    user_error, message = description
    return UserError(message) if user_error else RuntimeError(message)


# -- data -----------------------------------------------------------------------------------------------
def shard_bounds(total: int, block: int = 1) -> tuple[int, int]:
    """[start, stop) of this rank's contiguous share of ``total`` items, cut at multiples of ``block``.

    Whole blocks (e.g. extraction batches) are spread as evenly as possible, the earlier ranks taking
    one more block when they do not divide; concatenating every rank's share in rank order gives
    0..total-1.
    """
    blocks = -(-total // max(block, 1))
    per, extra = divmod(blocks, world_size())
    r = rank()
    first = r * per + min(r, extra)
    last = first + per + (1 if r < extra else 0)
    return min(first * block, total), min(last * block, total)


def shard(items: Sequence[T], block: int = 1) -> Sequence[T]:
    """This rank's contiguous share of ``items`` (``shard_bounds``); all of them in one process."""
    start, stop = shard_bounds(len(items), block)
    return items[start:stop]


def rank_rows(batch: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous share of the rows of a tensor over the global batch (equal shares)."""
    if not active():
        return batch
    share = batch.shape[0] // world_size()
    return batch[rank() * share:(rank() + 1) * share]


def rank_block(matrix: torch.Tensor) -> torch.Tensor:
    """This rank's diagonal block of a square matrix over the global batch (rows and columns of its share).

    Random draws over the global batch made identically on every rank (same seed) and cut with this
    give each rank the numbers one process would use for the same images.
    """
    if not active():
        return matrix
    share = matrix.shape[0] // world_size()
    lo = rank() * share
    return matrix[lo:lo + share, lo:lo + share]


# -- models ---------------------------------------------------------------------------------------------
class _MethodAsForward(nn.Module):
    """``module.<name>(x)`` (or ``name(module, x)`` for a function) as a module's forward: DistributedDataParallel
    averages the gradients of passes made through its own ``forward`` only."""

    def __init__(self, module: nn.Module, name: str | Callable[..., Any]) -> None:
        super().__init__()
        self.module = module
        self.name = name

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if callable(self.name):
            return self.name(self.module, *args, **kwargs)
        return getattr(self.module, self.name)(*args, **kwargs)


def data_parallel(model: nn.Module, method: str | Callable[..., Any] = "forward") -> Callable[..., Any]:
    """``model.<method>`` as a callable whose gradients are averaged over the ranks after backward; ``method`` may
    also be a function, called as ``method(model, *args)`` (camera-based BatchNorm's forward).

    Several processes: DistributedDataParallel around it (parameters and buffers broadcast from rank 0 now,
    gradients all-reduced bucket by bucket while backward runs). The training step must make one pass
    through the returned callable before its backward; further passes through ``model`` itself in the same
    step (hard positives, generated images) add to the same gradients and are averaged with them. Buffers
    are not synced here: call ``broadcast_buffers`` after the optimiser step. One process: ``model.<method>``.
    """
    if not active():
        return functools.partial(method, model) if callable(method) else getattr(model, method)
    device = next(model.parameters()).device
    wrapper = model if method == "forward" else _MethodAsForward(model, method)
    return nn.parallel.DistributedDataParallel(wrapper, device_ids=[device] if device.type == "cuda" else None,
                                               forward_sync_buffers=False)


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Average ``.grad`` over the ranks in one all-reduce (a component's own networks and optimiser).

    Parameters without a gradient must be the same on every rank (they are skipped everywhere).
    """
    if not active():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    device = _comm_device()
    flat = torch.cat([g.detach().reshape(-1).to(device, torch.float32) for g in grads])
    with _collective("averaging gradients"):
        dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g).to(g.device, g.dtype))
        offset += n


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Every rank takes rank ``src``'s buffers (BatchNorm running statistics), in place."""
    _broadcast_tensors(list(module.buffers()), src)


def broadcast_tensors(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Every rank takes rank ``src``'s values of ``tensors`` (the same shapes in the same order everywhere), in place."""
    _broadcast_tensors(list(tensors), src)


def _broadcast_tensors(tensors: list[torch.Tensor], src: int) -> None:
    """In place, one broadcast per dtype (the tensors flattened together)."""
    if not active() or not tensors:
        return
    device = _comm_device()
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    with _collective(f"receiving rank {src}'s weights"):
        for group in by_dtype.values():
            flat = torch.cat([t.detach().reshape(-1).to(device) for t in group])
            dist.broadcast(flat, src=src)
            offset = 0
            for t in group:
                t.data.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """BatchNorm layers as SyncBatchNorm (statistics over the global batch); CUDA only (PyTorch's SyncBatchNorm).
    One process: ``model`` (its BatchNorm already sees the whole batch)."""
    if not active():
        return model
    if next(model.parameters()).device.type != "cuda":
        raise UserError("train.sync_bn needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only); on CPUs set "
                        "train.sync_bn=false (each process normalises its own share, as the papers' GPUs did)")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


# -- checks ---------------------------------------------------------------------------------------------
def digest(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """SHA-1 of each tensor's bytes (order of ``tensors``)."""
    out = {}
    for name, t in tensors.items():
        data = t.detach().cpu().contiguous().reshape(-1)
        out[name] = hashlib.sha1(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"").hexdigest()
    return out


def check_identical(tensors: dict[str, torch.Tensor], what: str) -> int:
    """Raise when any tensor differs (bit for bit) between the ranks; returns how many were compared."""
    if not active():
        return len(tensors)
    mine = digest(tensors)
    for other_rank, theirs in enumerate(all_gather_object(mine)):
        if theirs != mine:
            names = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise RuntimeError(f"{what}: rank {rank()} and rank {other_rank} differ in {len(names)} tensors "
                               f"(first: {', '.join(names[:5])}); every rank must hold identical state")
    return len(tensors)


def main_only(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: ``fn`` runs on rank 0 only (writing files); elsewhere the call does nothing and returns None.
    ``fn`` must not use collectives."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs) if is_main() else None

    return wrapper


# -- output ---------------------------------------------------------------------------------------------
def progress_disabled() -> bool | None:
    """tqdm's ``disable``: automatic on rank 0 (bars on a terminal), off on the others."""
    return None if is_main() else True


__all__ = ["active", "all_gather_cat", "all_gather_object", "all_gather_rows", "average_gradients", "barrier",
           "broadcast_buffers", "broadcast_object", "check_identical", "data_parallel", "digest", "is_main",
           "launched_world_size", "local_rank", "main_only", "main_then_broadcast", "progress_disabled",
           "random_state_kept", "rank", "rank_block", "rank_rows", "setup", "shard", "shard_bounds", "single_device",
           "sum_over_ranks", "sync_batchnorm", "world_size"]
