"""The emulator's GraphQL endpoint: GitHub's published schema (npm ``@octokit/graphql-schema``) executed
with graphql-core over the emulator's world.

What it reproduces, because the caching proxy is measured against it:
- the schema itself: a field, argument or type GitHub does not have fails validation, as on GitHub;
- point costs as GitHub computes them (docs: "Rate limits and node limits for the GraphQL API"): every
  connection costs one request per parent the outer connections can return at their ``first``/``last``;
  the sum over connections, divided by 100 and rounded, at least 1 point; ``rateLimit { cost remaining … }``
  and ``X-RateLimit-Resource: graphql`` headers with the caller's own 5,000-points window;
- errors in GitHub's shape: ``{"errors": [{"type": "NOT_FOUND", "path": …, "locations": …, "message": …}]}``
  in a 200 (also RATE_LIMITED, MISSING_PAGINATION_BOUNDARIES, EXCESSIVE_PAGINATION,
  MAX_NODE_LIMIT_EXCEEDED); parse and validation errors without ``data``.

Resolvers cover what gh's ``repo view``, ``pr list``, ``issue list`` and ``api graphql`` ask for
(repository, pull requests, issues, labels, viewer, users, organizations, ``addStar``/``removeStar``);
any other field of the schema answers an empty value of its type (null, 0, "", [], an empty connection),
so every valid query executes.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graphql import (
    DocumentNode,
    ExecutionResult,
    GraphQLAbstractType,
    GraphQLEnumType,
    GraphQLError,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLScalarType,
    GraphQLSchema,
    OperationType,
    build_schema,
    execute_sync,
    get_operation_ast,
    parse,
    validate,
)
from graphql.language import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
)

from fleetci.errors import FleetciError
from fleetci.testing import github_data as gd
from fleetci.testing.github_data import JSON, Repo, World

Info = Any  # graphql.GraphQLResolveInfo: generic in graphql-core 3.3, not in 3.2
SCHEMA_ENV = "FLEETCI_GRAPHQL_SCHEMA"
SCHEMA_PACKAGE = "@octokit/graphql-schema@15"
SCHEMA_RELATIVE = Path(".cache/npm/node_modules/@octokit/graphql-schema/schema.graphql")
DOCS = "https://docs.github.com/graphql"
LIMIT_DOCS = f"{DOCS}/overview/rate-limits-and-node-limits-for-the-graphql-api"
GRAPHQL_LIMIT = 5000  # points per hour for a user token
NODE_LIMIT = 500_000
MAX_PAGE = 100
MAX_TOKENS = 20_000


class SchemaNotFound(FleetciError):
    """GitHub's GraphQL schema is not installed; the message says how to install it."""


def find_schema(root: Path | None = None) -> Path:
    """``$FLEETCI_GRAPHQL_SCHEMA``, else ``<repo root>/.cache/npm/…/schema.graphql`` (as the OpenAPI file)."""
    env = os.environ.get(SCHEMA_ENV)
    if env:
        path = Path(env)
        if not path.is_file():
            raise SchemaNotFound(f"${SCHEMA_ENV} points to {path}, which is not a file")
        return path
    roots = [root] if root is not None else [*Path.cwd().resolve().parents[::-1], Path.cwd().resolve()]
    if root is None:
        roots += list(Path(__file__).resolve().parents)
    for r in roots:
        if (r / SCHEMA_RELATIVE).is_file():
            return r / SCHEMA_RELATIVE
    where = root or Path.cwd()
    raise SchemaNotFound(
        f"GitHub's GraphQL schema is missing ({where / SCHEMA_RELATIVE}); install it with: "
        f"npm install --no-save --prefix {where / '.cache' / 'npm'} {SCHEMA_PACKAGE} "
        f"(or set ${SCHEMA_ENV} to schema.graphql)"
    )


_SCHEMAS: dict[Path, GraphQLSchema] = {}
_SCHEMA_LOCK = threading.Lock()


