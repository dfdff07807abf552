"""The integration tier runs the sync's worker and CLI as deploy/sql's least-privilege applier role."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module", autouse=True)
def least_privilege() -> Iterator[None]:
    """Each module's harnesses grant deploy/sql's roles for their profiles and log in with them.

    Capture keeps the owner's login (its own role is tested in test_least_privilege.py); a test
    that needs the owner (the dry run, the packaging test, the roles test itself) says so.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SYNC_TEST_LEAST_PRIVILEGE", "1")
        yield
