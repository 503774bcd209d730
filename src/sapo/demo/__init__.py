"""The built-in default run's own pieces: the supervised warm start of the tiny model on a built-in task."""
