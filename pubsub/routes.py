"""Routes declared once: method, path, who may call, query parameters, replies.

A :class:`Route` is data. From the declarations (``pubsub.api`` holds every route of the
system) derive what would otherwise be written by hand in several places each:

- the router: :func:`mount` binds each declared route to its handler;
- the token check: :func:`pubsub.access.guard` asks each route's kind of token;
- the query parsing: a route's ``query`` model parses and checks ``request.query`` before the
  handler runs (unknown parameters refused), and the handler reads the result with
  :func:`params`;
- the OpenAPI document: :func:`paths` (see ``pubsub.openapi``).

Why not a library: aiohttp-pydantic binds parameters to class-based views and answers bad
input in its own error shape; the error replies of this API (their codes and their messages)
are a contract that clients and checks rely on, so the small registry here keeps them
exactly.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast, get_args

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo
from pydantic_core import core_schema

from pubsub import tenants
from pubsub.http import ErrorReply, Refusal
from pubsub.settings import Settings

Auth = Literal["publish", "read", "admin", "open"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Q = TypeVar("Q", bound="Query")

REF = "#/components/schemas/{model}"

# What each error status means wherever it is answered; a route may say more (``replies``).
ERRORS: dict[int, str] = {
    400: "Malformed JSON, bad parameter or header.",
    401: "Missing or wrong bearer token.",
    403: "The token may not do this, or not as the tenant `X-Scope-OrgID` names.",
    408: "The body did not arrive within `PUBSUB_BODY_READ_TIMEOUT`.",
    413: "Body or batch over the limit.",
    415: "Not application/json (UTF-8).",
    422: "Schema violations, with the index and field of each.",
    429: "Busy, the broker is unavailable, or the tenant is past its rate or its live "
    "streams; retry after `Retry-After` seconds.",
    503: "Broker or database unavailable; retry after `Retry-After` seconds.",
}


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


class Query(BaseModel):
    """Query parameters of a route. Unknown parameters are refused; a field's validator
    raises ``ValueError`` with the message the client gets (400)."""

    model_config = ConfigDict(frozen=True)


@dataclass(frozen=True)
class UpTo:
    """Field metadata: an integer from 1 to the value of ``setting``, which the running
    service's settings give (and its OpenAPI document shows)."""

    setting: str

    def __get_pydantic_core_schema__(
        self, source: Any, handler: Callable[[Any], core_schema.CoreSchema]
    ) -> core_schema.CoreSchema:
        return core_schema.with_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: Callable[[Any], dict[str, Any]]
    ) -> dict[str, Any]:
        return {**handler(schema), "minimum": 1, "x-maximum-setting": self.setting}

    def _check(self, value: int | None, info: ValidationInfo) -> int | None:
        # Route.parse always validates with the service's settings as context.
        settings: Settings = cast(dict[str, Any], info.context)["settings"]
        bound = getattr(settings, self.setting)
        if value is not None and not 1 <= value <= bound:
            raise ValueError(f"{info.field_name} must be between 1 and {bound}")
        return value


@dataclass(frozen=True)
class Reply:
    """One documented answer: what it means and what its body is.

    ``schema`` is a type whose JSON schema is a component (a TypedDict, a model), ``list`` of
    one, an OpenAPI schema as a dict, or ``None`` for a body the document does not describe.
    """

    description: str
    schema: Any = None
    media: str | tuple[str, ...] = "application/json"  # several: the request's decides


@dataclass(frozen=True)
class Header:
    """A request header the handler reads, for the document."""

    name: str
    description: str
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True, kw_only=True)
class Route:
    """One route of one service, declared once (see the module's docstring)."""

    method: str
    path: str
    summary: str
    description: str = ""
    auth: Auth = "open"
    query: type[Query] | None = None
    headers: tuple[Header, ...] = ()
    # Media type -> schema, as in Reply.schema.
    body: Mapping[str, Any] | None = None
    replies: Mapping[int, Reply] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    # Where a protocol answers its errors otherwise (Loki: plain text), beside the JSON ones
    # that the shared middleware gives (401, 413 from aiohttp).
    error_media: tuple[str, ...] = ("application/json",)
    # Types that raw schemas (dicts) of this route refer to by ``ref``.
    uses: tuple[Any, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}"

    def parse(self, request: web.Request, settings: Settings) -> Query:
        """The route's query parameters, checked; :class:`Refusal` (400) saying what is
        wrong with the first bad one."""
        if self.query is None:
            raise TypeError(f"{self.name} declares no query parameters")
        given = {name: request.query[name] for name in request.query}
        known = set(self.query.model_fields)
        unknown = set(given) - known
        if unknown:
            raise Refusal(
                400,
                f"unknown query parameter(s): {', '.join(sorted(unknown)[:5])};"
                f" known: {', '.join(sorted(known))}",
            )
        try:
            return self.query.model_validate(given, context={"settings": settings})
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            raise Refusal(400, str(first["msg"]).removeprefix("Value error, ")) from None

    def __hash__(self) -> int:
        return hash(self.name)


_PARAMS = web.RequestKey("params", Query)


def params(request: web.Request, kind: type[Q]) -> Q:
    """The query parameters of the route serving ``request``, as its ``query`` model parsed
    them."""
    value = request.get(_PARAMS)
    if not isinstance(value, kind):
        raise TypeError(f"{request.path} declares no {kind.__name__} parameters")
    return value


