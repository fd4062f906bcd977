"""An in-memory Azure Batch account that answers like the service (shapes from the Batch REST
reference, api-version 2025-06-01, and the ARM Batch pool PUT): pools, autoscale, jobs, task
collections, terminate, lists paged with odata.nextLink, 404/409 error bodies, and 429/503
throttling with Retry-After. Mount it on a requests session for the real azure-batch SDK.

No emulator exists for Batch; this is what the adapter's tests run against.
"""
from __future__ import annotations

import copy
import io
import json
import re
import urllib.parse
from datetime import datetime, timezone

import requests
import urllib3

ACCOUNT_URL = "https://xtacct.westus2.batch.azure.com"
ARM_HOST = "management.azure.com"
PAGE_SIZE = 2  # small, so every list the SDK makes crosses a page boundary


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _lower_enums(start_task: dict) -> dict:
    """ARM spells enums PascalCase; the data plane answers in camelCase."""
    task = copy.deepcopy(start_task)
    auto = task.get("userIdentity", {}).get("autoUser")
    if auto:
        auto["scope"] = auto["scope"].lower()
        auto["elevationLevel"] = auto["elevationLevel"].lower()
    return task


class FakeBatchService(requests.adapters.BaseAdapter):
    def __init__(self):
        super().__init__()
        self.pools = {}
        self.jobs = {}
        self.tasks = {}  # job id -> {task id: task}
        self.requests = []  # (method, host, path, query, body) of every request received
        self.throttle = []  # [(method, path regex, status)]: answered once each, with Retry-After: 0

    # --- helpers for tests ---------------------------------------------------------------------
    def calls(self, method=None, path=None):
        return [r for r in self.requests if (method is None or r[0] == method) and (path is None or re.fullmatch(path, r[2]))]

    def preempt(self, job_id, task_id, node_id="tvm-1", at=1_700_000_100.0):
        """A low-priority node taken away: the service requeues the task (active again)."""
        task = self.tasks[job_id][task_id]
        info = task.setdefault("executionInfo", {"retryCount": 0, "requeueCount": 0})
        info["requeueCount"] += 1
        info["lastRequeueTime"] = iso(at)
        task["state"] = "active"
        task["nodeInfo"] = {"nodeId": node_id, "poolId": self.jobs[job_id]["poolInfo"]["poolId"]}

    def start(self, job_id, task_id):
        task = self.tasks[job_id][task_id]
        task["state"] = "running"
        task.setdefault("executionInfo", {"retryCount": 0, "requeueCount": 0})["startTime"] = iso(1_700_000_000)

    # --- the transport -------------------------------------------------------------------------
    def send(self, request, **kwargs):
        url = urllib.parse.urlsplit(request.url)
        query = dict(urllib.parse.parse_qsl(url.query))
        body = json.loads(request.body) if request.body else None
        self.requests.append((request.method, url.hostname, url.path, query, body))
        if "Authorization" not in request.headers:
            return self._reply(request, 401, {"code": "AuthenticationFailed"})
        for i, (method, pattern, status) in enumerate(self.throttle):
            if method == request.method and re.fullmatch(pattern, url.path):
                del self.throttle[i]
                return self._reply(request, status, {"code": "ServerBusy" if status == 503 else "TooManyRequests",
                                                     "message": {"lang": "en-US", "value": "slow down"}},
                                   {"Retry-After": "0"})
        if url.hostname == ARM_HOST:
            return self._arm(request, url.path, body)
        if "api-version" not in query:
            return self._error(request, 400, "MissingRequiredQueryParameter", "api-version is required")
        return self._data_plane(request, url.path, query, body)

    def _arm(self, request, path, body):
        match = re.fullmatch(r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Batch/batchAccounts/[^/]+"
                             r"/pools/([^/]+)", path)
        if request.method != "PUT" or not match:
            return self._reply(request, 404, {"error": {"code": "NotFound", "message": path}})
        pool_id = match.group(1)
        if pool_id in self.pools and request.headers.get("If-None-Match") == "*":
            return self._reply(request, 412, {"error": {"code": "PreconditionFailed", "message": "pool exists"}})
        props = body["properties"]
        auto = props["scaleSettings"]["autoScale"]
        vm = props["deploymentConfiguration"]["virtualMachineConfiguration"]
        self.pools[pool_id] = {
            "id": pool_id, "url": f"{ACCOUNT_URL}/pools/{pool_id}", "eTag": "0x1", "state": "active",
            "allocationState": "steady", "vmSize": props["vmSize"], "taskSlotsPerNode": props["taskSlotsPerNode"],
            "virtualMachineConfiguration": {"imageReference": vm["imageReference"], "nodeAgentSKUId": vm["nodeAgentSkuId"]},
            "enableAutoScale": True, "autoScaleFormula": auto["formula"], "autoScaleEvaluationInterval": auto["evaluationInterval"],
            "currentDedicatedNodes": 0, "currentLowPriorityNodes": 0, "targetDedicatedNodes": 0,
            "targetLowPriorityNodes": 0, "startTask": _lower_enums(props["startTask"]),
            "metadata": props.get("metadata", []),
            "identity": {"type": "UserAssigned", "userAssignedIdentities": [
                {"resourceId": rid, "clientId": "node-client-id", "principalId": "p"} for rid in body["identity"]["userAssignedIdentities"]]},
        }
        return self._reply(request, 200, {"id": path, "name": pool_id, "type": "Microsoft.Batch/batchAccounts/pools",
                                          "properties": {**props, "provisioningState": "Succeeded"}})

    def _data_plane(self, request, path, query, body):
        m, parts = request.method, path.strip("/").split("/")
        if parts == ["pools"] and m == "GET":
            return self._page(request, list(self.pools.values()), query)
        if parts[0] == "pools" and len(parts) >= 2:
            pool = self.pools.get(parts[1])
            if pool is None:
                return self._error(request, 404, "PoolNotFound", "The specified pool does not exist.")
            if len(parts) == 2 and m == "GET":
                return self._reply(request, 200, pool)
            if len(parts) == 2 and m == "PATCH":
                pool.update(body)
                return self._reply(request, 200, None)
            if parts[2:] == ["enableautoscale"] and m == "POST":
                pool.update(enableAutoScale=True, autoScaleFormula=body["autoScaleFormula"])
                return self._reply(request, 200, None)
            if parts[2:] == ["resize"] and m == "POST":
                pool.update(enableAutoScale=False, allocationState="resizing", **{
                    k: body[k] for k in ("targetDedicatedNodes", "targetLowPriorityNodes") if k in body})
                return self._reply(request, 202, None)
        if parts == ["nodecounts"] and m == "GET":
            counts = []
            for pool in self.pools.values():
                zero = {k: 0 for k in ("creating", "idle", "offline", "preempted", "rebooting", "reimaging", "running",
                                       "starting", "startTaskFailed", "leavingPool", "unknown", "unusable",
                                       "waitingForStartTask", "total")}
                low = dict(zero, running=pool.get("busyNodes", 0), idle=pool.get("idleNodes", 0))
                counts.append({"poolId": pool["id"], "dedicated": zero, "lowPriority": low})
            wanted = re.search(r"poolId eq '([^']+)'", query.get("$filter", ""))
            counts = [c for c in counts if not wanted or c["poolId"] == wanted.group(1)]
            return self._page(request, counts, query)
        if parts == ["jobs"] and m == "POST":
            if body["id"] in self.jobs:
                return self._error(request, 409, "JobExists", "The specified job already exists.")
            if body["poolInfo"]["poolId"] not in self.pools:
                return self._error(request, 400, "InvalidPropertyValue", "poolInfo.poolId: no such pool")
            self.jobs[body["id"]] = {**body, "state": "active", "url": f"{ACCOUNT_URL}/jobs/{body['id']}"}
            self.tasks[body["id"]] = {}
            return self._reply(request, 201, None)
        if parts == ["jobs"] and m == "GET":
            jobs = list(self.jobs.values())
            if query.get("$filter") == "state eq 'active'":
                jobs = [j for j in jobs if j["state"] == "active"]
            return self._page(request, jobs, query)
        if parts[0] == "jobs" and len(parts) >= 2:
            job = self.jobs.get(parts[1])
            if job is None:
                return self._error(request, 404, "JobNotFound", "The specified job does not exist.")
            tasks = self.tasks[parts[1]]
            if len(parts) == 2 and m == "GET":
                return self._reply(request, 200, job)
            if len(parts) == 2 and m == "PATCH":
                job.update(body)
                self._maybe_end_job(parts[1])
                return self._reply(request, 200, None)
            if parts[2:] == ["addtaskcollection"] and m == "POST":
                if len(body["value"]) > 100:
                    return self._error(request, 400, "TooManyTasks", "at most 100 tasks per request")
                results = []
                for task in body["value"]:
                    if task["id"] in tasks:
                        results.append({"status": "clientError", "taskId": task["id"], "error": {
                            "code": "TaskExists", "message": {"lang": "en-US", "value": "The specified task already exists."}}})
                    else:
                        tasks[task["id"]] = {**task, "state": "active", "url": f"{ACCOUNT_URL}/jobs/{parts[1]}/tasks/{task['id']}",
                                             "executionInfo": {"retryCount": 0, "requeueCount": 0}}
                        results.append({"status": "success", "taskId": task["id"], "eTag": "0x1"})
                return self._reply(request, 200, {"value": results})
            if parts[2:] == ["tasks"] and m == "GET":
                return self._page(request, list(tasks.values()), query)
            if parts[2:] == ["taskcounts"] and m == "GET":
                states = [t["state"] for t in tasks.values()]
                counts = {"active": states.count("active"), "running": states.count("running"),
                          "completed": states.count("completed"), "succeeded": states.count("completed"), "failed": 0}
                return self._reply(request, 200, {"taskCounts": counts, "taskSlotCounts": counts})
            if len(parts) >= 4 and parts[2] == "tasks":
                task = tasks.get(parts[3])
                if task is None:
                    return self._error(request, 404, "TaskNotFound", "The specified task does not exist.")
                if len(parts) == 4 and m == "GET":
                    return self._reply(request, 200, task)
                if parts[4:] == ["terminate"] and m == "POST":
                    task["state"] = "completed"
                    task["executionInfo"]["failureInfo"] = {"category": "usererror", "code": "TaskEnded",
                                                            "message": "Task Was Ended by User Request"}
                    self._maybe_end_job(parts[1])
                    return self._reply(request, 204, None)
        return self._error(request, 400, "InvalidUri", f"{m} {path}")

    def _maybe_end_job(self, job_id):
        job = self.jobs[job_id]
        if job.get("onAllTasksComplete") == "terminatejob" and all(t["state"] == "completed" for t in self.tasks[job_id].values()):
            job["state"] = "completed"

    # --- replies -------------------------------------------------------------------------------
    def _page(self, request, items, query):
        start = int(query.get("skip", "0"))
        page = {"value": items[start:start + PAGE_SIZE]}
        if start + PAGE_SIZE < len(items):
            parsed = urllib.parse.urlsplit(request.url)
            rest = {k: v for k, v in query.items() if k != "api-version"}
            rest["skip"] = str(start + PAGE_SIZE)
            page["odata.nextLink"] = f"{parsed.scheme}://{parsed.netloc}{parsed.path}?{urllib.parse.urlencode(rest)}"
        return self._reply(request, 200, page)

    def _error(self, request, status, code, message):
        return self._reply(request, status, {
            "odata.metadata": f"{ACCOUNT_URL}/$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element",
            "code": code, "message": {"lang": "en-US", "value": f"{message}\nRequestId:00000000-0000\nTime:2024-01-01T00:00:00Z"}})

    @staticmethod
    def _reply(request, status, body, headers=None):
        data = json.dumps(body).encode() if body is not None else b""
        all_headers = {"Content-Type": "application/json;odata=minimalmetadata" if data else "text/plain",
                       "Content-Length": str(len(data)), "request-id": "00000000-0000", **(headers or {})}
        response = requests.Response()
        response.url, response.request = request.url, request
        response.status_code = status
        response.headers.update(all_headers)
        response.raw = urllib3.HTTPResponse(body=io.BytesIO(data), headers=all_headers, status=status, preload_content=False)
        response._content = data
        return response

    def close(self):
        pass
