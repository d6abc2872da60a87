"""Which adapters a caller may see and use: its project's (an admin's, every project's),
and of those only the ones of a project that is not archived are served. Another
project's adapter is NOT_FOUND, as one that does not exist (see tuneyard.projects for how
names carry their project)."""

import time

from fastapi import Request

from gateway.auth import caller_of
from gateway.errors import BackendError
from tuneyard.errors import NotFound
from tuneyard.projects import DEFAULT_PROJECT, owner_of, resolve_adapter, visible
from tuneyard.v1 import inference_pb2, projects_pb2

STATE_TTL_S = 1.0


class ProjectStates:
    """Whether a project is archived, as the trainer says, kept STATE_TTL_S so that every
    gateway replica stops serving an archived project's adapters within about a second."""

    def __init__(self):
        self._archived: dict[str, tuple[bool, float]] = {}

    async def archived(self, request: Request, project: str) -> bool:
        if project == DEFAULT_PROJECT:
            return False
        now = time.monotonic()
        known = self._archived.get(project)
        if known is None or known[1] < now:
            reply = await request.app.state.backends.projects.call(
                "GetProject", projects_pb2.GetProjectRequest(project_id=project)
            )
            known = self._archived[project] = (bool(reply.archived_at), now + STATE_TTL_S)
        return known[0]

    def forget(self, project: str) -> None:
        self._archived.pop(project, None)


async def served_adapter(request: Request, name: str, param: str = "adapter_id") -> str:
    """The adapter id `name` means for the caller ("" stays the base model)."""
    if not name:
        return ""
    adapter = resolve_adapter(caller_of(request).project, name, param)
    owner = owner_of(adapter)
    if owner != DEFAULT_PROJECT:
        try:
            archived = await request.app.state.project_states.archived(request, owner)
        except BackendError as err:
            if err.code != "NOT_FOUND":
                raise
            archived = True  # a name in a project that never was
        if archived:
            raise NotFound(f"adapter {name!r} not found", param=param)
    return adapter


def visible_adapters(
    request: Request, adapters: list[tuple[inference_pb2.Adapter, list[str]]]
) -> list[tuple[inference_pb2.Adapter, list[str]]]:
    """Of a listing, the caller's project's adapters."""
    project = caller_of(request).project
    return [(a, where) for a, where in adapters if visible(project, owner_of(a.name))]