def load_schema(path: Path) -> GraphQLSchema:
    """The schema, built once per process (building GitHub's SDL takes about a second).

    GitHub's published SDL breaks two rules newer GraphQL validators enforce (a few fields defined twice
    on one type, deprecated fields implementing non-deprecated interface fields); GitHub serves it as it
    is, so the SDL check is skipped and the schema is marked valid instead of refused.
    """
    with _SCHEMA_LOCK:
        schema = _SCHEMAS.get(path)
        if schema is None:
            try:
                schema = build_schema(path.read_text(encoding="utf-8"), assume_valid_sdl=True)
            except (OSError, UnicodeDecodeError, GraphQLError, TypeError) as exc:
                reason = " ".join(str(exc).split())[:200]
                raise SchemaNotFound(f"{path} is not a readable GraphQL schema: {reason}") from None
            if schema.query_type is None or "Repository" not in schema.type_map:
                raise SchemaNotFound(f"{path} is not GitHub's GraphQL schema (no Query or Repository type)")
            schema._validation_errors = []  # accepted as GitHub publishes it (see above)
            _SCHEMAS[path] = schema
        return schema


class GitHubError(Exception):
    """An error GitHub reports with a ``type`` (NOT_FOUND, RATE_LIMITED, …)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# -- point costs -------------------------------------------------------------------------------------


def _int_arg(field: FieldNode, name: str, variables: Mapping[str, Any]) -> int | None:
    for arg in field.arguments or ():
        if arg.name.value != name:
            continue
        v = arg.value
        if isinstance(v, IntValueNode):
            return int(v.value)
        if isinstance(v, VariableNode):
            got = variables.get(v.name.value)
            return got if isinstance(got, int) and not isinstance(got, bool) else None
        return None
    return None


def query_cost(
    doc: DocumentNode, op: OperationDefinitionNode, variables: Mapping[str, Any]
) -> tuple[int, int]:
    """(points, nodes) of a query as GitHub computes them; GitHubError for a connection without
    ``first``/``last``, a page over 100 or more than 500,000 nodes.

    A field that takes ``first``/``last`` is a connection: it costs one request per parent its outer
    connections can return, and multiplies the nodes below it by its page size.
    """
    fragments = {d.name.value: d for d in doc.definitions if isinstance(d, FragmentDefinitionNode)}
    defaults = {
        d.variable.name.value: int(d.default_value.value)
        for d in op.variable_definitions or ()
        if isinstance(d.default_value, IntValueNode)
    }
    values = {**defaults, **variables}
    requests = 0
    nodes = 0

    def walk(sel: SelectionSetNode | None, parents: int, seen: frozenset[str]) -> None:
        nonlocal requests, nodes
        if sel is None:
            return
        for s in sel.selections:
            if isinstance(s, InlineFragmentNode):
                walk(s.selection_set, parents, seen)
            elif isinstance(s, FragmentSpreadNode):
                frag = fragments.get(s.name.value)
                if frag is not None and s.name.value not in seen:
                    walk(frag.selection_set, parents, seen | {s.name.value})
            elif isinstance(s, FieldNode):
                names = {a.name.value for a in s.arguments or ()}
                if names & {"first", "last"}:
                    page = _int_arg(s, "first", values) or _int_arg(s, "last", values)
                    if page is None:
                        raise GitHubError(
                            "MISSING_PAGINATION_BOUNDARIES",
                            f"You must provide a `first` or `last` value to properly paginate the "
                            f"`{s.name.value}` connection.",
                        )
                    if not 0 <= page <= MAX_PAGE:
                        raise GitHubError(
                            "EXCESSIVE_PAGINATION",
                            f"Requesting {page} records on the `{s.name.value}` connection exceeds the "
                            f"`first` limit of {MAX_PAGE} records.",
                        )
                    requests += parents
                    nodes += parents * page
                    walk(s.selection_set, parents * max(page, 1), seen)
                else:
                    walk(s.selection_set, parents, seen)

    walk(op.selection_set, 1, frozenset())
    if nodes > NODE_LIMIT:
        raise GitHubError(
            "MAX_NODE_LIMIT_EXCEEDED",
            f"This query requests up to {nodes:,} possible nodes which exceeds the maximum limit of "
            f"{NODE_LIMIT:,}.",
        )
    return max(1, round(requests / 100)), nodes


# -- data ----------------------------------------------------------------------------------------------


@dataclass
class Item:
    """A pull request or an issue of the emulated world (derived from the repository, reproducibly)."""

    number: int
    title: str
    state: str  # OPEN / CLOSED / MERGED
    author: str
    created_at: float
    updated_at: float
    is_pr: bool
    head: str = ""
    draft: bool = False
    labels: tuple[str, ...] = ()


LABELS = {"bug": "d73a4a", "enhancement": "a2eeef", "ci": "0e8a16", "documentation": "0075ca"}


def items_of(world: World, repo: Repo) -> list[Item]:
    """The repository's pull requests and issues, numbered together as GitHub numbers them."""
    rng = random.Random(repo.id)
    out: list[Item] = []
    people = sorted({repo.owner, "alice", "bob", "fleet-bot"} - {"octo-org"})
    for n in range(1, 13 + repo.id % 5):
        is_pr = rng.random() < 0.5
        created = repo.created_at + (world.now - repo.created_at) * n / 20
        state = rng.choice(["OPEN", "OPEN", "CLOSED", "MERGED"] if is_pr else ["OPEN", "OPEN", "CLOSED"])
        out.append(
            Item(
                number=n,
                title=rng.choice(gd.TITLES),
                state=state,
                author=rng.choice(people),
                created_at=created,
                updated_at=min(world.now, created + rng.randrange(60, 86400 * 3)),
                is_pr=is_pr,
                head=rng.choice(gd.BRANCHES[3:]) + f"-{n}",
                draft=is_pr and rng.random() < 0.2,
                labels=tuple(sorted(rng.sample(sorted(LABELS), rng.randrange(0, 3)))),
            )
        )
    return out


