"""sapo-rl: reinforcement learning from verifiable rewards for language models, built around SAPO.

Layers (each imports only from those above it; a test checks it): ``sapo.errors``, ``sapo.run_dir``,
``sapo.core`` (torch-only algorithm), ``sapo.optim``, ``sapo.batch``, ``sapo.models``, ``sapo.rollout``,
``sapo.data``, ``sapo.rewards``, ``sapo.demo`` (the built-in default's warm start), ``sapo.config``,
``sapo.trainer``, ``sapo.cli``. Training runs in one process; there is no distributed layer yet. See
docs/ and the project's DESIGN.md.
"""

__version__ = "0.1.0"
