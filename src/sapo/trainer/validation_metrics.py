"""Validation metrics per data source: mean@k and the unbiased pass@k, named as verl names them.

With ``n`` sampled responses to a prompt of which ``c`` are correct, the probability that at least one of
``k`` responses drawn without replacement is correct is (Chen et al. 2021, "Evaluating Large Language Models
Trained on Code", arXiv 2107.03374, eq. 1):

    pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n - c + 1}^{n} (1 - k / i)

The product form avoids the huge binomials; when ``n - c < k`` every draw of ``k`` contains a correct answer
and pass@k = 1. The data-source value is the mean over its prompts. This is the combinatorial estimator, not
verl's bootstrap ``best@k``.

Names follow verl's ``val-core/<data_source>/<variable>/<metric>@<k>`` / ``val-aux/...`` scheme: the
headline numbers at the largest ``k`` (``mean@n`` of reward and acc, ``pass@n`` of acc) are ``val-core``;
smaller ``k``, standard deviations and counts are ``val-aux``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from statistics import fmean, pstdev

from sapo.errors import UserError


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one prompt: ``n`` samples, ``c`` correct (formula in the module docstring)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise UserError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    survive = 1.0
    for i in range(n - c + 1, n + 1):
        survive *= 1.0 - k / i
    return 1.0 - survive


def k_values(n: int) -> list[int]:
    """1, 2, 4, ... below n, and n itself (the k's reported for n samples per prompt)."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def validation_metrics(
    data_sources: Sequence[str],
    prompt_ids: Sequence,
    rewards: Sequence[float],
    correct: Sequence[bool | float] | None = None,
) -> dict[str, float]:
    """Aggregate per-response results (one entry per sampled response) into named metrics.

    ``prompt_ids`` groups the responses of one prompt (any hashable, e.g. the row index); every prompt of a
    data source must have the same number of responses (``val_kwargs.n``). ``correct`` is the binary
    accuracy of each response (verl's ``acc``); without it only reward metrics are produced.
    """
    if not len(data_sources) == len(prompt_ids) == len(rewards) or (
        correct is not None and len(correct) != len(rewards)
    ):
        raise UserError(
            "validation_metrics: data_sources, prompt_ids, rewards (and correct) must have one "
            "entry per response"
        )
    groups: dict[str, dict] = defaultdict(lambda: defaultdict(list))
    for i, (source, prompt) in enumerate(zip(data_sources, prompt_ids)):
        groups[source][prompt].append(i)
    metrics: dict[str, float] = {}
    for source, prompts in sorted(groups.items()):
        metrics.update(_source_metrics(source, list(prompts.values()), rewards, correct))
    return metrics


def _source_metrics(source: str, prompts: list[list[int]], rewards, correct) -> dict[str, float]:
    sizes = {len(indices) for indices in prompts}
    if len(sizes) != 1:
        raise UserError(
            f"data source {source!r}: prompts have different numbers of responses {sorted(sizes)}; "
            "every prompt needs val_kwargs.n responses"
        )
    n = sizes.pop()
    out = {f"val-aux/{source}/num_prompts": float(len(prompts))}
    variables = {"reward": [[float(rewards[i]) for i in p] for p in prompts]}
    if correct is not None:
        variables["acc"] = [[float(correct[i]) for i in p] for p in prompts]
    for name, per_prompt in variables.items():
        out[f"val-core/{source}/{name}/mean@{n}"] = fmean(fmean(values) for values in per_prompt)
        if n > 1:
            out[f"val-aux/{source}/{name}/std@{n}"] = fmean(pstdev(values) for values in per_prompt)
    if correct is not None:
        for k in k_values(n):
            section = "val-core" if k == n else "val-aux"
            out[f"{section}/{source}/acc/pass@{k}"] = fmean(
                pass_at_k(n, sum(1 for v in values if v > 0.5), k) for values in variables["acc"]
            )
    return out
