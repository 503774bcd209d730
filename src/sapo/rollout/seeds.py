"""Sampling seeds that do not depend on how the prompts are split between processes or batches.

A response is a function of its prompt, the weights, the sampling parameters and one seed, nothing else:
sample ``j`` of a prompt draws its uniforms from a generator seeded with ``sample_seed(prompt_seed, j)``,
and the trainer gives prompt ``i`` of step ``t`` the seed ``rollout_seeds(trainer.seed, TRAIN_STREAM, t,
[i])``: from the prompt's place in the global batch and the step, never from the rank or the batch it was
generated in. So 1, 2 or 4 processes, or validation batches of any size, draw the same responses.

Seeds are mixed with numpy's ``SeedSequence`` (a documented hash of a list of integers), so nearby
(step, position) pairs give unrelated streams.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TRAIN_STREAM = 0
VALIDATION_STREAM = 1


def _mix(*numbers: int) -> int:
    state = np.random.SeedSequence([int(n) % 2**63 for n in numbers]).generate_state(1, np.uint64)
    return int(state[0]) >> 1  # 63 bits: fits torch.Generator.manual_seed and every int64 field


def rollout_seeds(base_seed: int, stream: int, step: int, positions: Sequence[int]) -> list[int]:
    """One seed per prompt position (``stream``: ``TRAIN_STREAM`` or ``VALIDATION_STREAM``)."""
    return [_mix(base_seed, stream, step, position) for position in positions]


def sample_seed(prompt_seed: int, sample: int) -> int:
    """The seed of sample ``sample`` (0 .. n-1) of a prompt."""
    return _mix(prompt_seed, sample)
