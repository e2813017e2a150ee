"""The pure replay engine: tasks, the orchestration context, and the executor."""
