"""Helpers the tests (and bench/) share: Azurite, worker subprocesses, apps on a server, models.

One module a concern; a helper used by one test file stays in that file.
"""
