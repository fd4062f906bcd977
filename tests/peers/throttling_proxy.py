"""A TCP proxy in front of a MongoDB server that refuses chosen writes the way a throttled Cosmos DB does.

Cosmos DB for MongoDB (RU-based) refuses a write it has no request units for with error 16500, and
in an unordered bulk write it refuses only some of the writes: the reply applies the others and
lists the refused ones in `writeErrors`, by their index in the command. MongoDB's own `failCommand`
fail point can only fail a whole command, so this proxy does the per-write part on the wire: the
writes it refuses are cut out of the OP_MSG before the server sees it (so they are really not
applied), and the server's reply gets them back as writeErrors with their original indexes.

    proxy = ThrottlingProxy("127.0.0.1", 27017).start()
    proxy.refuse_writes("xt", "metrics", every=3, times=100)  # every 3rd write seen, 100 in all
    MongoClient(proxy.uri)
    ...
    proxy.stop()
"""
from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import bson

OP_MSG = 2013
_HEADER = struct.Struct("<iiii")  # messageLength, requestID, responseTo, opCode
_CHECKSUM_PRESENT = 1
# a write command's name -> the document sequence that holds its writes (deletes pass untouched)
_WRITES = {"insert": "documents", "update": "updates"}
THROTTLED_MESSAGE = ("Error=16500, RetryAfterMs=5, Details='Response status code does not indicate success: "
                     "TooManyRequests (429); Substatus: 3200; Reason: (Request rate is large. More Request Units may "
                     "be needed, so no changes were made. Please retry this request later.)'")


@dataclass
class _Refusal:
    every: int
    left: int
    code: int
    message: str
    seen: int = 0

    def refuses_next(self) -> bool:
        self.seen += 1
        if self.left > 0 and self.seen % self.every == 0:
            self.left -= 1
            return True
        return False


@dataclass
class _Message:
    request_id: int
    response_to: int
    flags: int
    body: bytes  # the kind-0 section's BSON
    sequences: List[Tuple[str, List[bytes]]]  # kind-1 sections: identifier, BSON documents

    @classmethod
    def parse(cls, header: Tuple[int, int, int, int], payload: bytes) -> "_Message":
        _, request_id, response_to, _ = header
        (flags,) = struct.unpack_from("<I", payload)
        end = len(payload) - (4 if flags & _CHECKSUM_PRESENT else 0)
        at, body, sequences = 4, b"", []
        while at < end:
            kind = payload[at]
            at += 1
            (size,) = struct.unpack_from("<i", payload, at)
            if kind == 0:
                body = payload[at:at + size]
            else:
                section_end = at + size
                name_end = payload.index(b"\0", at + 4)
                name, docs, doc_at = payload[at + 4:name_end].decode(), [], name_end + 1
                while doc_at < section_end:
                    (doc_size,) = struct.unpack_from("<i", payload, doc_at)
                    docs.append(payload[doc_at:doc_at + doc_size])
                    doc_at += doc_size
                sequences.append((name, docs))
            at += size
        return cls(request_id, response_to, flags & ~_CHECKSUM_PRESENT, body, sequences)

    def encode(self) -> bytes:
        payload = struct.pack("<I", self.flags) + b"\0" + self.body
        for name, docs in self.sequences:
            section = name.encode() + b"\0" + b"".join(docs)
            payload += b"\1" + struct.pack("<i", 4 + len(section)) + section
        return _HEADER.pack(_HEADER.size + len(payload), self.request_id, self.response_to, OP_MSG) + payload


@dataclass
class _Cut:
    """What the proxy took out of one write command: how to give the reply its original indexes back."""
    command: str
    kept: List[int]  # original index of each write forwarded, in order
    refused: List[Tuple[int, _Refusal]]


class ThrottlingProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._refusals: Dict[Tuple[str, str], _Refusal] = {}
        self._lock = threading.Lock()
        self._listener: Optional[socket.socket] = None
        self._sockets: List[socket.socket] = []
        self.refused = 0  # writes answered as refused
        self.forwarded: Dict[Tuple[str, str], int] = {}  # inserts and updates passed on, by (database, collection)

    @property
    def uri(self) -> str:
        assert self._listener is not None, "start() the proxy first"
        return f"mongodb://127.0.0.1:{self._listener.getsockname()[1]}/?directConnection=true"

    def refuse_writes(self, database: str, collection: str, *, every: int, times: int, code: int = 16500,
                      message: str = THROTTLED_MESSAGE) -> None:
        """From now on refuse every `every`-th write to database.collection, `times` writes in all."""
        with self._lock:
            self._refusals[(database, collection)] = _Refusal(every, times, code, message)

    def start(self) -> "ThrottlingProxy":
        self._listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True, name="throttling-proxy").start()
        return self

    def stop(self) -> None:
        for sock in [self._listener, *self._sockets]:
            if sock is not None:
                sock.close()

    # --- plumbing -----------------------------------------------------------------------------
    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # stopped
            server = socket.create_connection(self.upstream)
            self._sockets += [client, server]
            cuts: Dict[int, _Cut] = {}
            client_lock = threading.Lock()  # both pumps write to the client (a reply made here, a server's)
            threading.Thread(target=self._pump_requests, args=(client, server, cuts, client_lock), daemon=True).start()
            threading.Thread(target=self._pump_replies, args=(server, client, cuts, client_lock), daemon=True).start()

    def _pump_requests(self, client, server, cuts: Dict[int, _Cut], client_lock: threading.Lock) -> None:
        try:
            for header, payload in _messages(client, server):
                raw = _HEADER.pack(*header) + payload
                message = _Message.parse(header, payload) if header[3] == OP_MSG else None
                cut = self._cut(message) if message is not None else None
                if cut is None:
                    server.sendall(raw)
                elif not cut.kept:  # every write refused: the server never sees the command
                    body = _reindexed({"n": 0, **({"nModified": 0} if cut.command == "update" else {}), "ok": 1.0}, cut)
                    with client_lock:
                        client.sendall(_Message(0, header[1], 0, bson.encode(body), []).encode())
                else:
                    cuts[header[1]] = cut
                    server.sendall(message.encode())
        except OSError:
            pass  # either side went away: _messages closed both

    def _pump_replies(self, server, client, cuts: Dict[int, _Cut], client_lock: threading.Lock) -> None:
        try:
            for header, payload in _messages(server, client):
                raw = _HEADER.pack(*header) + payload
                cut = cuts.pop(header[2], None) if header[3] == OP_MSG else None
                if cut is not None:
                    reply = _Message.parse(header, payload)
                    reply.body = bson.encode(_reindexed(bson.decode(reply.body), cut))
                    raw = reply.encode()
                with client_lock:
                    client.sendall(raw)
        except OSError:
            pass

    def _cut(self, message: _Message) -> Optional[_Cut]:
        """Take the refused writes out of a write command (in place); None if it is not one we refuse in."""
        command = bson.decode(message.body)
        name = next(iter(command), "")
        sequence = next((docs for ident, docs in message.sequences if ident == _WRITES.get(name)), None)
        if sequence is None:
            return None
        target = (command.get("$db", ""), command[name])
        with self._lock:
            refusal = self._refusals.get(target)
            cut = _Cut(name, list(range(len(sequence))), [])
            if refusal is not None:
                cut.kept = []
                for index in range(len(sequence)):
                    if refusal.refuses_next():
                        cut.refused.append((index, refusal))
                        if command.get("ordered", True):
                            break  # an ordered command stops at its first error: the writes after it never run
                    else:
                        cut.kept.append(index)
            self.refused += len(cut.refused)
            self.forwarded[target] = self.forwarded.get(target, 0) + len(cut.kept)
        if not cut.refused:
            return None
        sequence[:] = [sequence[i] for i in cut.kept]
        return cut


def _reindexed(reply: dict, cut: _Cut) -> dict:
    """The server's reply to the writes it got, as the reply to the whole command: indexes mapped back,
    the refused writes added as writeErrors."""
    for key in ("upserted", "writeErrors"):
        for entry in reply.get(key, []):
            entry["index"] = cut.kept[entry["index"]]
    refused = [{"index": index, "code": refusal.code, "errmsg": refusal.message} for index, refusal in cut.refused]
    reply["writeErrors"] = sorted(reply.get("writeErrors", []) + refused, key=lambda entry: entry["index"])
    return reply


def _messages(source: socket.socket, other: socket.socket):
    """Each wire message read from `source` until either side closes (then both are closed)."""
    try:
        while True:
            head = _read_exactly(source, _HEADER.size)
            header = _HEADER.unpack(head)
            yield header, _read_exactly(source, header[0] - _HEADER.size)
    except OSError:
        pass
    finally:
        for sock in (source, other):
            try:
                sock.close()
            except OSError:
                pass


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(size - len(data), 1 << 20))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return bytes(data)
