"""The access gate: who is calling, may they, and are they within their rate, all before any body byte is read.

FastAPI reads (and parses) a request's body before it runs the route's dependencies, so a check made only there lets
anyone without a key make the service read a large body first. The gate runs in the ASGI layer instead, on the route
the request will reach:

- routes that depend on the API key (`get_principal`, `require(...)`): the key is checked (401), the key's rate limit
  taken (429 with Retry-After), then its role (403), with the same answers the dependencies give: the route's role
  checks themselves, which ask the access policy (service/access/policy.py) whether the key's role may do the route's
  action;
- routes that depend on a console session (`session_guard`, the console's `require_user`): for requests that carry a
  body, the session is checked first (the console's sign-in answer);
- anything else (health checks, static files, unknown paths) goes through untouched.

A refusal is made by the app's own exception handler for the error raised, so it looks exactly like one made by the
route; it closes the connection when a body was announced, since that body is never read.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.access.rate_limit import RateLimiter, retry_after_header
from service.api.auth import ROLE_CHECKS, get_principal
from service.api.errors import RequestRejected
from service.metrics import ServiceMetrics

SessionGuard = Callable[[Request], Awaitable[Any]]


@dataclass(frozen=True)
class RouteChecks:
    needs_key: bool = False
    role_checks: tuple[Callable[..., Awaitable[Any]], ...] = ()
    needs_session: bool = False


OPEN = RouteChecks()


class BodyReadBeforeCheck(RuntimeError):
    """A check of the gate tried to read the request body: a bug, the gate must never do that."""


async def _no_body() -> Message:
    raise BodyReadBeforeCheck("the access gate must not read the request body")


class AccessGate:
    def __init__(
        self, app: ASGIApp, limiter: RateLimiter, metrics: ServiceMetrics | None = None, session_guard: SessionGuard | None = None
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.metrics = metrics
        self.session_guard = session_guard
        self._routes: list[tuple[RouteContext, RouteChecks]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = self._policy(scope)
        has_body = _announces_body(scope)
        if not policy.needs_key and not (policy.needs_session and has_body and self.session_guard is not None):
            await self.app(scope, receive, send)
            return
        request = Request(scope, _no_body)
        try:
            if policy.needs_key:
                principal = await get_principal(request)
                wait_s = self.limiter.acquire(principal.key_id, principal.role)
                if wait_s > 0:
                    if self.metrics is not None:
                        self.metrics.rate_limited.labels(principal.role).inc()
                    retry = retry_after_header(wait_s)
                    raise RequestRejected(
                        f"too many requests for this key (its {principal.role} rate limit): retry in {retry} s",
                        429,
                        {"Retry-After": retry},
                    )
                for check in policy.role_checks:
                    await check(principal)
            elif self.session_guard is not None:
                await self.session_guard(request)
        except Exception as exc:
            handler = _handler_for(scope, exc)
            if handler is None:
                raise
            response = await handler(request, exc)
            await response(scope, _no_body, _closing(send) if has_body else send)
            return
        await self.app(scope, receive, send)

    def _policy(self, scope: Scope) -> RouteChecks:
        if self._routes is None:  # the app's routes, once all are in (FastAPI's effective routes: prefixes applied)
            app = scope.get("app")  # Starlette puts the application in the scope before its middleware runs
            routes = list(iter_route_contexts(getattr(getattr(app, "router", None), "routes", [])))
            self._routes = [(route, self._policy_of(route)) for route in routes]
        for route, policy in self._routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return policy
        return OPEN

    def _policy_of(self, route: RouteContext) -> RouteChecks:
        dependant = getattr(route, "dependant", None) if isinstance(route.original_route, APIRoute) else None
        if dependant is None:
            return OPEN
        calls: list[Any] = []
        pending = [dependant]
        while pending:
            dependant = pending.pop()
            calls.append(dependant.call)
            pending.extend(dependant.dependencies)
        return RouteChecks(
            needs_key=get_principal in calls,
            role_checks=tuple(call for call in calls if call in ROLE_CHECKS),
            needs_session=self.session_guard is not None and self.session_guard in calls,
        )


def _announces_body(scope: Scope) -> bool:
    headers = dict(scope["headers"])
    return headers.get(b"content-length", b"0") not in (b"0", b"") or b"transfer-encoding" in headers


def _handler_for(scope: Scope, exc: Exception) -> Callable[[Request, Exception], Awaitable[Any]] | None:
    """The app's exception handler for `exc` (the nearest class in its MRO), as the app's own middleware would pick it."""
    handlers: dict[Any, Callable[..., Any]] = getattr(scope.get("app"), "exception_handlers", {})
    handler = next((handlers[cls] for cls in type(exc).__mro__ if cls in handlers), None)
    if handler is None:
        return None
    if inspect.iscoroutinefunction(handler):
        return handler
    found = handler

    async def in_thread(request: Request, error: Exception) -> Any:
        return await run_in_threadpool(found, request, error)

    return in_thread


def _closing(send: Send) -> Send:
    """`send`, with `Connection: close` on the response: the announced body is never read, so the connection ends."""

    async def closing_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return closing_send
