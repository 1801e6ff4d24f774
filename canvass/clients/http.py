"""The device's HTTP side of the sync protocol: login, device registration, push,
pull and the conflicts API, with retries.

Depends only on the wire structs (``canvass.sync.wire``), msgspec, httpx and
tenacity. Every call is retried with exponential backoff and full jitter on what
is worth retrying — connection errors, timeouts, 5xx (503 included) and 429 — a
bounded number of times; a 401 is answered once by refreshing the token (or
logging in again). Every other error is an RFC 9457 problem document, raised as
``ProblemError`` (``SeqGap`` for a push that starts after a hole).

Retrying a push is always safe: the server applies a ``(device_id, seq)`` at most
once and answers a repeat from the stored receipts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import msgspec
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from canvass.sync.wire import DeviceRegistration, PullResponse, PushRequest, PushResponse

API = "/api/v1"


class ProblemError(Exception):
    """The server refused a request (an RFC 9457 problem document)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        self.type = str(body.get("type") or "")
        self.code = str(body.get("code") or self.type.rsplit("/", 1)[-1] or status)
        self.detail = str(body.get("detail") or body.get("title") or "")
        super().__init__(f"{status} {self.code}: {self.detail}")


class SeqGap(ProblemError):
    """409: the push's first new seq is not ``last_applied_seq + 1``."""

    @property
    def expected_seq(self) -> int:
        return int(self.body["expected_seq"])


class TransientHttpError(Exception):
    """A 5xx or 429 answer: worth trying again."""

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        super().__init__(f"{response.status_code} from {response.request.method} {response.request.url.path}")


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, httpx.TransportError | TransientHttpError)


def is_seq_gap(status: int, body: dict[str, Any]) -> bool:
    code = str(body.get("code") or "") + " " + str(body.get("type") or "")
    return status == 409 and ("seq-gap" in code or "seq_gap" in code) and "expected_seq" in body


class RetryPolicy(msgspec.Struct, kw_only=True, frozen=True):
    """Exponential backoff with full jitter: the n-th wait is uniform in
    [0, min(max_wait, initial * 2**n)] seconds; at most ``attempts`` tries."""

    attempts: int = 6
    initial: float = 0.2
    max_wait: float = 5.0

    def retrying(self, before_sleep: Callable[[Any], None] | None = None) -> Retrying:
        return Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_random_exponential(multiplier=self.initial, max=self.max_wait),
            retry=retry_if_exception(is_transient),
            reraise=True,
            before_sleep=before_sleep,
        )


class SyncApi:
    """One user's authenticated session with the server.

    ``http`` is an ``httpx.Client`` (tests pass a Litestar ``TestClient``, which is
    one) or a base URL such as ``http://127.0.0.1:8000``.
    """

    def __init__(
        self,
        http: httpx.Client | str,
        *,
        email: str | None = None,
        password: str | None = None,
        access_token: str | None = None,
        refresh_token: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._owns_http = isinstance(http, str)
        self.http = httpx.Client(base_url=http, timeout=timeout) if isinstance(http, str) else http
        self.email = email
        self._password = password
        self.access_token = access_token
        self.refresh_token = refresh_token
        self.retry = retry or RetryPolicy()
        self.user_id: str | None = None
        self.role: str | None = None
        self.retries = 0  # transient failures retried (for reports)

    def close(self) -> None:
        if self._owns_http:
            self.http.close()

    # ------------------------------------------------------------ auth

    def login(self) -> None:
        if not (self.email and self._password):
            raise ProblemError(401, {"code": "unauthorized", "detail": "no credentials to log in with"})
        self._take_tokens(self._send("POST", f"{API}/auth/login", {"email": self.email, "password": self._password}))

    def _refresh(self) -> None:
        if self.refresh_token:
            try:
                self._take_tokens(self._send("POST", f"{API}/auth/refresh", {"refresh_token": self.refresh_token}))
                return
            except ProblemError:
                self.refresh_token = None
        self.login()

    def _take_tokens(self, response: httpx.Response) -> None:
        body = self._json_or_raise(response)
        self.access_token = body["access_token"]
        self.refresh_token = body.get("refresh_token")
        self.user_id = body.get("user_id", self.user_id)
        self.role = body.get("role", self.role)

    # ------------------------------------------------------------ transport

    def _send(
        self,
        method: str,
        path: str,
        json: Any = None,
        params: dict[str, Any] | None = None,
        *,
        content: bytes | None = None,
        auth: bool = False,
    ) -> httpx.Response:
        """One logical request, retried on transient failures."""

        def count(_state: Any) -> None:
            self.retries += 1

        for attempt in self.retry.retrying(before_sleep=count):
            with attempt:
                headers = {"Authorization": f"Bearer {self.access_token}"} if auth and self.access_token else {}
                if content is not None:
                    headers["Content-Type"] = "application/json"
                response = self.http.request(method, path, json=json, params=params, content=content, headers=headers)
                if response.status_code >= 500 or response.status_code == 429:
                    raise TransientHttpError(response)
        return response

    def request(
        self,
        method: str,
        path: str,
        json: Any = None,
        params: dict[str, Any] | None = None,
        *,
        content: bytes | None = None,
    ) -> httpx.Response:
        """An authenticated request; logs in first if needed and once more on 401."""
        if self.access_token is None:
            self.login()
        response = self._send(method, path, json, params, content=content, auth=True)
        if response.status_code == 401 and (self.refresh_token or self._password):
            self._refresh()
            response = self._send(method, path, json, params, content=content, auth=True)
        return response

    @staticmethod
    def _json_or_raise(response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"detail": response.text[:500]}
            if not isinstance(body, dict):
                body = {"detail": str(body)[:500]}
            if is_seq_gap(response.status_code, body):
                raise SeqGap(response.status_code, body)
            raise ProblemError(response.status_code, body)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def call(self, method: str, path: str, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        """An authenticated JSON call; raises ``ProblemError`` on 4xx."""
        return self._json_or_raise(self.request(method, path, json, params))

    # ------------------------------------------------------------ sync endpoints

    def register_device(self, registration: DeviceRegistration) -> int:
        """201 when new, 200 when the device was already registered to the caller."""
        response = self.request("POST", f"{API}/sync/devices", content=msgspec.json.encode(registration))
        self._json_or_raise(response)
        return response.status_code

    def push_raw(self, request: PushRequest) -> httpx.Response:
        """Send a push and return the raw answer (tests drop it to simulate a lost reply)."""
        return self.request("POST", f"{API}/sync/push", content=msgspec.json.encode(request))

    def push(self, request: PushRequest) -> PushResponse:
        response = self.push_raw(request)
        self._json_or_raise(response)
        return msgspec.json.decode(response.content, type=PushResponse)

    def pull(self, device_id: str, cursor: str, limit: int | None = None) -> PullResponse:
        params: dict[str, Any] = {"device_id": device_id, "cursor": cursor}
        if limit is not None:
            params["limit"] = limit
        response = self.request("GET", f"{API}/sync/pull", params=params)
        self._json_or_raise(response)
        return msgspec.json.decode(response.content, type=PullResponse)

    def conflicts(self, status: str | None = "open") -> list[dict[str, Any]]:
        params = {"status": status} if status else None
        body = self.call("GET", f"{API}/conflicts", params=params)
        return list(body["items"] if isinstance(body, dict) and "items" in body else body)

    def conflict(self, conflict_id: str) -> dict[str, Any]:
        return dict(self.call("GET", f"{API}/conflicts/{conflict_id}"))

    def resolve_conflict(self, conflict_id: str, choice: str, value: Any = None) -> dict[str, Any]:
        body: dict[str, Any] = {"choice": choice}
        if choice == "new_value":
            body["value"] = value
        return dict(self.call("POST", f"{API}/conflicts/{conflict_id}/resolve", body) or {})
