"""Torch datasets and loaders over the preprocessing cache."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

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


def make_loader(
    part: CachedPart,
    channels: int,
    batch_size: int,
    shuffle: bool,
    workers: int,
    seed: int,
) -> DataLoader:
    """A loader with worker processes (when workers > 0) and an explicit shuffle seed."""
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(
        CachedDataset(part, channels),
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=shuffle and len(part) > batch_size,  # no 1-image BatchNorm batches
        num_workers=workers,
        generator=g,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )
