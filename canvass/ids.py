"""Record ids are UUIDv7: time-ordered (good index locality) and made anywhere,
so a record created offline on a rep's phone keeps its id forever."""

from __future__ import annotations

import uuid

from uuid_utils.compat import uuid7


def new_id() -> uuid.UUID:
    return uuid7()
