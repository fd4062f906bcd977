"""The Functions host's side of its contract with the Python worker, in the test process.

Core Tools (the host) cannot be installed here, but the worker can: `azure_functions_runtime` is
the library the host's Python worker runs on 3.13. This module plays the host: it compiles the
host's gRPC contract (tests/peers/azure-functions-protobuf, Azure's FunctionRpc.proto) with
grpcio-tools, sends the worker the messages the host sends — WorkerInitRequest with the app's
directory, FunctionsMetadataRequest, FunctionLoadRequest per function, InvocationRequest — and
delivers Service Bus messages as the host's Service Bus trigger does: peek-lock, lock renewal,
trigger data and metadata shaped as the extension binds them, complete on success and abandon on
failure (autoCompleteMessages).
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import importlib
import json
import logging
import subprocess
import sys
import tempfile
import threading
import types
import uuid
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "tests" / "peers" / "azure-functions-protobuf" / "src" / "proto"


@functools.lru_cache(maxsize=1)
def compiled_protos():
    """FunctionRpc_pb2, compiled from the host's contract (once per test process)."""
    out = Path(tempfile.mkdtemp(prefix="xt-protos-"))
    sources = [str(p.relative_to(PROTOS)) for p in sorted(PROTOS.rglob("*.proto"))]
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}", f"--python_out={out}", *sources],
                   check=True, capture_output=True)
    for package in ("identity", "shared"):
        (out / package / "__init__.py").touch()
    sys.path.insert(0, str(out))
    return importlib.import_module("FunctionRpc_pb2")


def _utc(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).isoformat()


class AuditLines(logging.Handler):
    """The app's audit lines as the worker logs them (one JSON object per line)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: List[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(dict(json.loads(record.getMessage()), level=record.levelname))
        except ValueError:
            pass


class FunctionsHost:
    """One worker for the app at `app_dir` (the worker's global state allows one per process)."""

    def __init__(self, app_dir: Path) -> None:
        self.protos = compiled_protos()
        self.loop = asyncio.new_event_loop()
        from azure_functions_runtime import handle_event

        self.worker = handle_event
        p = self.protos
        init = self._send("worker_init_request", p.StreamingMessage(worker_init_request=p.WorkerInitRequest(
            host_version="4.1044.0", function_app_directory=str(app_dir), capabilities={})))
        self._check(init, "worker init")
        metadata = self._send("functions_metadata_request", p.StreamingMessage(
            functions_metadata_request=p.FunctionsMetadataRequest(function_app_directory=str(app_dir))))
        self._check(metadata, "function metadata")
        self.metadata = {m.name: m for m in metadata.function_metadata_results}
        for m in self.metadata.values():
            loaded = self._send("function_load_request", p.StreamingMessage(function_load_request=p.FunctionLoadRequest(
                function_id=m.function_id, metadata=m)))
            self._check(loaded, f"function load of {m.name}")
        self.audit = AuditLines()
        logging.getLogger("xt.functions").addHandler(self.audit)
        logging.getLogger("xt.functions").setLevel(logging.INFO)

    def _send(self, kind: str, message):
        request = types.SimpleNamespace(request=message, properties={"protos": self.protos, "host": "127.0.0.1"})
        return self.loop.run_until_complete(getattr(self.worker, kind)(request))

    def _check(self, response, what: str) -> None:
        if response.result.status != self.protos.StatusResult.Success:
            raise AssertionError(f"{what}: {response.result.exception.message}")

    def bindings(self) -> Dict[str, List[dict]]:
        """Each function's bindings as the worker reports them for the host to register."""
        return {name: [json.loads(raw) for raw in m.raw_bindings] for name, m in self.metadata.items()}

    def invoke(self, function: str, trigger_arg: str, data, trigger_metadata: Dict[str, object]):
        """One InvocationRequest; returns the worker's InvocationResponse."""
        p = self.protos
        request = p.InvocationRequest(invocation_id=str(uuid.uuid4()), function_id=self.metadata[function].function_id,
                                      input_data=[p.ParameterBinding(name=trigger_arg, data=data)],
                                      trigger_metadata=trigger_metadata)
        return self._send("invocation_request", p.StreamingMessage(invocation_request=request))

    def succeeded(self, response) -> bool:
        return response.result.status == self.protos.StatusResult.Success

    def failure(self, response) -> str:
        return response.result.exception.message

    # --- the triggers ---------------------------------------------------------------------
    def service_bus_invocation(self, function: str, message):
        """The Service Bus trigger's binding of one received SDK message (extension 5.x names)."""
        p = self.protos
        properties = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                      for k, v in (message.application_properties or {}).items()}
        metadata = {
            "MessageId": p.TypedData(string=message.message_id or ""),
            # numbers travel as JSON (the worker's TypedData decoding has no int kind)
            "DeliveryCount": p.TypedData(json=json.dumps(message.delivery_count or 1)),
            "SequenceNumber": p.TypedData(json=json.dumps(message.sequence_number or 0)),
            "LockToken": p.TypedData(string=str(message.lock_token)),
            "EnqueuedTimeUtc": p.TypedData(string=_utc(message.enqueued_time_utc)),
            "ApplicationProperties": p.TypedData(json=json.dumps(properties)),
            "UserProperties": p.TypedData(json=json.dumps(properties)),
            "ContentType": p.TypedData(string=message.content_type or ""),
            "sys": p.TypedData(json=json.dumps({"MethodName": function, "UtcNow": _utc(datetime.datetime.now()),
                                                "RandGuid": str(uuid.uuid4())})),
        }
        return self.invoke(function, "msg", p.TypedData(bytes=b"".join(message.body)), metadata)

    def timer_invocation(self, function: str):
        p = self.protos
        timer = {"Schedule": {"AdjustForDST": True}, "IsPastDue": False,
                 "ScheduleStatus": {"Last": _utc(datetime.datetime.now()), "Next": _utc(datetime.datetime.now())}}
        return self.invoke(function, "timer", p.TypedData(json=json.dumps(timer)),
                           {"sys": p.TypedData(json=json.dumps({"MethodName": function}))})


