"""A seeded, resumable stream of dataset indices.

The stream is epoch 0's order, then epoch 1's, and so on; with ``shuffle`` epoch ``e``'s order is a
permutation drawn from ``numpy.random.default_rng([seed, e])`` (so it depends on nothing but the seed and
the epoch), without it ``0..n-1``. :meth:`ResumableSampler.next_batch` cuts the next ``batch_size``
indices off the stream.

Epoch boundary: a batch that reaches the end of an epoch is filled from the start of the next one (a
continuous stream). Nothing is dropped, so every index is served exactly once per epoch; a straddling
batch can hold the same index twice (end of one epoch, start of the next). verl instead drops the last
incomplete batch of each epoch (``drop_last=True``) and never mixes epochs in a batch.

Resume: :meth:`state_dict` is ``{seed, shuffle, num_items, epoch, position}``; a sampler restored from it
serves exactly the indices the original would have served next, never replaying or skipping one.
"""

from __future__ import annotations

import numpy as np

from sapo.errors import DataError


class ResumableSampler:
    def __init__(self, num_items: int, *, shuffle: bool = True, seed: int = 0):
        if num_items < 1:
            raise DataError(f"cannot sample from an empty dataset (num_items={num_items})")
        self.num_items = num_items
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0  # the epoch of the next index to serve
        self.position = 0  # offset of the next index within that epoch's order
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_items)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_items)

    def next_batch(self, batch_size: int) -> list[int]:
        """The next ``batch_size`` indices of the stream (crossing into the next epoch as needed)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        batch: list[int] = []
        while len(batch) < batch_size:
            take = min(batch_size - len(batch), self.num_items - self.position)
            batch.extend(int(i) for i in self._order[self.position : self.position + take])
            self.position += take
            if self.position == self.num_items:
                self.epoch += 1
                self.position = 0
                self._order = self._epoch_order(self.epoch)
        return batch

    def state_dict(self) -> dict:
        return {
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_items": self.num_items,
            "epoch": self.epoch,
            "position": self.position,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``; the dataset size, seed and shuffle must match the saved ones."""
        for key in ("num_items", "seed", "shuffle"):
            if state[key] != getattr(self, key):
                raise DataError(
                    f"cannot resume the sampler: the checkpoint has {key}={state[key]!r} but this run has "
                    f"{getattr(self, key)!r}; resume with the same data files, data.seed and data.shuffle"
                )
        if not 0 <= state["position"] < self.num_items or state["epoch"] < 0:
            raise DataError(f"corrupt sampler state {state}: position must be in 0..{self.num_items - 1}")
        self.epoch = state["epoch"]
        self.position = state["position"]
        self._order = self._epoch_order(self.epoch)


def num_full_batches(num_items: int, batch_size: int, epochs: int) -> int:
    """How many ``batch_size`` batches ``epochs`` passes over ``num_items`` give, counting whole batches
    only: ``floor(epochs * num_items / batch_size)`` (verl's ``len(dataloader) * total_epochs`` when
    ``num_items`` is a multiple of ``batch_size``)."""
    return (epochs * num_items) // batch_size
