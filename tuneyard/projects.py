"""What a project means across the services: its id's shape, how the caller's project
travels with a gRPC call, and how an adapter's name says which project it belongs to.

Adapters share one volume and one inference service, so a project's adapter names carry the
project: `marketing-email` trained in `proj_0123456789abcdef` is published and served as
`proj_0123456789abcdef:marketing-email`, as OpenAI's `ft:` model ids carry the org. The
default project's adapters keep their bare names, so setups from before projects keep
theirs. A project's key may still say the bare name: it means its own adapter."""

import re

from tuneyard.errors import NotFound

DEFAULT_PROJECT = "proj_default"
DEFAULT_PROJECT_NAME = "Default project"
# gRPC metadata key carrying the caller's project (see proto/tuneyard/v1/projects.proto).
METADATA_KEY = "tuneyard-project"
PROJECT_ID = re.compile(r"^proj_(default|[0-9a-f]{16})$")
_QUALIFIED = re.compile(r"^(proj_[0-9a-f]{16}):(.+)$")


def owner_of(adapter: str) -> str:
    """The project an adapter name (or `name@version`) belongs to."""
    match = _QUALIFIED.match(adapter)
    return match.group(1) if match else DEFAULT_PROJECT


def qualified(project: str, name: str) -> str:
    """The name a project's adapter is published and served under."""
    if project == DEFAULT_PROJECT or _QUALIFIED.match(name):
        return name
    return f"{project}:{name}"


def resolve_adapter(scope_project: str | None, adapter: str, param: str = "adapter_id") -> str:
    """The adapter `adapter` names for a caller scoped to `scope_project` (None: every
    project, the name as given); NOT_FOUND, as for no adapter, for another project's."""
    if scope_project is None:
        return adapter
    name = qualified(scope_project, adapter)
    if owner_of(name) != scope_project:
        raise NotFound(f"adapter {adapter!r} not found", param=param)
    return name


def metadata(project: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that scopes a call to `project` (None: every project)."""
    return () if project is None else ((METADATA_KEY, project),)


def scope(context) -> str | None:
    """The project a gRPC call is scoped to, from its metadata; None for every project."""
    for key, value in context.invocation_metadata() or ():
        if key == METADATA_KEY:
            return value
    return None


def visible(scope_project: str | None, owner: str) -> bool:
    return scope_project is None or scope_project == owner
