"""Run under torchrun by the distributed tests: join one gloo process group, then run ``sapo train`` for
each list of overrides in the JSON file given as the first argument (the trainer uses the existing group,
as any script that calls ``init_process_group`` itself)."""

import json
import sys
from pathlib import Path

import torch.distributed as dist

from sapo.cli import main

if __name__ == "__main__":
    dist.init_process_group("gloo")
    status = 0
    for overrides in json.loads(Path(sys.argv[1]).read_text()):
        status = main(["train", *overrides]) or status
    dist.destroy_process_group()
    sys.exit(status)