class ServiceBusTrigger:
    """Deliveries from the broker to one function, as the host's Service Bus trigger makes them."""

    def __init__(self, host: FunctionsHost, connection_string: str) -> None:
        from azure.servicebus import ServiceBusClient

        self.host = host
        self.client = ServiceBusClient.from_connection_string(connection_string)
        self.receivers: Dict[str, object] = {}
        self.failures: List[str] = []

    def deliver(self, queue: str, function: str, max_messages: int = 16) -> int:
        """Receive what is waiting, one message at a time (prefetchCount 0: a waiting message's
        lock is not running out), invoke the function, settle; how many were delivered."""
        from azure.servicebus.exceptions import ServiceBusError

        if queue not in self.receivers:
            receiver = self.client.get_queue_receiver(queue, max_wait_time=1.0)
            # its link opened now, as the host's listener opens it at start: the SDK bounds a first
            # receive's link opening by that receive's wait (ServiceBusQueue._receiver does the same)
            receiver.__enter__()
            self.receivers[queue] = receiver
        receiver, delivered = self.receivers[queue], 0
        while delivered < max_messages:
            messages = receiver.receive_messages(max_message_count=1, max_wait_time=0.5 if delivered else 1.0)
            if not messages:
                break
            message = messages[0]
            try:  # a message that waited in the link's buffer past its lock is the broker's again
                receiver.renew_message_lock(message)
            except ServiceBusError:
                self.receivers.pop(queue).close()  # the SDK shuts a receiver down after a lost lock
                return delivered
            with self._renewed(receiver, message):
                response = self.host.service_bus_invocation(function, message)
            if self.host.succeeded(response):
                receiver.complete_message(message)
            else:
                self.failures.append(self.host.failure(response))
                receiver.abandon_message(message)
            delivered += 1
        return delivered

    @contextlib.contextmanager
    def _renewed(self, receiver, message):
        """The host renews a message's lock while its function runs (maxAutoLockRenewalDuration);
        the test broker's locks last 2 s, less than an invocation may take on a loaded machine."""
        done = threading.Event()

        def renew():
            while not done.wait(0.5):
                receiver.renew_message_lock(message)

        renewer = threading.Thread(target=renew, daemon=True)
        renewer.start()
        try:
            yield
        finally:
            done.set()
            renewer.join()

    def close(self) -> None:
        for receiver in self.receivers.values():
            receiver.close()
        self.client.close()


def blob_created_event(account_url: str, container: str, name: str, size: int) -> bytes:
    """What Event Grid delivers to a Service Bus queue for a new blob (the Event Grid schema of
    Microsoft.Storage.BlobCreated, one event per message)."""
    return json.dumps({
        "topic": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/xt/providers/"
                 "Microsoft.Storage/storageAccounts/devstoreaccount1",
        "subject": f"/blobServices/default/containers/{container}/blobs/{name}",
        "eventType": "Microsoft.Storage.BlobCreated",
        "eventTime": _utc(datetime.datetime.now()),
        "id": str(uuid.uuid4()),
        "data": {"api": "PutBlob", "clientRequestId": str(uuid.uuid4()), "requestId": str(uuid.uuid4()),
                 "eTag": "0x8D4BCC2E4835CD0", "contentType": "application/zip", "contentLength": size,
                 "blobType": "BlockBlob", "url": f"{account_url.rstrip('/')}/{container}/{name}",
                 "sequencer": "00000000000004420000000000028963", "storageDiagnostics": {"batchId": str(uuid.uuid4())}},
        "dataVersion": "", "metadataVersion": "1",
    }).encode()
