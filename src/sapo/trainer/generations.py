"""Generations written to disk: the text a run produced, one JSON object per response.

- ``trainer.rollout_data_dir``: every training step's rollout goes to ``<dir>/<step>.jsonl``;
- ``trainer.validation_data_dir``: every validation's responses go to ``<dir>/<step>.jsonl``
  (step 0 is the validation before training);
- ``trainer.log_val_generations = N``: the first N validation responses (dataset order, so the same
  prompts at every validation) are appended to ``<run_dir>/val_generations.jsonl`` and printed.

A record has verl's ``_dump_generations`` fields (``input``, ``output``, ``gts``, ``score``, ``step``),
plus ``data_source``, the reward function's extra values (e.g. ``acc``) and, for training rollouts, the
response's ``advantage`` (the mean of its token advantages; one number per response for outcome
estimators such as GRPO).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sapo.run_dir import VAL_GENERATIONS_FILE


def generation_records(scored, step: int, advantages: torch.Tensor | None = None, mask=None) -> list[dict]:
    """One record per response of a :class:`sapo.trainer.rollout_step.ScoredRollout`.

    ``advantages`` [N, R] and ``mask`` [N, R] (the response mask) add each response's mean advantage."""
    extra = scored.reward.extra_info
    records = []
    for i, (item, text, score) in enumerate(zip(scored.items, scored.responses, scored.reward.scores)):
        record = {
            "step": step,
            "data_source": item["data_source"],
            "input": item["prompt_text"],
            "output": text,
            "gts": item["ground_truth"],
            "score": float(score),
        }
        record.update({name: _plain(values[i]) for name, values in extra.items()})
        records.append(record)
    if advantages is not None:
        per_response = (advantages * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # [N]
        for record, value in zip(records, per_response.tolist()):
            record["advantage"] = value
    return records


def _plain(value):
    """A JSON-writable value (numbers, text, None; anything else as its text)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return str(value)


def dump_generations(directory: str | Path, step: int, records: list[dict]) -> Path:
    """Write ``records`` to ``<directory>/<step>.jsonl`` (verl's file naming); return the path."""
    path = Path(directory) / f"{step}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        out.writelines(json.dumps(record, default=str) + "\n" for record in records)
    return path


def append_val_generations(run_dir: Path, records: list[dict]) -> Path:
    """Append records to ``<run_dir>/val_generations.jsonl`` (metrics.jsonl holds numbers only)."""
    path = Path(run_dir) / VAL_GENERATIONS_FILE
    with path.open("a") as out:
        out.writelines(json.dumps(record, default=str) + "\n" for record in records)
    return path


def format_val_generations(records: list[dict], width: int = 200) -> str:
    """The console block for ``trainer.log_val_generations``: prompt, response and score of each."""
    lines = []
    for record in records:
        lines.append(f"[val step {record['step']}] score={record['score']:.4g}  ({record['data_source']})")
        lines.append("  prompt:   " + _one_line(record["input"], width))
        lines.append("  response: " + _one_line(record["output"], width))
        lines.append("  expected: " + _one_line(str(record["gts"]), width))
    return "\n".join(lines)


def _one_line(text: str, width: int) -> str:
    flat = text.replace("\n", "\\n")
    return flat if len(flat) <= width else flat[: width - 3] + "..."
