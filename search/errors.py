"""Errors of the search stage: one sentence each, printed by the `jcw` dispatcher without a traceback."""
from __future__ import annotations


class SearchError(ValueError):
    """A search, model, genome or export request that cannot be carried out; the message says why."""
