import json
from collections import Counter

import pytest

from sapo.data import ResumableSampler, num_full_batches
from sapo.errors import DataError


def stream(sampler, batch_sizes):
    return [sampler.next_batch(size) for size in batch_sizes]


def test_without_shuffle_batches_run_through_epochs_without_dropping():
    sampler = ResumableSampler(5, shuffle=False)
    assert sampler.next_batch(3) == [0, 1, 2]
    assert sampler.epoch == 0
    # the second batch straddles the boundary: the end of epoch 0, then the start of epoch 1
    assert sampler.next_batch(3) == [3, 4, 0]
    assert sampler.epoch == 1
    assert sampler.next_batch(3) == [1, 2, 3]
    assert sampler.next_batch(2) == [4, 0]
    assert sampler.epoch == 2
    assert sampler.next_batch(11) == [1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]  # spans three epochs
    assert sampler.epoch == 4


def test_each_epoch_is_a_fresh_permutation_fixed_by_the_seed():
    n = 7
    flat = [i for batch in stream(ResumableSampler(n, shuffle=True, seed=3), [4] * 7) for i in batch]
    epochs = [flat[k * n : (k + 1) * n] for k in range(4)]
    for order in epochs:
        assert sorted(order) == list(range(n))
    assert len({tuple(order) for order in epochs}) > 1  # orders change between epochs
    again = [i for batch in stream(ResumableSampler(n, shuffle=True, seed=3), [4] * 7) for i in batch]
    other = [i for batch in stream(ResumableSampler(n, shuffle=True, seed=4), [4] * 7) for i in batch]
    assert again == flat
    assert other != flat


@pytest.mark.parametrize("stop_after", [0, 1, 2, 3, 5, 8])
def test_resume_continues_exactly_across_epoch_boundaries(stop_after):
    sizes = [3, 4, 3, 5, 2, 6, 3, 4, 5, 1, 3]  # 10 items: batches cross several epoch ends
    reference = stream(ResumableSampler(10, shuffle=True, seed=11), sizes)

    first = ResumableSampler(10, shuffle=True, seed=11)
    served = stream(first, sizes[:stop_after])
    saved = json.loads(json.dumps(first.state_dict()))  # as a checkpoint would store it

    resumed = ResumableSampler(10, shuffle=True, seed=11)
    resumed.load_state_dict(saved)
    assert resumed.epoch == first.epoch
    served += stream(resumed, sizes[stop_after:])
    assert served == reference


def test_every_index_is_served_once_per_epoch_through_resumes():
    n, batch = 9, 4
    sampler = ResumableSampler(n, shuffle=True, seed=0)
    served = []
    for _ in range(9):  # 36 indices = 4 epochs, with a save/restore after every batch
        served += sampler.next_batch(batch)
        state = sampler.state_dict()
        sampler = ResumableSampler(n, shuffle=True, seed=0)
        sampler.load_state_dict(state)
    assert Counter(served) == {i: 4 for i in range(n)}
    assert sampler.epoch == 4


def test_state_from_another_dataset_or_seed_is_refused():
    state = ResumableSampler(10, seed=1).state_dict()
    with pytest.raises(DataError, match="num_items=10 but this run has 11"):
        ResumableSampler(11, seed=1).load_state_dict(state)
    with pytest.raises(DataError, match="seed=1 but this run has 2"):
        ResumableSampler(10, seed=2).load_state_dict(state)
    with pytest.raises(DataError, match="shuffle=True but this run has False"):
        ResumableSampler(10, seed=1, shuffle=False).load_state_dict(state)
    with pytest.raises(DataError, match="corrupt sampler state"):
        ResumableSampler(10, seed=1).load_state_dict({**state, "position": 10})


def test_empty_dataset_and_bad_batch_size_are_errors():
    with pytest.raises(DataError, match="empty dataset"):
        ResumableSampler(0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        ResumableSampler(3).next_batch(0)


def test_num_full_batches_counts_whole_batches_of_the_stream():
    assert num_full_batches(10, 4, 3) == 7  # 30 indices -> 7 batches of 4, 2 left over
    assert num_full_batches(8, 4, 2) == 4  # verl: len(dataloader)=2 per epoch x 2 epochs
