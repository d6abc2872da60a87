"""The web console: static HTML, CSS and JavaScript shipped in this package and served by
the gateway at /console. The pages are drawn in the browser from the gateway's public API
(the same routes and keys any client uses), so the console shows nothing a client could
not already get and needs no server-side state, templates or build step."""

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.routing import Mount

STATIC_DIR = Path(__file__).parent / "static"
PATH = "/console"

# Everything from the gateway itself: no CDN, no inline script. A report is shown in a
# sandboxed frame (inline styles allowed, its scripts not).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class ConsoleFiles(StaticFiles):
    """The console's files, each with the content security policy above."""

    route: Mount

    async def __call__(self, scope, receive, send) -> None:
        # The gateway's request metrics go by route template: count these under the mount,
        # not as "unmatched" (only the API's routes name themselves in the scope).
        scope["route"] = self.route
        await super().__call__(scope, receive, send)

    def file_response(self, *args, **kwargs):
        response = super().file_response(*args, **kwargs)
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def install(app: FastAPI) -> None:
    """Serve the console at /console/, and send a browser that opens / there."""
    files = ConsoleFiles(directory=STATIC_DIR, html=True)
    files.route = Mount(PATH, app=files, name="console")
    app.router.routes.append(files.route)

    @app.get("/", include_in_schema=False)
    async def console_home() -> RedirectResponse:
        return RedirectResponse(f"{PATH}/")
