"""``python -m sapo``: the `sapo` command (what ``torchrun -m sapo train ...`` runs in each process)."""

import sys

from sapo.cli import main

sys.exit(main())
