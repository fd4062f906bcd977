"""P8: the cloud at scale, by simulation. A sweep of N runs goes through the Functions app's own
binding code (function_app.app's triggers, called as the host calls them) with the real Azure
adapters on local peers: Blob Storage on Azurite, Service Bus on the AMQP test broker
(tests/peers/servicebus_broker.py), the MongoDB API on a wire-protocol peer below. A simulated
Batch node plays what the run wrapper does on a node (its run log, console and outputs to blob, its
events to Service Bus). Every operation is counted where the SDKs send it:

- Blob: every HTTP request at azure-core's transport, classed as Azure's blob pricing classes them
  (write: Put Blob, Put Block, Put Block List, Append Block...; read: Get Blob; list and create
  container; other: Get Blob Properties...; delete: free), with its bytes.
- Service Bus: every SDK call that reaches the service (azure-servicebus has no pipeline hook, so the
  sender's and receiver's public methods are wrapped): sends (and each message in them, with its
  size), receive calls, completes, abandons, dead-letters, lock renewals, peeks.
- Mongo: pymongo's command monitoring (every command, its request and reply size); the peer adds to
  each reply what it touched (documents examined, bytes of each document written), from which the
  Cosmos DB RU of each command follows by Microsoft's per-size table (bench/azure_prices.json).

The counts become a cost per 1,000 runs with the list prices in bench/azure_prices.json, beside the
idle cost of the stack and of an always-on MLflow tracking server. The same sweep at N and N/10 gives
per-run counts that must not depend on the job's size.

What is modelled, not measured (each said again where it is used):
- the host's Service Bus trigger receives one message per receive call (its single-dispatch pump),
  completes it after the function returns and renews its lock while it runs;
- each run on its node: one code fetch (Batch's resource file), its run log opened and appended at
  start, one console and one run-log sync, `--progress-events` RunProgress, one output file, the end;
- Functions' billed duration is an invocation's in-thread CPU time (its wall time on the loopback
  peers is reported beside it), at Flex Consumption's default 2,048 MB instance;
- Cosmos DB RU from Microsoft's per-document-size table (azure_prices.json says how each command class
  is priced); compute (Batch nodes) and egress are not priced: they are the same with any tracker.

    python bench/p8_cloud_cost.py --runs 10000          # and N/10 (--small); --callers names the code
                                                         # behind each operation; 100,000 runs work too
                                                         # (about 0.3 s a run here: hours)
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import os
import re
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from common import emit, remove_scratch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PRICES = HERE / "azure_prices.json"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="  # public, every Azurite's
WORKSPACE = "ws1"
NODE_WAVE = 200  # runs a node starts before the app catches up: keeps the broker's queues short

# =====================================================================================================
# A MongoDB wire-protocol peer (OP_MSG and the OP_QUERY handshake) holding documents in dicts, with an
# equality index on a few fields: mongoeco (the tests' peer) takes minutes for 1,000 runs, this one is
# quick enough for a 10,000-run job. It does what MongoStats asks of a server, and says in each reply
# what the command examined and wrote (`xtPeer`), for the RU estimate. Not a product part.
# =====================================================================================================
OP_REPLY, OP_QUERY, OP_MSG = 1, 2004, 2013
INDEXED = ("workspace", "job_number", "run", "parent", "status")
MISSING = object()


def _get(doc: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return MISSING
        doc = doc[part]
    return doc


def _set(doc: dict, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        doc = doc.setdefault(part, {})
    doc[last] = value


def _unset(doc: dict, path: str) -> None:
    *parents, last = path.split(".")
    for part in parents:
        doc = doc.get(part)
        if not isinstance(doc, dict):
            return
    doc.pop(last, None)


def _comparable(a: Any, b: Any) -> bool:
    numbers = (int, float)
    return (isinstance(a, numbers) and isinstance(b, numbers)) or type(a) is type(b)


def _test(value: Any, op: str, arg: Any) -> bool:
    if op == "$eq":
        return (value is MISSING or value is None) if arg is None else value == arg
    if op == "$ne":
        return not _test(value, "$eq", arg)
    if op == "$in":
        return any(_test(value, "$eq", item) for item in arg)
    if op == "$nin":
        return not _test(value, "$in", arg)
    if op == "$exists":
        return (value is not MISSING) == bool(arg)
    if op == "$regex":
        return isinstance(value, str) and re.search(arg if isinstance(arg, str) else arg.pattern, value) is not None
    if value is MISSING or value is None or not _comparable(value, arg):
        return False
    return {"$lt": value < arg, "$lte": value <= arg, "$gt": value > arg, "$gte": value >= arg}[op]


def matches(doc: dict, query: dict) -> bool:
    for key, condition in query.items():
        if key == "$and":
            if not all(matches(doc, part) for part in condition):
                return False
        elif key == "$or":
            if not any(matches(doc, part) for part in condition):
                return False
        elif isinstance(condition, dict) and condition and all(k.startswith("$") for k in condition):
            value = _get(doc, key)
            if not all(_test(value, op, arg) for op, arg in condition.items() if op != "$options"):
                return False
        elif not _test(_get(doc, key), "$eq", condition):
            return False
    return True


def _equalities(query: dict) -> Iterable[Tuple[str, Any]]:
    for key, condition in query.items():
        if key == "$and":
            for part in condition:
                yield from _equalities(part)
        elif not key.startswith("$") and not (isinstance(condition, dict) and any(k.startswith("$") for k in condition)):
            yield key, condition


def _project(doc: dict, projection: Optional[dict]) -> dict:
    if not projection:
        return doc
    included = {k for k, v in projection.items() if v}
    if included - {"_id"}:
        out = {"_id": doc["_id"]} if projection.get("_id", 1) else {}
        for key in included - {"_id"}:
            value = _get(doc, key)
            if value is not MISSING:
                _set(out, key, value)
        return out
    out = dict(doc)
    for key, keep in projection.items():
        if not keep:
            _unset(out, key)
    return out


def _sort_key(value: Any) -> tuple:
    if value is MISSING or value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (3, value)
    if isinstance(value, (int, float)):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    return (4, str(value))


def _sorted(docs: List[dict], order: Optional[dict]) -> List[dict]:
    for key, direction in reversed(list((order or {}).items())):
        docs.sort(key=lambda d, k=key: _sort_key(_get(d, k)), reverse=direction < 0)
    return docs


class Collection:
    def __init__(self) -> None:
        self.docs: Dict[Any, dict] = {}
        self.sizes: Dict[Any, int] = {}
        self.index: Dict[str, Dict[Any, set]] = {field: collections.defaultdict(set) for field in INDEXED}

    def _hashable(self, value: Any) -> bool:
        return isinstance(value, (str, int, float, bool)) or value is None

    def put(self, doc: dict) -> int:
        import bson

        self.remove(doc["_id"])
        self.docs[doc["_id"]] = doc
        size = len(bson.encode(doc))
        self.sizes[doc["_id"]] = size
        for field in INDEXED:
            value = doc.get(field)
            if self._hashable(value):
                self.index[field][value].add(doc["_id"])
        return size

    def remove(self, doc_id: Any) -> Optional[dict]:
        doc = self.docs.pop(doc_id, None)
        if doc is not None:
            self.sizes.pop(doc_id, None)
            for field in INDEXED:
                value = doc.get(field)
                if self._hashable(value):
                    self.index[field][value].discard(doc_id)
        return doc

    def candidates(self, query: dict) -> Iterable[Any]:
        """The ids that can match: an _id, or the smallest equality index set, else all."""
        sets = []
        for key, value in _equalities(query):
            if key == "_id":
                return [value] if value in self.docs else []
            if key in self.index and self._hashable(value):
                sets.append(self.index[key].get(value, set()))
        if isinstance(query.get("_id"), dict) and "$in" in query["_id"]:
            return [i for i in query["_id"]["$in"] if i in self.docs]
        if sets:
            return sorted(min(sets, key=len), key=str)
        return list(self.docs)

    def find(self, query: dict, stats: dict) -> List[dict]:
        found = []
        for doc_id in self.candidates(query or {}):
            doc = self.docs.get(doc_id)
            if doc is None:
                continue
            stats["examined"] += 1
            stats["examined_bytes"] += self.sizes[doc_id]
            if matches(doc, query or {}):
                found.append(doc)
        return found


def _apply(doc: dict, update: dict, inserting: bool) -> dict:
    if not any(key.startswith("$") for key in update):  # a replacement
        return {"_id": doc["_id"], **{k: v for k, v in update.items() if k != "_id"}}
    doc = json_copy(doc)
    for op, fields in update.items():
        for path, value in fields.items():
            current = _get(doc, path)
            if op == "$set" or (op == "$setOnInsert" and inserting):
                _set(doc, path, value)
            elif op == "$unset":
                _unset(doc, path)
            elif op == "$inc":
                _set(doc, path, (0 if current is MISSING else current) + value)
            elif op == "$max" and (current is MISSING or current is None or value > current):
                _set(doc, path, value)
            elif op == "$min" and (current is MISSING or current is None or value < current):
                _set(doc, path, value)
    return doc


def json_copy(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: json_copy(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [json_copy(v) for v in doc]
    return doc


class MongoPeer:
    def __init__(self) -> None:
        self.collections: Dict[str, Collection] = collections.defaultdict(Collection)
        self.lock = threading.Lock()

    def command(self, db: str, body: dict) -> dict:
        name = next(iter(body))
        stats = {"examined": 0, "examined_bytes": 0, "written": [], "returned": []}
        with self.lock:
            reply = self._run(name.lower() if name.lower() in ("ismaster", "hello") else name, db, body, stats)
        reply.setdefault("ok", 1.0)
        reply["xtPeer"] = stats
        return reply

    def _run(self, name: str, db: str, body: dict, stats: dict) -> dict:
        import bson

        coll = self.collections[f"{db}.{body.get(name)}"] if isinstance(body.get(name), str) else None
        if name in ("ismaster", "hello"):
            return {"ismaster": True, "isWritablePrimary": True, "helloOk": True, "maxBsonObjectSize": 16 * 1024 * 1024,
                    "maxMessageSizeBytes": 48_000_000, "maxWriteBatchSize": 100_000, "minWireVersion": 0,
                    "maxWireVersion": 17, "localTime": __import__("datetime").datetime.now()}
        if name in ("ping", "endSessions", "killCursors", "buildInfo", "buildinfo", "getLastError"):
            return {"version": "6.0.0"} if name.lower() == "buildinfo" else {}
        if name == "createIndexes":
            return {"numIndexesBefore": 1, "numIndexesAfter": 1 + len(body.get("indexes", []))}
        if name == "insert":
            errors = []
            for index, doc in enumerate(body.get("documents", [])):
                doc.setdefault("_id", bson.ObjectId())
                if doc["_id"] in coll.docs:
                    errors.append({"index": index, "code": 11000, "errmsg": f"E11000 duplicate key {doc['_id']}"})
                    continue
                stats["written"].append(coll.put(doc))
            reply = {"n": len(body.get("documents", [])) - len(errors)}
            if errors:
                reply["writeErrors"] = errors
            return reply
        if name == "update":
            n = modified = 0
            upserted = []
            for index, spec in enumerate(body.get("updates", [])):
                found = coll.find(spec.get("q", {}), stats)
                if not spec.get("multi"):
                    found = found[:1]
                if not found and spec.get("upsert"):
                    seed = {k: v for k, v in _equalities(spec.get("q", {})) if "." not in k}
                    seed.setdefault("_id", bson.ObjectId())
                    stats["written"].append(coll.put(_apply(seed, spec["u"], inserting=True)))
                    upserted.append({"index": index, "_id": seed["_id"]})
                    n += 1
                for doc in found:
                    n += 1
                    new = _apply(doc, spec["u"], inserting=False)
                    if new != doc:
                        modified += 1
                        stats["written"].append(coll.put(new))
            reply = {"n": n, "nModified": modified}
            if upserted:
                reply["upserted"] = upserted
            return reply
        if name == "delete":
            n = 0
            for spec in body.get("deletes", []):
                found = coll.find(spec.get("q", {}), stats)
                for doc in found[:1] if spec.get("limit") else found:
                    stats["written"].append(coll.sizes[doc["_id"]])
                    coll.remove(doc["_id"])
                    n += 1
            return {"n": n}
        if name == "findAndModify":
            found = _sorted(coll.find(body.get("query", {}), stats), body.get("sort"))[:1]
            before = found[0] if found else None
            last = {"n": 0, "updatedExisting": False}
            after = None
            if body.get("remove"):
                if before is not None:
                    stats["written"].append(coll.sizes[before["_id"]])
                    coll.remove(before["_id"])
                    last["n"] = 1
            elif before is not None:
                after = _apply(before, body["update"], inserting=False)
                if after != before:
                    stats["written"].append(coll.put(after))
                last.update(n=1, updatedExisting=True)
            elif body.get("upsert"):
                seed = {k: v for k, v in _equalities(body.get("query", {})) if "." not in k}
                seed.setdefault("_id", bson.ObjectId())
                after = _apply(seed, body["update"], inserting=True)
                stats["written"].append(coll.put(after))
                last.update(n=1, upserted=seed["_id"])
            value = after if body.get("new") else before
            value = None if value is None else _project(value, body.get("fields"))
            if value is not None:
                stats["returned"].append(len(bson.encode(value)))
            return {"lastErrorObject": last, "value": value}
        if name == "find":
            docs = _sorted(coll.find(body.get("filter", {}), stats), body.get("sort"))
            docs = docs[body.get("skip", 0):]
            if body.get("limit"):
                docs = docs[:abs(body["limit"])]
            batch = [_project(d, body.get("projection")) for d in docs]
            stats["returned"] += [len(bson.encode(d)) for d in batch]
            return {"cursor": {"id": bson.int64.Int64(0), "ns": f"{db}.{body['find']}", "firstBatch": batch}}
        if name == "aggregate":
            docs = list(coll.docs.values()) if coll is not None else []
            first = True
            for stage in body.get("pipeline", []):
                (op, arg), = stage.items()
                if op == "$match":
                    docs = coll.find(arg, stats) if first else [d for d in docs if matches(d, arg)]
                elif op == "$group":
                    docs = _group(docs, arg)
                elif op == "$sort":
                    docs = _sorted(docs, arg)
                elif op == "$limit":
                    docs = docs[:arg]
                elif op == "$skip":
                    docs = docs[arg:]
                elif op == "$project":
                    docs = [_project(d, arg) for d in docs]
                elif op == "$count":
                    docs = [{arg: len(docs)}]
                else:
                    raise ValueError(f"the peer has no aggregation stage {op}")
                if first and op != "$match":
                    stats["examined"] += len(coll.docs)
                    stats["examined_bytes"] += sum(coll.sizes.values())
                first = False
            stats["returned"] += [len(bson.encode(d)) for d in docs]
            return {"cursor": {"id": bson.int64.Int64(0), "ns": f"{db}.{body['aggregate']}", "firstBatch": docs}}
        if name == "distinct":
            values = []
            for doc in coll.find(body.get("query") or {}, stats):
                value = _get(doc, body["key"])
                if value is not MISSING and value not in values:
                    values.append(value)
            return {"values": values}
        if name in ("count",):
            return {"n": len(coll.find(body.get("query") or {}, stats))}
        if name in ("drop", "dropDatabase", "listIndexes", "listCollections"):
            return {"cursor": {"id": bson.int64.Int64(0), "ns": db, "firstBatch": []}}
        raise ValueError(f"the peer has no command {name}")


def _group(docs: List[dict], spec: dict) -> List[dict]:
    def value_of(doc, expression):
        if isinstance(expression, str) and expression.startswith("$"):
            value = _get(doc, expression[1:])
            return None if value is MISSING else value
        return expression

    groups: Dict[Any, dict] = {}
    for doc in docs:
        key = value_of(doc, spec["_id"])
        out = groups.setdefault(_sort_key(key) + (repr(key),), {"_id": key})
        for name, accumulator in spec.items():
            if name == "_id":
                continue
            (op, expression), = accumulator.items()
            value = value_of(doc, expression)
            if op == "$sum":
                out[name] = out.get(name, 0) + (value if isinstance(value, (int, float)) else 0)
            elif op in ("$min", "$max"):
                if value is not None and (name not in out or out[name] is None
                                          or (value < out[name] if op == "$min" else value > out[name])):
                    out[name] = value
                out.setdefault(name, None)
            elif op == "$first":
                out.setdefault(name, value)
            elif op == "$push":
                out.setdefault(name, []).append(value)
            else:
                raise ValueError(f"the peer has no accumulator {op}")
    return list(groups.values())


class _WireHandler(socketserver.BaseRequestHandler):
    peer: MongoPeer

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.request.recv(n - len(data))
            if not chunk:
                raise ConnectionError
            data += chunk
        return data

    def handle(self) -> None:
        import bson

        options = bson.CodecOptions(document_class=dict)
        try:
            while True:
                length, request_id, _, opcode = struct.unpack("<iiii", self._read(16))
                payload = self._read(length - 16)
                if opcode == OP_QUERY:  # the legacy handshake
                    name_end = payload.index(b"\x00", 4)
                    namespace = payload[4:name_end].decode()
                    query = bson.decode(payload[name_end + 9:], codec_options=options)
                    reply = bson.encode(self.peer.command(namespace.split(".")[0], query))
                    body = struct.pack("<iqii", 0, 0, 0, 1) + reply
                    self.request.sendall(struct.pack("<iiii", 16 + len(body), request_id, request_id, OP_REPLY) + body)
                    continue
                flags = struct.unpack("<I", payload[:4])[0]
                position, end = 4, len(payload) - (4 if flags & 1 else 0)  # flag bit 0: a checksum follows
                body, sequences = {}, {}
                while position < end:
                    kind = payload[position]
                    position += 1
                    size = struct.unpack("<i", payload[position:position + 4])[0]
                    if kind == 0:
                        body = bson.decode(payload[position:position + size], codec_options=options)
                    else:
                        section = payload[position + 4:position + size]
                        name_end = section.index(b"\x00")
                        docs, cursor = [], name_end + 1
                        while cursor < len(section):
                            doc_size = struct.unpack("<i", section[cursor:cursor + 4])[0]
                            docs.append(bson.decode(section[cursor:cursor + doc_size], codec_options=options))
                            cursor += doc_size
                        sequences[section[:name_end].decode()] = docs
                    position += size
                body.update(sequences)
                try:
                    reply = self.peer.command(body.get("$db", "admin"), body)
                except Exception as exc:  # noqa: BLE001 (the client gets the failure as a server would say it)
                    reply = {"ok": 0.0, "errmsg": f"{type(exc).__name__}: {exc}", "code": 8000}
                if flags & 2:  # moreToCome: no reply wanted
                    continue
                out = struct.pack("<I", 0) + b"\x00" + bson.encode(reply)
                self.request.sendall(struct.pack("<iiii", 16 + len(out), request_id, request_id, OP_MSG) + out)
        except ConnectionError:
            return


def serve_mongo() -> None:
    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    _WireHandler.peer = MongoPeer()
    with Server(("127.0.0.1", 0), _WireHandler) as server:
        print(server.server_address[1], flush=True)
        server.serve_forever()


# =====================================================================================================
# Counting at the SDKs
# =====================================================================================================
class Meter:
    """Every operation of the three services, by class, since the last reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.blob: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)  # class -> {op: n}
        self.blob_bytes = collections.Counter()  # sent, received
        self.bus = collections.Counter()  # op -> n
        self.bus_bytes = collections.Counter()
        self.bus_billed = 0  # operations as Service Bus Standard bills them (see bus_billed_for)
        self.mongo = collections.Counter()  # command -> n
        self.mongo_bytes = collections.Counter()  # request, reply
        self.ru = collections.Counter()  # class -> RU
        self.ru_by_command = collections.Counter()  # "<command> <collection>" -> RU
        self.mongo_by_collection = collections.Counter()  # "<command> <collection>" -> n
        self.mongo_by_class = collections.Counter()
        self.examined = 0
        self.by_scope = collections.Counter()  # "<who> | <service> | <operation>" -> n (RU for "ru")
        self.scope = "other"
        self.by_caller = collections.Counter()

    def count(self, service: str, operation: str, n: float = 1) -> None:
        self.by_scope[f"{self.scope} | {service} | {operation}"] += n
        if TRACE_CALLERS:
            self.by_caller[f"{self.scope} | {service} | {operation} | {caller()}"] += n


