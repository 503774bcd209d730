"""sapo-rl: reinforcement learning from verifiable rewards for language models, built around SAPO.

Layers (each imports only from those above it): ``sapo.core`` (torch-only algorithm), ``sapo.batch``,
``sapo.models``, ``sapo.rollout``, ``sapo.data``, ``sapo.rewards``, ``sapo.distributed``, ``sapo.trainer``,
``sapo.config``, ``sapo.cli``. See docs/ and the project's DESIGN.md.
"""

__version__ = "0.1.0"