def _cursor(i: int) -> str:
    return base64.b64encode(f"cursor:v2:{i}".encode()).decode()


def _offset(cursor: Any) -> int | None:
    if not isinstance(cursor, str):
        return None
    try:
        return int(base64.b64decode(cursor, validate=True).decode().rpartition(":")[2])
    except ValueError:
        raise GitHubError(
            "INVALID_CURSOR_ARGUMENTS", f"`{cursor}` does not appear to be a valid cursor."
        ) from None


def connection(items: list[Any], args: Mapping[str, Any]) -> JSON:
    """A page of ``items`` by ``first``/``after``/``last``/``before``, with edges, nodes and pageInfo."""
    start, end = 0, len(items)
    after, before = _offset(args.get("after")), _offset(args.get("before"))
    if after is not None:
        start = after + 1
    if before is not None:
        end = min(end, before)
    first, last = args.get("first"), args.get("last")
    if first is not None:
        end = min(end, start + first)
    elif last is not None:
        start = max(start, end - last)
    page = list(enumerate(items))[start:end]
    return {
        "__typename": "Connection",
        "totalCount": len(items),
        "nodes": [x for _, x in page],
        "edges": [{"cursor": _cursor(i), "node": x} for i, x in page],
        "pageInfo": {
            "hasNextPage": end < len(items),
            "hasPreviousPage": start > 0,
            "startCursor": _cursor(page[0][0]) if page else None,
            "endCursor": _cursor(page[-1][0]) if page else None,
        },
    }


