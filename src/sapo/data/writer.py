"""Write rows in verl's layout to parquet or jsonl."""

from __future__ import annotations

import json
from pathlib import Path

from sapo.errors import DataError


def write_rows(rows: list[dict], path: str | Path) -> Path:
    """Write ``rows`` to ``path`` (``.parquet`` or ``.jsonl``), dropping the private ``_source`` key."""
    path = Path(path)
    rows = [{k: v for k, v in row.items() if k != "_source"} for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".jsonl":
        with path.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    else:
        raise DataError(f"cannot write {path}: use a .parquet or .jsonl file name")
    return path
