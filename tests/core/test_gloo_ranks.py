"""The normalisation convention under real torch.distributed (gloo, 2 processes) with DDP-style averaging.

A tiny linear "policy" ``log_prob = old_log_prob + features @ w`` shares the parameter ``w`` across ranks.
Each rank all-reduces its token / sequence counts to get the mini-batch's global counts, runs its
micro-batches with loss x world_size, and averages ``w.grad`` over ranks (what DDP does). The result must
equal the gradient of one pass over the whole mini-batch in a single process.
"""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sapo.core.aggregation import num_valid_seqs
from sapo.core.losses import get_policy_loss

D = torch.float64
B, T, F = 8, 5, 3


def mini_batch():
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(B, T, F, generator=gen, dtype=D)  # [B, T, F]
    old = -torch.rand(B, T, generator=gen, dtype=D) * 2  # [B, T]
    adv = torch.randn(B, 1, generator=gen, dtype=D).expand(B, T).contiguous()  # [B, T]
    mask = torch.arange(T).unsqueeze(0) < torch.tensor([[5], [1], [3], [2], [4], [5], [0], [2]])  # [B, T]
    w0 = torch.tensor([0.3, -0.2, 0.1], dtype=D)
    return features, old, adv, mask, w0


def loss_of(rows, w, mode, counts):
    features, old, adv, mask, _ = mini_batch()
    new = old[rows] + features[rows] @ w  # [b, T]
    loss, _ = get_policy_loss("sapo")(old[rows], new, adv[rows], mask[rows], loss_agg_mode=mode, **counts)
    return loss


def rank_main(rank, world, init_file, mode, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    _, _, _, mask, w0 = mini_batch()
    rows = list(range(rank * B // world, (rank + 1) * B // world))
    local = torch.tensor([int(mask[rows].sum()), num_valid_seqs(mask[rows])], dtype=torch.long)
    dist.all_reduce(local)  # global token and sequence counts of the mini-batch
    counts = {"global_num_tokens": int(local[0]), "global_num_seqs": int(local[1])}
    w = w0.clone().requires_grad_(True)
    for micro in (rows[:1], rows[1:]):  # two micro-batches of unequal size per rank
        (loss_of(micro, w, mode, counts) * world).backward()
    dist.all_reduce(w.grad)
    w.grad /= world  # DDP averages gradients
    if rank == 0:
        torch.save(w.grad, result_file)
    dist.destroy_process_group()


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_two_gloo_ranks_match_one_pass(tmp_path, monkeypatch, mode):
    _, _, _, _, w0 = mini_batch()
    w = w0.clone().requires_grad_(True)
    loss_of(list(range(B)), w, mode, {}).backward()
    result_file = tmp_path / "grad.pt"
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(rank_main, args=(2, str(tmp_path / "init"), mode, str(result_file)), nprocs=2, join=True)
    torch.testing.assert_close(torch.load(result_file), w.grad, rtol=0, atol=1e-10)