class View:
    """JSON-like objects for one request, as graphql-core's resolvers read them (dicts; callables for
    fields with arguments)."""

    def __init__(self, world: World, login: str, budget: Callable[[], tuple[int, int, float]]) -> None:
        self.world = world
        self.web = "https://github.com"
        self.login = login
        self.budget = budget  # (limit, used, reset) of the caller's GraphQL window, after this charge
        self.last_cost = 0
        self.last_nodes = 0

    def rate_limit(self, dry_run: bool) -> JSON:
        limit, used, reset = self.budget()
        return {
            "__typename": "RateLimit",
            "limit": limit,
            "cost": self.last_cost,
            "remaining": max(0, limit - used),
            "used": used,
            "resetAt": gd.iso(reset),
            "nodeCount": self.last_nodes,
        }

    def rate_limited_message(self) -> str:
        uid = self.world.ensure_user(self.login).id
        return f"API rate limit exceeded for user ID {uid}."

    def actor(self, login: str) -> JSON:
        user = self.world.users.get(login.lower()) or self.world.ensure_user(login)
        kind = "Organization" if user.type == "Organization" else "User"
        return {
            "__typename": kind,
            "id": gd.node_id(kind, user.id),
            "databaseId": user.id,
            "login": user.login,
            "name": user.name,
            "company": user.company,
            "location": user.location,
            "bio": user.bio or "",
            "url": f"{self.web}/{user.login}",
            "avatarUrl": f"https://avatars.githubusercontent.com/u/{user.id}?v=4",
            "createdAt": gd.iso(user.created_at),
            "repository": lambda info, name, **_: self.repository(user.login, name),
        }

    def repository(self, owner: str, name: str) -> JSON:
        repo = self.world.repo(owner, name)
        if repo is None or not self.world.can_see(self.login, repo):
            raise GitHubError(
                "NOT_FOUND", f"Could not resolve to a Repository with the name '{owner}/{name}'."
            )
        items = items_of(self.world, repo)
        member = self.world.is_member(self.login, repo.owner)

        def prs(info: Info, **args: Any) -> JSON:
            chosen = [i for i in items if i.is_pr and (not args.get("states") or i.state in args["states"])]
            if args.get("headRefName"):
                chosen = [i for i in chosen if i.head == args["headRefName"]]
            if args.get("baseRefName"):
                chosen = [i for i in chosen if args["baseRefName"] == repo.default_branch]
            return connection([self.item(repo, i) for i in self._ordered(chosen, args)], args)

        def issues(info: Info, **args: Any) -> JSON:
            chosen = [
                i for i in items if not i.is_pr and (not args.get("states") or i.state in args["states"])
            ]
            by = args.get("filterBy") or {}
            if by.get("createdBy"):
                chosen = [i for i in chosen if i.author == by["createdBy"]]
            return connection([self.item(repo, i) for i in self._ordered(chosen, args)], args)

        def one(kind: bool) -> Callable[..., JSON | None]:
            def find(info: Info, number: int, **_: Any) -> JSON | None:
                for i in items:
                    if i.number == number and i.is_pr == kind:
                        return self.item(repo, i)
                what = "PullRequest" if kind else "Issue"
                raise GitHubError("NOT_FOUND", f"Could not resolve to a {what} with the number of {number}.")

            return find

        return {
            "__typename": "Repository",
            "id": gd.node_id("Repository", repo.id),
            "databaseId": repo.id,
            "name": repo.name,
            "nameWithOwner": repo.full_name,
            "owner": self.actor(repo.owner),
            "description": repo.description,
            "homepageUrl": repo.homepage,
            "url": f"{self.web}/{repo.full_name}",
            "sshUrl": f"git@github.com:{repo.full_name}.git",
            "isPrivate": repo.private,
            "visibility": "PRIVATE" if repo.private else "PUBLIC",
            "isFork": False,
            "isArchived": False,
            "isEmpty": False,
            "createdAt": gd.iso(repo.created_at),
            "updatedAt": gd.iso(repo.updated_at),
            "pushedAt": gd.iso(repo.pushed_at),
            "stargazerCount": repo.stargazers,
            "forkCount": repo.forks,
            "hasIssuesEnabled": True,
            "hasWikiEnabled": True,
            "hasProjectsEnabled": True,
            "viewerPermission": "ADMIN" if member else "READ",
            "viewerCanAdminister": member,
            "defaultBranchRef": {"__typename": "Ref", "name": repo.default_branch, "prefix": "refs/heads/"},
            "primaryLanguage": {"__typename": "Language", "name": repo.language, "color": "#3572A5"}
            if repo.language
            else None,
            "licenseInfo": {"__typename": "License", "key": repo.license, "name": repo.license.upper()}
            if repo.license
            else None,
            "pullRequests": prs,
            "issues": issues,
            "pullRequest": one(True),
            "issue": one(False),
            "labels": lambda info, **args: connection([self.label(repo, n) for n in sorted(LABELS)], args),
            "repositoryTopics": lambda info, **args: connection(
                [
                    {"__typename": "RepositoryTopic", "topic": {"__typename": "Topic", "name": t}}
                    for t in repo.topics
                ],
                args,
            ),
        }

    @staticmethod
    def _ordered(items: list[Item], args: Mapping[str, Any]) -> list[Item]:
        order = args.get("orderBy") or {}
        key = order.get("field", "CREATED_AT")
        desc = order.get("direction", "ASC") == "DESC"
        attr = "updated_at" if key == "UPDATED_AT" else "created_at"
        return sorted(items, key=lambda i: (getattr(i, attr), i.number), reverse=desc)

    def label(self, repo: Repo, name: str) -> JSON:
        ident = int(hashlib.sha256(f"{repo.id}:{name}".encode()).hexdigest()[:8], 16)
        return {
            "__typename": "Label",
            "id": gd.node_id("Label", ident),
            "name": name,
            "color": LABELS[name],
            "description": f"{name.title()} label",
        }

    def item(self, repo: Repo, i: Item) -> JSON:
        kind = "PullRequest" if i.is_pr else "Issue"
        closed = i.state != "OPEN"
        return {
            "__typename": kind,
            "id": gd.node_id(kind, repo.id * 1000 + i.number),
            "number": i.number,
            "title": i.title,
            "body": f"{i.title}.\n",
            "state": i.state,
            "stateReason": ("COMPLETED" if closed else None) if not i.is_pr else None,
            "url": f"{self.web}/{repo.full_name}/{'pull' if i.is_pr else 'issues'}/{i.number}",
            "createdAt": gd.iso(i.created_at),
            "updatedAt": gd.iso(i.updated_at),
            "closed": closed,
            "closedAt": gd.iso(i.updated_at) if closed else None,
            "author": self.actor(i.author),
            "headRefName": i.head,
            "baseRefName": repo.default_branch,
            "headRepositoryOwner": self.actor(repo.owner),
            "headRepository": {"__typename": "Repository", "name": repo.name},
            "isCrossRepository": False,
            "isDraft": i.draft,
            "merged": i.state == "MERGED",
            "labels": lambda info, **args: connection([self.label(repo, n) for n in i.labels], args),
            "comments": lambda info, **args: connection([], args),
        }

    def root(self) -> JSON:
        return {
            "viewer": self.actor(self.login),
            "repository": lambda info, owner, name, **_: self.repository(owner, name),
            "user": lambda info, login: self._account(login, "User"),
            "organization": lambda info, login: self._account(login, "Organization"),
            "repositoryOwner": lambda info, login: self._account(login, None),
            "rateLimit": lambda info, dryRun=False: self.rate_limit(bool(dryRun)),
        }

    def _account(self, login: str, kind: str | None) -> JSON | None:
        user = self.world.users.get(login.lower())
        if user is None or (kind is not None and user.type != kind):
            what = kind or "RepositoryOwner"
            raise GitHubError("NOT_FOUND", f"Could not resolve to a {what} with the login of '{login}'.")
        return self.actor(user.login)

    def mutations(self) -> JSON:
        def star(delta: int) -> Callable[..., JSON]:
            def run(info: Info, input: Mapping[str, Any]) -> JSON:
                target = str(input.get("starrableId", ""))
                for repo in self.world.repos.values():
                    if gd.node_id("Repository", repo.id) == target and self.world.can_see(self.login, repo):
                        repo.stargazers = max(0, repo.stargazers + delta)
                        return {
                            "__typename": "AddStarPayload",
                            "clientMutationId": input.get("clientMutationId"),
                            "starrable": {
                                **self.repository(repo.owner, repo.name),
                                "viewerHasStarred": delta > 0,
                            },
                        }
                raise GitHubError(
                    "NOT_FOUND", f"Could not resolve to a node with the global id of '{target}'"
                )

            return run

        return {"addStar": star(1), "removeStar": star(-1)}


