"""The trainer layer: the RL loop and its infrastructure (optimizer and schedule, checkpoints and resume,
metric sinks, validation metrics). Only this layer, ``config`` and ``cli`` read the config object."""
