"""Errors of the search stage: one sentence each, printed by the `jcw` dispatcher without a traceback."""
from __future__ import annotations


class SearchError(ValueError):
    """A search, model, genome or export request that cannot be carried out; the message says why."""


class DeviceMeasureError(SearchError):
    """What the search stage made could not be measured because the device failed (unreachable, runner
    crashed, ...): not a mistake in the request, so `jcw` exits with its device-failure status."""