TRACE_CALLERS = False  # --callers: also name the product code that made each operation (slower)
PRODUCT_DIRS = ("/handlers/", "/function_app/", "/xt_submit/services/", "/xt_submit/adapters/")


def caller() -> str:
    """The innermost handler or app frame, and the adapter method under it, that led to this operation."""
    frame, adapter, outer = sys._getframe(2), "", ""
    while frame is not None:
        name = frame.f_code.co_filename
        if "/xt_submit/adapters/" in name and not adapter:
            adapter = f"{Path(name).stem}.{frame.f_code.co_name}"
        elif any(d in name for d in PRODUCT_DIRS[:3]):
            outer = f"{Path(name).stem}.{frame.f_code.co_name}:{frame.f_lineno}"
            break
        frame = frame.f_back
    return f"{outer or '?'} -> {adapter or '?'}"


METER = Meter()
BILLING_CHUNK = 64 * 1024  # Service Bus Standard: a message is one operation per 64 KB (azure_prices.json)


def blob_operation(method: str, url: str, headers: dict) -> Tuple[str, str]:
    """(pricing class, REST operation) of one Blob request, by method and query (the REST reference)."""
    query = dict(part.partition("=")[::2] for part in url.partition("?")[2].split("&") if part)
    comp, restype = query.get("comp"), query.get("restype")
    if method == "PUT":
        if restype == "container":
            return "list_create_container", "Create Container"
        operation = {"appendblock": "Append Block", "block": "Put Block", "blocklist": "Put Block List",
                     "metadata": "Set Blob Metadata", "properties": "Set Blob Properties", "tier": "Set Blob Tier"}
        if comp in operation:
            return "write", operation[comp]
        if headers.get("x-ms-copy-source"):
            return "write", "Copy Blob"
        return "write", f"Put Blob ({headers.get('x-ms-blob-type', 'BlockBlob')})"
    if method == "GET":
        if comp == "list":
            return "list_create_container", "List Blobs" if restype == "container" else "List Containers"
        if comp == "userdelegationkey":
            return "other", "Get User Delegation Key"
        return "read", "Get Blob"
    if method == "HEAD":
        return "other", "Get Blob Properties"
    if method == "DELETE":
        return "delete", "Delete Blob"
    if method == "POST" and comp == "userdelegationkey":
        return "other", "Get User Delegation Key"
    return "other", f"{method} {comp or ''}".strip()


