"""`export_url_as`: put the current database's URL into the environment variables the app reads.

Apps that build their engine from `DATABASE_URL` at import time (12-factor settings) and env.py files
that read it need the variable set before they run: the plugin sets it in each process before any
conftest.py or test module is imported, and the template build sets it to the scratch database's
URL while env.py runs. The value is the configured driver's URL with the password intact (it is
for the app, never printed).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

from sqlalchemy.engine import URL

from .urls import render_for_driver

#: Saved values of exported variables: None = the variable was not set.
Saved = dict[str, "str | None"]


def export(names: Iterable[str], url: URL) -> Saved:
    """Set each variable to `url`; return the previous values for `restore`."""
    saved: Saved = {}
    value = render_for_driver(url)
    for name in names:
        saved[name] = os.environ.get(name)
        os.environ[name] = value
    return saved


def restore(saved: Mapping[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@contextmanager
def exported(names: Iterable[str], url: URL) -> Iterator[None]:
    """The variables point at `url` inside the block and are restored after it."""
    saved = export(names, url)
    try:
        yield
    finally:
        restore(saved)
