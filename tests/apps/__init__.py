"""Apps the durability tests run in worker subprocesses, and the harness that drives them."""
