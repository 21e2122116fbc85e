"""A fast loopback fake of OpenAI's image API for benchmarks (asyncio, HTTP/1.1 keep-alive).

The prompt steers it: ``[sleep:5]`` answers after 5 s, ``[b64:8mb]`` answers one ``b64_json``
image of that size (``kb`` or ``mb``). Anything else gets a small URL answer with ``usage`` at once.
Run: ``python bench/fake_upstream.py --port 8091``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re

_SLEEP = re.compile(rb"\[sleep:([\d.]+)\]")
_B64 = re.compile(rb"\[b64:(\d+)(kb|mb)\]")
# A gpt-image-1 answer: one image and the token usage (the gateway counts it against tpm).
SMALL = json.dumps(
    {
        "created": 1710000000,
        "data": [{"url": "https://images.example/0.png"}],
        "usage": {"input_tokens": 12, "output_tokens": 272, "total_tokens": 284},
    }
).encode()
_large: dict[int, bytes] = {}


def large(size: int) -> bytes:
    """A b64_json answer whose image string is ``size`` bytes long (made once per size)."""
    if size not in _large:
        image = base64.b64encode(bytes(range(256)) * (size * 3 // 4 // 256 + 1))[:size].decode()
        _large[size] = json.dumps({"created": 1, "data": [{"b64_json": image}]}).encode()
    return _large[size]


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length) if length else b""
            if m := _SLEEP.search(body):
                await asyncio.sleep(float(m.group(1)))
            payload = SMALL
            if m := _B64.search(body):
                payload = large(int(m.group(1)) * (1024 if m.group(2) == b"kb" else 1024 * 1024))
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(payload)).encode()
                + b"\r\n\r\n"
            )
            writer.write(payload)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def serve(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096, limit=1 << 20)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8091)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