def install_meters(prices: dict) -> None:
    """Wrap azure-core's transport, the Service Bus SDK's sender and receiver, and listen to pymongo."""
    from azure.core.pipeline.transport import RequestsTransport

    original_send = RequestsTransport.send

    def counted_send(self, request, **kwargs):
        response = original_send(self, request, **kwargs)
        cls, operation = blob_operation(request.method, request.url, dict(request.headers))
        METER.blob[cls][operation] += 1
        METER.count("blob", operation)
        body = request.data if isinstance(request.data, (bytes, bytearray)) else b""
        METER.blob_bytes["sent"] += len(body) if body else int(request.headers.get("Content-Length") or 0)
        METER.blob_bytes["received"] += int(response.headers.get("Content-Length") or 0)
        return response

    RequestsTransport.send = counted_send

    from azure.servicebus import ServiceBusReceiver, ServiceBusSender

    def wrap(cls, name: str, count: Callable[..., None]):
        original = getattr(cls, name)

        def counted(self, *args, **kwargs):
            result = original(self, *args, **kwargs)
            count(result, *args, **kwargs)
            return result

        setattr(cls, name, counted)

    def sent(_, message, *a, **k):
        if hasattr(message, "_messages"):  # a ServiceBusMessageBatch
            messages = list(message._messages)
        else:
            messages = [message] if hasattr(message, "body") else list(message)
        METER.bus["send calls"] += 1
        METER.count("service bus", "send")
        for m in messages:
            size = len(b"".join(m.body)) if not isinstance(m.body, bytes) else len(m.body)
            METER.bus["messages sent"] += 1
            METER.bus_bytes["sent"] += size
            METER.bus_billed += max(1, -(-size // BILLING_CHUNK))

    def received(result, *a, **k):
        METER.bus["receive calls"] += 1
        METER.count("service bus", "receive")
        METER.bus["messages received"] += len(result)
        METER.bus_billed += 1 + sum(max(0, -(-len(b"".join(m.body)) // BILLING_CHUNK) - 1) for m in result)
        METER.bus_bytes["received"] += sum(len(b"".join(m.body)) for m in result)

    def one(kind: str):
        def count(*_, **__):
            METER.bus[kind] += 1
            METER.bus_billed += 1
            METER.count("service bus", kind)
        return count

    wrap(ServiceBusSender, "send_messages", sent)
    wrap(ServiceBusSender, "schedule_messages", lambda r, m, *a, **k: sent(r, m))
    wrap(ServiceBusReceiver, "receive_messages", received)
    wrap(ServiceBusReceiver, "peek_messages", lambda r, *a, **k: one("peeks")())
    for name, kind in (("complete_message", "completes"), ("abandon_message", "abandons"),
                       ("dead_letter_message", "dead-letters"), ("renew_message_lock", "lock renewals")):
        wrap(ServiceBusReceiver, name, one(kind))

    import bson
    from pymongo import monitoring

    ru_table = prices["cosmos_db_mongo"]["ru_per_operation"]
    sizes_kb, reads, writes = ru_table["document_kb"], ru_table["read_ru"], ru_table["write_ru"]

    def ru(table: List[float], size_bytes: int) -> float:
        """The documented RU of one operation on a document of this size, linear between the table's sizes."""
        kb = max(size_bytes / 1024, sizes_kb[0])
        for (k0, r0), (k1, r1) in zip(zip(sizes_kb, table), zip(sizes_kb[1:], table[1:])):
            if kb <= k1:
                return r0 + (r1 - r0) * (kb - k0) / (k1 - k0)
        return table[-1] * kb / sizes_kb[-1]

    class Commands(monitoring.CommandListener):
        def __init__(self) -> None:
            self.pending: Dict[int, Tuple[str, dict]] = {}

        def started(self, event):
            METER.mongo_bytes["request"] += len(bson.encode(event.command))
            self.pending[event.request_id] = (event.command_name, dict(event.command))

        def succeeded(self, event):
            name, command = self.pending.pop(event.request_id, (event.command_name, {}))
            reply = event.reply or {}
            METER.mongo_bytes["reply"] += len(bson.encode(reply))
            if name in ("hello", "ismaster", "isMaster", "ping", "endSessions", "buildInfo", "createIndexes",
                        "killCursors"):
                METER.mongo[f"{name} (connection/setup)"] += 1
                return
            METER.mongo[name] += 1
            peer = reply.get("xtPeer") or {}
            written, returned = peer.get("written") or [], peer.get("returned") or []
            METER.examined += peer.get("examined", 0)
            point = (name == "find" and set(command.get("filter") or {}) == {"_id"} and command.get("limit") == 1)
            if written:  # each document written, at its size (Cosmos rewrites the whole item)
                cls = "write"
                units = sum(ru(writes, size) for size in written)
            elif point or name == "findAndModify":  # an _id lookup that changed nothing: a point read
                cls = "point read"
                units = ru(reads, max(returned) if returned else 0)
            elif name in ("insert", "update", "delete"):  # matched nothing to change: read what it looked at
                cls = "write (nothing changed)"
                units = ru(reads, peer.get("examined_bytes", 0))
            else:  # a query: assumed the read RU of every byte it loaded (azure_prices.json)
                cls = "query"
                units = max(ru(reads, peer.get("examined_bytes", 0)), ru(reads, sum(returned)))
            METER.ru[cls] += units
            METER.mongo_by_class[cls] += 1
            where = f"{name} {command.get(name, '')}"
            METER.ru_by_command[where] += units
            METER.mongo_by_collection[where] += 1
            METER.count("mongo", where)
            METER.count("mongo RU", where, units)

        def failed(self, event):
            self.pending.pop(event.request_id, None)
            METER.mongo[f"{event.command_name} (failed)"] += 1

    monitoring.register(Commands())


# =====================================================================================================
# The peers
# =====================================================================================================
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_port(port: int, process, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not listen on {port} (exit code {process.poll()})")
            time.sleep(0.05)


class Peers:
    def __init__(self, root: Path) -> None:
        self.processes: List[subprocess.Popen] = []
        binary = ROOT / "node_modules" / ".bin" / "azurite-blob"
        if not binary.exists():
            raise RuntimeError("Azurite is missing: scripts/bootstrap.sh installs it (npm ci)")
        port = free_port()
        log = root / "azurite.log"
        self._start([str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
                     "--skipApiVersionCheck", "--loose", "--disableTelemetry", "--silent"],
                    stdout=open(log, "w"), stderr=subprocess.STDOUT)
        wait_port(port, self.processes[-1], "Azurite")
        self.blob = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
                     f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")
        broker = self._start([sys.executable, str(ROOT / "tests" / "peers" / "servicebus_broker.py")],
                             stdout=subprocess.PIPE, text=True)
        bus_port = int(broker.stdout.readline())
        wait_port(bus_port, broker, "the Service Bus broker")
        self.bus = (f"Endpoint=sb://127.0.0.1:{bus_port};SharedAccessKeyName=RootManageSharedAccessKey;"
                    f"SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true")
        mongo = self._start([sys.executable, __file__, "--serve-mongo"], stdout=subprocess.PIPE, text=True)
        mongo_port = int(mongo.stdout.readline())
        self.mongo = f"mongodb://127.0.0.1:{mongo_port}/?directConnection=true"

    def _start(self, command, **popen) -> subprocess.Popen:
        process = subprocess.Popen(command, **popen)
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()


# =====================================================================================================
# One sweep through the app
# =====================================================================================================
class Invocations:
    """The app's function calls: count, in-thread CPU seconds and wall seconds, per function."""

    def __init__(self) -> None:
        self.count = collections.Counter()
        self.cpu = collections.Counter()
        self.wall = collections.Counter()

    def call(self, function: str, fn: Callable[[], None], event: str = "") -> None:
        """In-thread CPU (the SDK's serialising and the meters' own counting included; the peers are
        other processes) and wall time of one invocation."""
        METER.scope = f"{function}({event})" if event else function
        cpu, wall = time.thread_time(), time.perf_counter()
        try:
            fn()
        finally:
            METER.scope = "trigger"
        self.cpu[function] += time.thread_time() - cpu
        self.wall[function] += time.perf_counter() - wall
        self.count[function] += 1


@functools.lru_cache(maxsize=1)  # the app registers its functions once per process
def functions_of_app() -> Dict[str, Callable]:
    from function_app.app import app

    return {f.get_function_name(): f.get_user_function() for f in app.get_functions()}


def as_trigger_message(received, queue_client) -> Any:
    """The Service Bus trigger's binding of a received message (what the host hands the function):
    the SDK message the adapter holds gives its id and application properties."""
    import azure.functions.servicebus as fsb

    _, sdk_message = queue_client._held[received.lock_token]
    properties = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                  for k, v in (sdk_message.application_properties or {}).items()}
    return fsb.ServiceBusMessage(body=received.body, application_properties=properties, user_properties=properties,
                                 message_id=sdk_message.message_id or "", delivery_count=received.delivery_count,
                                 sequence_number=sdk_message.sequence_number, lock_token=received.lock_token)


LOCK_RENEW_SECONDS = 10.0  # inside the broker's 30 s lock, as the host renews (maxAutoLockRenewalDuration)


@contextlib.contextmanager
def renewed(trigger, message):
    """The host renews a message's lock while its function runs (a job's last RunFinished renders the
    job's page, which can take longer than one lock)."""
    done = threading.Event()

    def renew() -> None:
        while not done.wait(LOCK_RENEW_SECONDS):
            trigger.renew_lock(message)

    renewer = threading.Thread(target=renew, daemon=True)
    renewer.start()
    try:
        yield
    finally:
        done.set()
        renewer.join()


def deliver(trigger, queue: str, function: str, fn: Callable, invocations: Invocations, expected: int) -> int:
    """The host's Service Bus trigger: receive one message per call (its single-dispatch pump), run the
    function, complete it on success (autoCompleteMessages), until `expected` messages are handled."""
    handled, idle_since = 0, time.monotonic()
    while handled < expected:
        received = trigger.receive(queue, max_messages=1)
        if not received:  # a new receiver's first calls may come back empty while its link attaches
            if time.monotonic() - idle_since > 60:
                raise RuntimeError(f"{queue}: expected {expected - handled} more messages for {function}")
            continue
        idle_since = time.monotonic()
        message = received[0]
        event = json.loads(message.body).get("type", "")
        with renewed(trigger, message):
            invocations.call(function, lambda: fn(as_trigger_message(message, trigger)), event)
        trigger.complete(message)
        handled += 1
    return handled


def sweep_space(runs: int) -> dict:
    tens = 10 if runs % 10 == 0 else 1
    return {"lr": [round(0.001 * (i + 1), 4) for i in range(tens)], "seed": list(range(runs // tens))}


def node_plays(task, storage, publisher, progress_events: int) -> None:
    """What a Batch node's run wrapper writes and sends for one run that logs a few metrics and writes
    one output file (xt_submit/runtime/wrapper.py: start, sync, finish)."""
    from xt_submit.domain import layout, run_log
    from xt_submit.domain.messages import COMPLETED, RunFinished, RunProgress, RunStarted

    METER.scope = "node (run wrapper)"
    ws, run = task.workspace, task.run
    log_key = layout.run_log_key(ws, run)
    started = time.time()
    storage.read(task.code_key)  # Batch's resource file: the node fetches the code zip once
    opening = (run_log.record(task.created_at, "created", {"job": task.job, "command": task.command,
                                                          "step_name": task.step_name})
               + run_log.record(task.created_at, "hparams", task.hparams)
               + run_log.record(task.created_at, "queued", {"target": task.target}))
    storage.create_log(log_key, opening + run_log.record(started, "started", {"node": "node-1"}))  # one write
    publisher.send_events([RunStarted(workspace=ws, job=task.job, run=run, node_id="node-1", started_at=started)])
    metrics = b"".join(run_log.record(started + step, "metrics", {"step": step, "loss": 1.0 / (step + 1), "acc": step / 10})
                       for step in range(10))
    storage.append(layout.console_key(ws, run), b"epoch 1..10\n" * 10)  # the console, shipped at the sync
    storage.append(log_key, metrics)
    for report in range(progress_events):
        publisher.send_events([RunProgress(workspace=ws, job=task.job, run=run, node_id="node-1", at=started + report,
                                           log_bytes=len(opening) + len(metrics) + report, metrics={"loss": 0.1})])
    storage.write(layout.output_prefix(ws, run) + "result.txt", b"loss=0.1\n")  # the after-files capture
    ended = started + 10
    storage.append(log_key, run_log.record(ended, "ended", {"status": COMPLETED, "exit_code": 0, "duration": 10.0,
                                                             "reason": ""}))
    publisher.send_events([RunFinished(workspace=ws, job=task.job, run=run, node_id="node-1", status=COMPLETED,
                                       exit_code=0, started_at=started, ended_at=ended, metrics={"loss": 0.1, "acc": 0.9})])


def snapshot_meter() -> dict:
    return {"blob": {cls: dict(ops) for cls, ops in METER.blob.items()}, "blob_bytes": dict(METER.blob_bytes),
            "bus": dict(METER.bus), "bus_bytes": dict(METER.bus_bytes), "bus_billed": METER.bus_billed,
            "mongo": dict(METER.mongo), "mongo_bytes": dict(METER.mongo_bytes), "mongo_by_class": dict(METER.mongo_by_class),
            "ru": {k: round(v, 2) for k, v in METER.ru.items()}, "mongo_examined": METER.examined,
            "ru_by_command": {k: round(v, 2) for k, v in METER.ru_by_command.items()},
            "mongo_by_collection": dict(METER.mongo_by_collection), "by_scope": dict(METER.by_scope),
            "by_caller": dict(METER.by_caller)}


def one_sweep(peers: Peers, runs: int, progress_events: int) -> dict:
    """A job of `runs` runs, submitted, dispatched, run and ended through the app; what each phase cost."""
    from function_app import settings
    from xt_submit.adapters.queue.servicebus import ServiceBusQueue
    from xt_submit.bootstrap import publisher_for
    from xt_submit.domain import layout
    from xt_submit.domain.messages import JobManifest, JobSubmitted, TasksQueued, decode_task_message
    from xt_submit.node_kit import code_archive

    tag = uuid.uuid4().hex[:8]
    names = {"XT_STORAGE": peers.blob, "XT_STORAGE_CONTAINER": f"xt-{tag}", "XT_SERVICEBUS": peers.bus,
             "XT_JOBS_QUEUE": f"jobs-{tag}", "XT_EVENTS_QUEUE": f"events-{tag}", "XT_UPLOADS_QUEUE": f"uploads-{tag}",
             "XT_TASKS_QUEUE": f"tasks-{tag}", "XT_MONGO": peers.mongo, "XT_MONGO_DATABASE": f"xt_{tag}"}
    os.environ.update(names)
    settings.reset()
    functions = functions_of_app()
    phases: Dict[str, dict] = {}

    def phase(name: str) -> None:
        phases[name] = snapshot_meter()
        METER.reset()

    METER.reset()
    ports = settings.ports()  # the app's worker starts: its container check and the stats indexes
    trigger = ServiceBusQueue(peers.bus, max_wait_time=5.0)  # the host's trigger, a client of its own
    node_bus = ServiceBusQueue(peers.bus, max_wait_time=5.0)  # the node's (and the agent's) client
    node_publisher = publisher_for(node_bus, jobs_queue=names["XT_JOBS_QUEUE"], events_queue=names["XT_EVENTS_QUEUE"])
    phase("app start")

    # the client (`xt run`): the code zip, then JobSubmitted
    src = Path(tempfile.mkdtemp(prefix="xt-bench-p8-src-"))
    (src / "train.py").write_text("print('hi')\n")
    snapshot = code_archive.snapshot_code(["."], str(src))
    remove_scratch(src)
    code_key = layout.code_key(snapshot.sha256)
    METER.scope = "client (xt run)"
    if not ports.storage.exists(code_key):
        ports.storage.write(code_key, snapshot.data)
    manifest = JobManifest(workspace=WORKSPACE, experiment="bench", script="train.py", command="python train.py",
                           code_key=code_key, code_sha256=snapshot.sha256, hp_space=sweep_space(runs), seed=1)
    node_publisher.send_job(JobSubmitted(submission_id=uuid.uuid4().hex, manifest=manifest, submitted_at=time.time()))
    phase("submit")

    invocations = Invocations()
    deliver(trigger, names["XT_JOBS_QUEUE"], "dispatch", functions["dispatch"], invocations, 1)
    phase("dispatch")

    tasks = []  # the tasks queue, taken as the agent (or a node) takes it
    METER.scope = "agent (tasks queue)"
    while len(tasks) < runs:
        for message in node_bus.receive(names["XT_TASKS_QUEUE"], max_messages=16):
            taken = decode_task_message(message.body)
            tasks += taken.tasks if isinstance(taken, TasksQueued) else []
            node_bus.complete(message)
    phase("tasks to nodes")

    events_per_run = 2 + progress_events
    started = time.perf_counter()
    for start in range(0, runs, NODE_WAVE):
        wave = tasks[start:start + NODE_WAVE]
        for task in wave:
            node_plays(task, ports.storage, node_publisher, progress_events)
        phases.setdefault("_node", collections.Counter())
        deliver(trigger, names["XT_EVENTS_QUEUE"], "run_events", functions["run_events"], invocations,
                len(wave) * events_per_run)
    run_seconds = time.perf_counter() - started
    # the node's and the app's shares of the run phase are told apart by a second, node-only pass below
    phase("runs")

    job = ports.stats.list_jobs(WORKSPACE)[-1]
    assert job["status"] == "completed" and job["counts"].get("completed") == runs, (job["status"], job["counts"])
    assert ports.storage.exists(layout.job_report_key(WORKSPACE, job["name"])), "the job's report page was not published"
    phase("checks")
    for client in (trigger, node_bus):
        client.close()
    return {"runs": runs, "phases": {k: v for k, v in phases.items() if not k.startswith("_")},
            "invocations": {"count": dict(invocations.count), "cpu_s": dict(invocations.cpu), "wall_s": dict(invocations.wall)},
            "run_phase_s": run_seconds}


# =====================================================================================================
# Costs
# =====================================================================================================
def totals(phases: Dict[str, dict], names: Iterable[str]) -> dict:
    out = {"blob": collections.Counter(), "blob_ops": collections.Counter(), "blob_bytes": collections.Counter(),
           "bus": collections.Counter(), "bus_bytes": collections.Counter(), "bus_billed": 0,
           "mongo": collections.Counter(), "mongo_bytes": collections.Counter(), "mongo_by_class": collections.Counter(),
           "ru": collections.Counter(), "mongo_examined": 0, "ru_by_command": collections.Counter(),
           "mongo_by_collection": collections.Counter(), "by_scope": collections.Counter(),
           "by_caller": collections.Counter()}
    for name in names:
        p = phases[name]
        for cls, ops in p["blob"].items():
            out["blob"][cls] += sum(ops.values())
            for op, n in ops.items():
                out["blob_ops"][f"{cls}: {op}"] += n
        for key in ("blob_bytes", "bus", "bus_bytes", "mongo", "mongo_bytes", "mongo_by_class", "ru", "ru_by_command",
                    "mongo_by_collection", "by_scope", "by_caller"):
            out[key].update(p[key])
        out["bus_billed"] += p["bus_billed"]
        out["mongo_examined"] += p["mongo_examined"]
    return out


def per(counts: dict, runs: int) -> dict:
    return {k: (round(v / runs, 4) if isinstance(v, (int, float)) else {kk: round(vv / runs, 4) for kk, vv in v.items()})
            for k, v in counts.items()}


def cost_per_1000_runs(per_run: dict, cpu_s_per_run: float, invocations_per_run: float, prices: dict) -> dict:
    """USD per 1,000 runs at list prices, usage past every free grant and inside the first paid band."""
    blob, bus, cosmos, fx = prices["blob_hot_lrs"], prices["service_bus_standard"], prices["cosmos_db_mongo"], prices["functions_flex"]
    gb = fx["instance_memory_mb"] / 1024
    runs = 1000
    b = per_run["blob"]
    storage_ops = (b.get("write", 0) * blob["write_per_10k"] + b.get("read", 0) * blob["read_per_10k"]
                   + b.get("list_create_container", 0) * blob["list_per_10k"] + b.get("other", 0) * blob["other_per_10k"]) / 10_000
    return {
        "blob": round(storage_ops * runs, 5),
        "service_bus": round(per_run["bus_billed"] * runs * bus["per_million_ops_13m_to_100m"] / 1e6, 5),
        "cosmos_serverless": round(sum(per_run["ru"].values()) * runs * cosmos["serverless_per_million_ru"] / 1e6, 5),
        "functions": round(runs * (cpu_s_per_run * gb * fx["on_demand_per_gb_s"]
                                   + invocations_per_run * fx["per_million_executions"] / 1e6), 5),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--small", type=int, help="the second, smaller sweep (default runs/10)")
    parser.add_argument("--progress-events", type=int, default=1, help="RunProgress messages per run")
    parser.add_argument("--save-raw", help="also write every sweep's raw counts to this JSON file")
    parser.add_argument("--callers", action="store_true", help="also count by the product code that made each operation")
    parser.add_argument("--serve-mongo", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_mongo:
        serve_mongo()
        return
    sys.path.insert(0, str(ROOT))  # function_app is the repository's, beside the installed package
    os.environ.setdefault("PYTHON_SCRIPT_FILE_NAME", "xt_functions.py")
    import logging

    logging.getLogger("xt.functions").setLevel(logging.CRITICAL)  # the audit lines, one per invocation
    logging.getLogger("azure").setLevel(logging.WARNING)
    prices = json.loads(PRICES.read_text())
    global TRACE_CALLERS
    TRACE_CALLERS = args.callers
    install_meters(prices)
    small = args.small or max(1, args.runs // 10)
    root = Path(tempfile.mkdtemp(prefix="xt-bench-p8-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped bench still stops its peers
    peers = Peers(root)
    try:
        sweeps, wall = {}, {}
        for runs in (small, args.runs):
            t0 = time.perf_counter()
            sweeps[runs] = one_sweep(peers, runs, args.progress_events)
            wall[runs] = round(time.perf_counter() - t0, 1)
            print(f"P8 {runs} runs: {wall[runs]} s", file=sys.stderr, flush=True)
            if args.save_raw:  # as each sweep ends: a long run that is stopped keeps what it measured
                Path(args.save_raw).write_text(json.dumps({"sweeps": sweeps, "wall": wall}, default=str))
    finally:
        peers.close()
        remove_scratch(root)
    if args.save_raw:
        Path(args.save_raw).write_text(json.dumps({"sweeps": sweeps, "wall": wall}, default=str))
    emit(summary(sweeps, wall, args.runs, small, args.progress_events, prices, args.callers))


def summary(sweeps: Dict[int, dict], wall: Dict[int, float], runs_large: int, runs_small: int, progress_events: int,
            prices: dict, callers: bool = False) -> dict:
    """The result: per-run and per-job counts of the large sweep, the small one's to compare, costs."""
    per_job_phases = ("submit", "dispatch", "tasks to nodes")
    by_size = {}
    for runs, sweep in sweeps.items():
        job = totals(sweep["phases"], per_job_phases)
        whole = totals(sweep["phases"], per_job_phases + ("runs",))
        inv = sweep["invocations"]
        cpu_total = sum(inv["cpu_s"].values())
        by_size[runs] = {"per_run": per(whole, runs), "per_job_fixed": job,
                         "cpu_s_per_run": cpu_total / runs, "invocations_per_run": sum(inv["count"].values()) / runs,
                         "invocations": inv, "wall_s": wall[runs], "app_start": sweep["phases"]["app start"]}
    large, small_result = by_size[runs_large], by_size[runs_small]

    def headline(r: dict) -> dict:
        p = r["per_run"]
        return {"blob_ops": sum(p["blob"].values()), "bus_ops": p["bus_billed"], "mongo_commands": sum(p["mongo"].values()),
                "ru": sum(p["ru"].values())}

    ratios = {k: round(headline(large)[k] / headline(small_result)[k], 3) if headline(small_result)[k] else None
              for k in headline(large)}
    costs = cost_per_1000_runs(large["per_run"], large["cpu_s_per_run"], large["invocations_per_run"], prices)
    total_per_1000 = round(sum(costs.values()), 4)
    idle = idle_costs(prices)
    break_even = (idle["mlflow_server_month"] - idle["ours_month"]) / (total_per_1000 / 1000) if total_per_1000 else None
    by_party = collections.Counter()  # who spends the operations: the node, the client, the trigger, each function
    for key, n in large["per_run"]["by_scope"].items():
        party, service, _ = key.split(" | ")
        by_party[f"{party} | {service}"] += n
    return {"id": "P8", "runs": runs_large, "small_runs": runs_small, "progress_events_per_run": progress_events,
          "per_run": large["per_run"], "per_run_small": small_result["per_run"], "per_job_fixed": large["per_job_fixed"],
          "per_job_fixed_small": small_result["per_job_fixed"],
          "per_run_by_party": {k: round(v, 4) for k, v in sorted(by_party.items())},
          "biggest_per_run": biggest(large["per_run"]["by_scope"]),
          **({"by_caller_per_run": large["per_run"]["by_caller"]} if callers else {}),
          "headline_per_run": headline(large), "headline_per_run_small": headline(small_result),
          "ratio_large_to_small": ratios,
          "functions": {"cpu_ms_per_run": round(large["cpu_s_per_run"] * 1000, 3),
                        "invocations_per_run": large["invocations_per_run"],
                        "cpu_ms_per_invocation": {f: round(1000 * large["invocations"]["cpu_s"][f] / n, 3)
                                                  for f, n in large["invocations"]["count"].items()},
                        "wall_ms_per_invocation": {f: round(1000 * large["invocations"]["wall_s"][f] / n, 3)
                                                   for f, n in large["invocations"]["count"].items()}},
          "cost_per_1000_runs_usd": costs, "cost_per_1000_runs_total_usd": total_per_1000,
          "idle_month_usd": idle, "break_even_runs_per_month": round(break_even) if break_even else None,
          "app_start": large["app_start"], "wall_s": {str(k): v for k, v in wall.items()},
          "prices_checked": prices["checked"]}


def biggest(by_scope: Dict[str, float], top: int = 12) -> dict:
    """Who spends most per run: operations by (function or party, service, operation), and RU apart."""
    ops = {k: v for k, v in by_scope.items() if "| mongo RU |" not in k}
    ru = {k: v for k, v in by_scope.items() if "| mongo RU |" in k}
    return {"operations": dict(sorted(ops.items(), key=lambda kv: -kv[1])[:top]),
            "ru": dict(sorted(ru.items(), key=lambda kv: -kv[1])[:top])}


def idle_costs(prices: dict) -> dict:
    """A month with no runs: our stack (Service Bus Standard's base, data at rest, no always-ready
    Functions instance, Cosmos serverless bills nothing idle but storage) vs the tracking server."""
    bus, blob, cosmos, mlflow = (prices["service_bus_standard"], prices["blob_hot_lrs"], prices["cosmos_db_mongo"],
                                 prices["mlflow_tracking_server"])
    at_rest_gb = prices["assumptions"]["data_at_rest_gb"]
    ours = bus["base_per_month"] + at_rest_gb * (blob["per_gb_month"] + cosmos["storage_per_gb_month"])
    server = mlflow["vm_per_month"] + mlflow["database_per_month"] + mlflow["disk_per_month"]
    return {"ours_month": round(ours, 2), "service_bus_base": bus["base_per_month"],
            "storage_at_rest": round(at_rest_gb * (blob["per_gb_month"] + cosmos["storage_per_gb_month"]), 2),
            "functions_idle": 0.0, "cosmos_serverless_idle_ru": 0.0,
            "mlflow_server_month": round(server, 2), "mlflow_server": mlflow["what"]}


if __name__ == "__main__":
    main()
