"""The measurement over several devices (`attack.devices`), with the counts of one device.

The targets are dealt to the shards round-robin in target order (attack.measure.core.Probe)
and every prediction of a target is made on its shard; a member source crafts where its
model lives, any other source on the shards round-robin in source order, on copies of the
members that live elsewhere. Each shard's items run in their order on a thread of its own
(torch releases the GIL in its kernels), and the results are merged in the items' order.
Nothing a source or a target computes depends on the others (every random draw is seeded
by the source or the image), so the counts are those of one device: bit for bit on the CPU;
on GPUs of one model as well, with cuDNN's deterministic kernels chosen without
benchmarking (`reproducible_kernels`), which the measurement uses on one device too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import TypeVar

import torch

from shared.config.attack import AttackConfig
from shared.devices import present_gpus, require_present, visible_gpus
from shared.errors import AttackError

T = TypeVar("T")
R = TypeVar("R")


def attack_devices(cfg: AttackConfig, gpus: int | None = None) -> tuple[torch.device, ...]:
    """The devices `attack.devices` names on this host (`gpus` replaces the visible GPU
    count): "auto" is every visible GPU, else the CPU. A listed GPU that is not there is a
    ConfigError naming it; bfloat16 predictions on a CPU an AttackError."""
    count = visible_gpus() if gpus is None else gpus
    if cfg.devices.auto:
        devices = tuple(torch.device(d) for d in present_gpus(count) or ["cpu"])
    else:
        for i, device in enumerate(cfg.devices):
            require_present(
                f"attack.devices[{i}]", device, count, "list only the devices present, or write auto"
            )
        devices = tuple(torch.device(d) for d in cfg.devices)
    if cfg.precision == "bfloat16" and any(d.type != "cuda" for d in devices):
        raise AttackError("attack.precision bfloat16 needs a CUDA device; use float32 on the CPU")
    return devices


@contextmanager
def reproducible_kernels() -> Iterator[None]:
    """cuDNN's deterministic algorithms, picked by its heuristics rather than by timing (the
    training loop turns benchmarking on): one source crafts the same images on any GPU of
    one model, run after run. The previous settings come back on exit."""
    cudnn = torch.backends.cudnn
    saved = cudnn.benchmark, cudnn.deterministic
    cudnn.benchmark, cudnn.deterministic = False, True
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.deterministic = saved


def run_sharded(
    items: Sequence[T],
    shard_of: Callable[[T], int],
    work: Callable[[T], R],
    shards: tuple[torch.device, ...],
    done: Callable[[], None] = lambda: None,
) -> list[R]:
    """work(item) for every item; each shard's items in their order on a thread of its own
    (in this thread when one shard has them all), `done` after each. The results come in
    the items' order. The first failure stops every shard at its next item and is raised."""
    groups: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(shard_of(item), []).append(i)
    results: list[R | None] = [None] * len(items)
    if len(groups) <= 1:
        for i, item in enumerate(items):
            results[i] = work(item)
            done()
        return results  # type: ignore[return-value]
    stop = threading.Event()
    errors: list[BaseException] = []
    threads = torch.get_num_threads()  # a new thread's kernels would take the default count
    lock = threading.Lock()

    def shard(k: int, indices: list[int]) -> None:
        try:
            torch.set_num_threads(threads)
            device = shards[k]
            with torch.cuda.device(device) if device.type == "cuda" else nullcontext():
                for i in indices:
                    if stop.is_set():
                        return
                    results[i] = work(items[i])
                    with lock:
                        done()
        except BaseException as e:  # raised in the calling thread
            errors.append(e)
            stop.set()

    workers = [
        threading.Thread(target=shard, args=(k, indices), name=f"attack-shard-{k}", daemon=True)
        for k, indices in groups.items()
    ]
    for w in workers:
        w.start()
    try:
        for w in workers:
            w.join()
    except BaseException:  # an interrupt: every shard stops after its current item
        stop.set()
        for w in workers:
            w.join()
        raise
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]
