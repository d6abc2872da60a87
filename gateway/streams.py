"""Several async streams read as one, in the order their items come: the choices of one
OpenAI request generate side by side and share one event stream."""

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager

_END = object()


@asynccontextmanager
async def merged(streams: Sequence[AsyncGenerator]):
    """Yields an iterator of (index of its stream, item) pairs. The streams are read from
    the start of the block on, so that whatever the block sends first does not hold them
    up; a stream's error is raised to the reader. However the block ends (every stream
    done, an error, the reader gone), every stream is closed, so none keeps costing the
    backend compute."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator) -> None:
        try:
            async for item in stream:
                await queue.put((index, item, None))
            await queue.put((index, _END, None))
        except Exception as err:  # handed to the reader, which raises it
            await queue.put((index, None, err))

    async def items() -> AsyncIterator[tuple[int, object]]:
        running = len(streams)
        while running:
            index, item, err = await queue.get()
            if err is not None:
                raise err
            if item is _END:
                running -= 1
            else:
                yield index, item

    pumps = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        yield items()
    finally:
        for task in pumps:
            task.cancel()
        # A stream is closed once its pump has let go of it: closing one that a pump is
        # still reading fails ("already running").
        await asyncio.gather(*pumps, return_exceptions=True)
        for stream in streams:
            await stream.aclose()
