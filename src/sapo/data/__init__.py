"""Data: rows in verl's parquet/jsonl layout, prompt rendering, a resumable sampler, built-in tasks.

Importing this package does not import torch or transformers (reward worker processes import it).
"""

from __future__ import annotations

from sapo.data.dataset import RLDataset
from sapo.data.rows import BadRow, LoadedRows, load_rows, read_rows, row_problem
from sapo.data.sampler import ResumableSampler, num_full_batches
from sapo.data.writer import write_rows

__all__ = [
    "BadRow",
    "LoadedRows",
    "RLDataset",
    "ResumableSampler",
    "load_rows",
    "num_full_batches",
    "read_rows",
    "row_problem",
    "write_rows",
]
