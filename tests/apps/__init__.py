"""Apps the tests run in subprocesses or servers (driven by ``tests/support/``)."""
