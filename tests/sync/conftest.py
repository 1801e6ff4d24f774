"""Helpers for the sync tests: offline clients on the app's TestClient."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from canvass.clients.http import RetryPolicy
from canvass.clients.offline import OfflineClient
from tests.conftest import Person

# Tests never sleep long between retries.
FAST_RETRY = RetryPolicy(attempts=4, initial=0.01, max_wait=0.05)

DeviceFactory = Callable[..., OfflineClient]


def make_device(path: Path | str, client: Any, who: Person, *, push_batch: int = 100, **options: Any) -> OfflineClient:
    """A device of ``who`` with its replica at ``path``, logged in with the person's token."""
    options.setdefault("retry", FAST_RETRY)
    device = OfflineClient(str(path), client, access_token=who.token, push_batch=push_batch, **options)
    device.user_id = str(who.id)
    return device


@pytest.fixture
def devices(client: TestClient[Any], tmp_path: Path) -> Iterator[DeviceFactory]:
    made: list[OfflineClient] = []
    counter = itertools.count()

    def factory(who: Person, **options: Any) -> OfflineClient:
        device = make_device(tmp_path / f"device{next(counter)}.sqlite", client, who, **options)
        made.append(device)
        return device

    yield factory
    for device in made:
        device.close()


def rest(client: TestClient[Any], who: Person, method: str, path: str, **kwargs: Any) -> Any:
    """A REST call that must succeed; returns the JSON body (None for 204)."""
    response = client.request(method, path, headers=who.headers, **kwargs)
    assert response.status_code < 300, f"{method} {path}: {response.status_code} {response.text}"
    return response.json() if response.content else None


def bootstrap_state(client: TestClient[Any], who: Person, path: Path | str) -> dict[tuple[str, str], dict[str, Any]]:
    """What a brand-new device of ``who`` gets from a bootstrap pull (cursor 0)."""
    with make_device(path, client, who) as fresh:
        fresh.sync()
        return {(e, i): data for e, i, _v, data in fresh.replica.server_records()}


def replica_state(device: OfflineClient) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e, i): data for e, i, _v, data in device.replica.server_records()}
