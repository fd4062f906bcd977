"""A MongoDB wire-protocol server on loopback for the contract tests (mongoeco, in-memory).

    python tests/peers/mongo_server.py     # prints the URI on its first line, serves until killed
"""
import asyncio
import sys

from mongoeco.wire.proxy import AsyncMongoEcoProxyServer


async def main() -> None:
    server = AsyncMongoEcoProxyServer(host="127.0.0.1", port=0)
    address = await server.start()
    print(address.uri, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