# -- execution -----------------------------------------------------------------------------------------


def _empty(t: GraphQLOutputType, info: Info) -> Any:
    """The value of a field the emulator has no data for: null when it may be, else an empty value."""
    nullable = not isinstance(t, GraphQLNonNull)
    inner = t.of_type if isinstance(t, GraphQLNonNull) else t
    if isinstance(inner, GraphQLList):
        return []
    if nullable:
        return None
    if isinstance(inner, GraphQLScalarType):
        return {"Int": 0, "Float": 0.0, "Boolean": False, "DateTime": gd.iso(0), "Date": "1970-01-01"}.get(
            inner.name, ""
        )
    if isinstance(inner, GraphQLEnumType):
        return next(iter(inner.values))
    if isinstance(inner, GraphQLAbstractType):
        return {"__typename": info.schema.get_possible_types(inner)[0].name}
    if isinstance(inner, GraphQLObjectType) and inner.name.endswith("Connection"):
        return {"__typename": inner.name, "totalCount": 0, "nodes": [], "edges": [], "pageInfo": {}}
    return {"__typename": getattr(inner, "name", "")}


def _resolve(source: Any, info: Info, **args: Any) -> Any:
    if isinstance(source, Mapping) and info.field_name in source:
        value = source[info.field_name]
        return value(info, **args) if callable(value) else value
    return _empty(info.return_type, info)


