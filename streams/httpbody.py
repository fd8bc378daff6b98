"""Request bodies read whole and bounded, and inflated only after authentication.

aiohttp hands a handler a stream: one ``read(n)`` returns what has arrived so far, not the
body. ``read_body`` reads a whole body (``Content-Length`` or chunked) up to a limit, refuses
it (413) as soon as it is over the limit without buffering the rest, and gives up (408) when
the client does not send the whole body in time. ``inflate`` decompresses gzip or deflate in
bounded steps, with a cap on the inflated size and on the compression ratio; callers run it
in ``INFLATE_POOL``, off the event loop, and only for requests that are already authenticated.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

# Content-Encoding values handled here (None: the body is sent as it is).
ENCODINGS = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate", "identity": None}
INFLATE_STEP = 64 * 1024  # bytes of output per zlib call
MAX_RATIO = 200  # inflated bytes per compressed byte, once past RATIO_FLOOR (or limit / 2)
RATIO_FLOOR = 256 * 1024
# Inflation runs here, never on the event loop: zlib releases the GIL while it inflates.
INFLATE_POOL = ThreadPoolExecutor(2, thread_name_prefix="inflate")


class BodyRejected(Exception):
    """The request body cannot be used: ``status`` and a message for the client (never a
    header value)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def content_encoding(request: web.BaseRequest) -> str | None:
    """``gzip``, ``deflate`` or None (identity); 415 for anything else, naming it."""
    value = request.headers.get("Content-Encoding", "").strip().lower()
    if not value:
        return None
    if value not in ENCODINGS:
        name = value[:40].encode("ascii", "replace").decode()
        raise BodyRejected(
            415, f"content encoding {name!r} is not accepted: send gzip, deflate or identity"
        )
    return ENCODINGS[value]


async def read_body(request: web.BaseRequest, limit: int, timeout_s: float) -> bytes:
    """The whole body, at most ``limit`` bytes, within ``timeout_s`` seconds.

    A ``Content-Length`` over the limit is refused before anything is read; a chunked body is
    refused as soon as what arrived passes the limit. Both 413 and 408 leave the rest unread:
    the caller answers and the connection is closed.
    """
    length = request.content_length
    if length is not None and length > limit:
        raise BodyRejected(413, f"the body is over {limit} bytes")
    content = request.content
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                chunk = await content.readany()
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise BodyRejected(413, f"the body is over {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise BodyRejected(
            408, f"the body did not arrive within {timeout_s:g} s ({size} bytes received)"
        ) from None
    except RequestPayloadError:
        raise BodyRejected(400, "the body is malformed (chunked encoding)") from None
    except ConnectionError:
        raise BodyRejected(400, "the connection closed before the whole body arrived") from None
    return b"".join(chunks)


def _deflate_wbits(data: bytes) -> int:
    """zlib-wrapped deflate (what the RFC says) or raw deflate (what some clients send)."""
    if len(data) >= 2 and data[0] & 0x0F == 8 and ((data[0] << 8) | data[1]) % 31 == 0:
        return zlib.MAX_WBITS
    return -zlib.MAX_WBITS


def inflate(data: bytes, encoding: str, limit: int) -> bytes:
    """``data`` decompressed, in steps of ``INFLATE_STEP`` bytes: 413 as soon as the output
    passes ``limit`` or ``MAX_RATIO`` times the input consumed (past ``RATIO_FLOOR`` or half
    the limit, whichever is smaller), 400 if it is not valid ``encoding``. Concatenated gzip
    members are read one after the other."""
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else _deflate_wbits(data)
    floor = min(RATIO_FLOOR, limit // 2)
    out: list[bytes] = []
    total = 0
    consumed = 0  # compressed bytes of finished members
    pending = data
    try:
        while True:
            member = pending
            decompressor = zlib.decompressobj(wbits)
            while not decompressor.eof:
                piece = decompressor.decompress(pending, INFLATE_STEP)
                total += len(piece)
                if total > limit:
                    raise BodyRejected(413, f"the body inflates to over {limit} bytes")
                used = consumed + len(member) - len(decompressor.unconsumed_tail)
                if total > floor and total > MAX_RATIO * used:
                    raise BodyRejected(
                        413, f"the body inflates more than {MAX_RATIO} times: refused"
                    )
                out.append(piece)
                pending = decompressor.unconsumed_tail
                if not pending and len(piece) < INFLATE_STEP:
                    break
            if not decompressor.eof:
                raise BodyRejected(400, f"the {encoding} body is truncated")
            pending = decompressor.unused_data
            consumed += len(member) - len(pending)
            if not pending or encoding != "gzip":
                break
    except zlib.error:
        raise BodyRejected(400, f"the body is not valid {encoding}") from None
    if pending:
        raise BodyRejected(400, f"data after the end of the {encoding} body")
    return b"".join(out)


async def read_decoded_body(
    request: web.BaseRequest, limit: int, timeout_s: float, encoding: str | None
) -> bytes:
    """``read_body``, then ``inflate`` in ``INFLATE_POOL`` when ``encoding`` is set: both the
    compressed and the inflated body are at most ``limit`` bytes."""
    body = await read_body(request, limit, timeout_s)
    if encoding is None:
        return body
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(INFLATE_POOL, inflate, body, encoding, limit)


async def answer_early(
    request: web.BaseRequest, response: web.StreamResponse, timeout_s: float, cap: int
) -> web.StreamResponse:
    """Send ``response`` to a request whose body is not (wholly) read, so that the client can
    read it: closing a connection with unread data in it resets it (RST), and a client still
    sending then sees its write fail and may never read the answer.

    The answer goes out at once, then the write side is shut (the client gets the answer and
    an end of stream), then what the client still sends is read and dropped until it ends,
    for at most ``timeout_s`` seconds and ``cap`` bytes; only then is the connection closed.
    A client that keeps sending past those bounds gets a reset, with the answer already
    received. The response is returned for the caller to hand back to aiohttp (sent already).
    """
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    transport = request.transport
    if transport is not None and not transport.is_closing() and transport.can_write_eof():
        transport.write_eof()  # after what is buffered: the answer, then FIN
    content = request.content
    dropped = 0
    with contextlib.suppress(TimeoutError, ConnectionError, RequestPayloadError):
        async with asyncio.timeout(timeout_s):
            while dropped <= cap:
                chunk = await content.readany()
                if not chunk:
                    break
                dropped += len(chunk)
    return response
