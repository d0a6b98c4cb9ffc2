"""Torch datasets and loaders over the preprocessing cache."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from shared.data.cache import CachedPart


class CachedDataset(Dataset):
    """Images in [0, 1] as float tensors [C, S, S] with their int labels."""

    def __init__(self, part: CachedPart, channels: int = 1) -> None:
        self.part = part
        self.channels = channels

    def __len__(self) -> int:
        return len(self.part)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(np.array(self.part.images[i], dtype=np.float32)).div_(255.0)
        x = x.unsqueeze(0)
        if self.channels != 1:
            x = x.expand(self.channels, -1, -1).contiguous()
        return x, int(self.part.labels[i])


class _PersistentShuffle(RandomSampler):
    """RandomSampler for a loader with persistent workers, in the order a loader without
    them gives: that one draws its workers' base seed from the shared generator before every
    epoch's permutation, a persistent one before the first only; this one draws the missing
    seeds itself, so a seed gives the same batches either way."""

    def __init__(self, data: Dataset, generator: torch.Generator) -> None:
        super().__init__(data, generator=generator)  # type: ignore[arg-type]
        self.epochs = 0

    def __iter__(self) -> Iterator[int]:
        if self.epochs:
            torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        self.epochs += 1
        yield from super().__iter__()


def make_loader(
    part: CachedPart,
    channels: int,
    batch_size: int,
    shuffle: bool,
    workers: int,
    seed: int,
) -> DataLoader:
    """A loader with persistent worker processes (when workers > 0) and an explicit shuffle
    seed; the batches depend on the seed only, not on the workers."""
    g = torch.Generator()
    g.manual_seed(seed)
    data = CachedDataset(part, channels)
    sampler = _PersistentShuffle(data, g) if shuffle and workers > 0 else None
    return DataLoader(
        data,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else None,
        sampler=sampler,
        drop_last=shuffle and len(part) > batch_size,  # no 1-image BatchNorm batches
        num_workers=workers,
        generator=g,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
    )
