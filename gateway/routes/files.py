"""Training files in the shape of OpenAI's files API. The trainer stores them (under its
TUNEYARD_HOME, where its workers read them); a job names one as `training_file`. Content
is streamed through in the trainer's chunks, never held whole in the gateway."""

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import StreamingResponse

from gateway.auth import require_key, require_writer
from gateway.backends import trainer_of
from gateway.openapi import ADMIN, TRAINER_ERRORS
from tuneyard.v1 import trainer_pb2

router = APIRouter(
    prefix="/v1/files", dependencies=[Depends(require_key)], responses=TRAINER_ERRORS
)


def file_json(info: trainer_pb2.File) -> dict:
    return {
        "id": info.id,
        "object": "file",
        "bytes": info.bytes,
        "created_at": info.created_at,
        "filename": info.filename,
        "purpose": info.purpose,
    }


@router.post("", dependencies=[Depends(require_writer)], responses=ADMIN)
async def upload_file(
    request: Request,
    file: Annotated[UploadFile, File()],
    # The trainer refuses any other (trainer_service/files.py, naming the field).
    purpose: Annotated[str, Form(json_schema_extra={"enum": ["fine-tune"]})],
) -> dict:
    content = await file.read()
    info = await trainer_of(request).call(
        "UploadFile",
        trainer_pb2.UploadFileRequest(
            filename=file.filename or "", purpose=purpose, content=content
        ),
    )
    return file_json(info)


@router.get("")
async def list_files(request: Request) -> dict:
    reply = await trainer_of(request).call("ListFiles", trainer_pb2.ListFilesRequest())
    return {"object": "list", "data": [file_json(f) for f in reply.files], "has_more": False}


@router.get("/{file_id}")
async def get_file(request: Request, file_id: str) -> dict:
    info = await trainer_of(request).call("GetFile", trainer_pb2.GetFileRequest(file_id=file_id))
    return file_json(info)


@router.get(
    "/{file_id}/content",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The file's bytes, as uploaded.",
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        }
    },
)
async def file_content(request: Request, file_id: str) -> StreamingResponse:
    # The first chunk has come before the answer starts: an unknown id is still a 404.
    chunks = await trainer_of(request).stream(
        "GetFileContent", trainer_pb2.GetFileContentRequest(file_id=file_id)
    )
    first = await anext(chunks)

    async def body():
        try:
            yield first.data
            async for chunk in chunks:
                yield chunk.data
        finally:
            await chunks.aclose()  # a client that went away ends the trainer's call too

    return StreamingResponse(
        body(),
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(first.file.bytes),
            "Content-Disposition": f'attachment; filename="{_quoted(first.file.filename)}"',
        },
    )


@router.delete("/{file_id}", dependencies=[Depends(require_writer)], responses=ADMIN)
async def delete_file(request: Request, file_id: str) -> dict:
    """Refused (400, `file_id`) while a job that has not ended trains on the file."""
    info = await trainer_of(request).call(
        "DeleteFile", trainer_pb2.DeleteFileRequest(file_id=file_id)
    )
    return {"id": info.id, "object": "file", "deleted": True}


def _quoted(filename: str) -> str:
    """A filename safe inside a quoted header value (ASCII, no quotes or backslashes)."""
    return "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename
    )


routers = [router]