def mount(
    app: web.Application,
    routes: Sequence[Route],
    handlers: Mapping[Route, Handler],
    settings: Settings,
) -> None:
    """Add each declared route to ``app``'s router, bound to its handler; the query model is
    applied before the handler runs."""
    missing = [r.name for r in routes if r not in handlers]
    if missing:
        raise ValueError(f"no handler for {', '.join(missing)}")
    for route in routes:
        app.router.add_route(route.method, route.path, _bind(route, handlers[route], settings))


def _bind(route: Route, handler: Handler, settings: Settings) -> Handler:
    if route.query is None:
        return handler

    async def parsed(request: web.Request) -> web.StreamResponse:
        request[_PARAMS] = route.parse(request, settings)
        return await handler(request)

    return parsed


def tokens(settings: Settings) -> dict[Auth, str]:
    return {"publish": settings.publish_token, "read": settings.read_token}


def listing(routes: Iterable[Route]) -> list[str]:
    """``METHOD /path`` of each route, for a service's index."""
    return [r.name for r in routes]


# --- the OpenAPI document --------------------------------------------------------------------

# A bearer token when the service is configured with one (PUBSUB_*_TOKEN), none otherwise.
OPTIONAL_BEARER: list[dict[str, list[str]]] = [{"bearer": []}, {}]


def paths(routes: Iterable[Route], settings: Settings) -> dict[str, Any]:
    """The ``paths`` of an OpenAPI 3.1 document for ``routes``."""
    out: dict[str, Any] = {}
    for route in routes:
        out.setdefault(route.path, {})[route.method.lower()] = _operation(route, settings)
    return out


def models(routes: Iterable[Route]) -> list[Any]:
    """The types the routes' documents refer to, each once, in order."""
    found: list[Any] = []
    for route in routes:
        schemas = [reply.schema for reply in route.replies.values()]
        schemas += list((route.body or {}).values())
        if route.errors:
            schemas.append(ErrorReply)
        for schema in [*schemas, *route.uses]:
            kind = _component(schema)
            if kind is not None and kind not in found:
                found.append(kind)
    return found


def _component(schema: Any) -> Any:
    if isinstance(schema, dict) or schema is None:
        return None
    args = get_args(schema)
    return args[0] if getattr(schema, "__origin__", None) is list else schema


def _schema(schema: Any) -> dict[str, Any]:
    if isinstance(schema, dict):
        return schema
    kind = _component(schema)
    name = getattr(kind, "__name__", "Schema")
    if kind is not schema:
        return {"type": "array", "items": ref(name)}
    return ref(name)


def _content(schema: Any, media: str) -> dict[str, Any]:
    return {media: {"schema": _schema(schema)}}


def _operation(route: Route, settings: Settings) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": route.summary}
    if route.description:
        op["description"] = route.description
    if route.auth != "open":
        op["security"] = OPTIONAL_BEARER
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", route.path)
    ]
    parameters += [*_query_parameters(route.query, settings)] if route.query else []
    parameters += [
        {"name": h.name, "in": "header", "required": False, "schema": dict(h.schema),
         "description": h.description}
        for h in route.headers
    ]  # fmt: skip
    if route.auth not in ("open", "admin"):
        parameters.append(_SCOPE_HEADER)
    if parameters:
        op["parameters"] = parameters
    if route.body is not None:
        content: dict[str, Any] = {}
        for media, schema in route.body.items():
            content.update(_content(schema, media))
        op["requestBody"] = {"required": True, "content": content}
    responses: dict[str, Any] = {}
    for status, reply in route.replies.items():
        answer: dict[str, Any] = {"description": reply.description}
        if reply.schema is not None:
            kinds = (reply.media,) if isinstance(reply.media, str) else reply.media
            answer["content"] = {k: v for m in kinds for k, v in _content(reply.schema, m).items()}
        responses[str(status)] = answer
    # Every guarded route: a token that may not, or a tenant it does not hold.
    errors = sorted({*route.errors, 403} if route.auth != "open" else set(route.errors))
    for status in errors:
        error: dict[str, Any] = {}
        for media in route.error_media:
            schema = ErrorReply if media == "application/json" else {"type": "string"}
            error.update(_content(schema, media))
        responses[str(status)] = {"description": ERRORS[status], "content": error}
    op["responses"] = responses
    return op


_SCOPE_HEADER = {
    "name": tenants.HEADER,
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": tenants.ID_PATTERN},
    "description": "The tenant to act as, among those the token holds; without it, the "
    "token's first.",
}


def _query_parameters(query: type[Query], settings: Settings) -> list[dict[str, Any]]:
    properties = query.model_json_schema(ref_template=REF)["properties"]
    out = []
    for name, prop in properties.items():
        schema = dict(prop)
        description = schema.pop("description", None)
        schema.pop("title", None)
        if schema.get("default", 0) is None:
            del schema["default"]
        options = schema.pop("anyOf", None)
        if options:
            schema.update(next(o for o in options if o.get("type") != "null"))
        setting = schema.pop("x-maximum-setting", None)
        if setting is not None:
            schema["maximum"] = getattr(settings, setting)
        param: dict[str, Any] = {"name": name, "in": "query", "schema": schema}
        if description:
            param["description"] = description
        out.append(param)
    return out
