"""The one training engine: loop, tasks, checkpoints, schedules, precision, distributed."""