@dataclass
class Answer:
    """What the endpoint sends: the JSON body, and the points to charge (0: nothing to charge)."""

    body: JSON
    cost: int


def _errors(result: ExecutionResult) -> list[JSON]:
    out = []
    for e in result.errors or ():
        d: JSON = {}
        original = e.original_error
        if isinstance(original, GitHubError):
            d["type"] = original.kind
        if e.path:
            d["path"] = list(e.path)
        if e.locations:
            d["locations"] = [{"line": loc.line, "column": loc.column} for loc in e.locations]
        d["message"] = (
            e.message if not (original and not isinstance(original, GitHubError)) else "Something went wrong"
        )
        out.append(d)
    return out


def run_query(
    schema: GraphQLSchema,
    payload: Mapping[str, Any],
    view: View,
    charge: Callable[[int], bool],
) -> Answer:
    """Parse, validate, price, charge and execute one request body (already checked to be an object
    with a string ``query``). ``charge(points)``: False when the caller's budget cannot pay them."""
    variables = payload.get("variables") or {}
    if not isinstance(variables, dict):
        return Answer({"errors": [{"message": "Variables are invalid JSON."}]}, 0)
    try:
        doc = parse(str(payload["query"]), max_tokens=MAX_TOKENS)
    except GraphQLError as e:
        loc = [{"line": x.line, "column": x.column} for x in e.locations or ()]
        return Answer({"errors": [{"message": f"Parse error: {e.message}", "locations": loc}]}, 0)
    except RecursionError:
        return Answer({"errors": [{"message": "Parse error: the query is nested too deeply"}]}, 0)
    problems = validate(schema, doc, max_errors=20)
    if problems:
        result = ExecutionResult(None, problems)
        return Answer({"errors": _errors(result)}, 0)
    name = payload.get("operationName")
    op = get_operation_ast(doc, name if isinstance(name, str) else None)
    if op is None:
        return Answer({"errors": [{"message": "An operation name is required"}]}, 0)
    try:
        cost, nodes = query_cost(doc, op, variables) if op.operation == OperationType.QUERY else (1, 0)
    except GitHubError as e:
        return Answer({"errors": [{"type": e.kind, "message": str(e)}]}, 0)
    if not charge(cost):
        return Answer({"errors": [{"type": "RATE_LIMITED", "message": view.rate_limited_message()}]}, 0)
    view.last_cost, view.last_nodes = cost, nodes
    root = view.mutations() if op.operation == OperationType.MUTATION else view.root()
    result = execute_sync(
        schema,
        doc,
        root_value=root,
        variable_values=variables,
        operation_name=name if isinstance(name, str) else None,
        field_resolver=_resolve,
    )
    body: JSON = {}
    if result.errors:
        body["errors"] = _errors(result)
    body["data"] = result.data
    return Answer(body, cost)
