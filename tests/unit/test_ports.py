"""Ports are abstract: an adapter that misses a method callers use fails when it is built, and
every adapter XT ships implements its whole port."""
import inspect

import pytest

from xt_submit import ports
from xt_submit.adapters.compute.batch import BatchCompute
from xt_submit.adapters.compute.queue import QueueCompute
from xt_submit.adapters.compute.router import ComputeRouter
from xt_submit.adapters.compute.tasks import LocalCompute
from xt_submit.adapters.nodes.local import LocalNode
from xt_submit.adapters.nodes.ssh import SshNode
from xt_submit.adapters.queue.publisher import QueuePublisher
from xt_submit.adapters.queue.servicebus import ServiceBusQueue
from xt_submit.adapters.queue.sqlite import SqliteQueue
from xt_submit.adapters.stats.mongo import MongoStats
from xt_submit.adapters.stats.sqlite import SqliteStats
from xt_submit.adapters.storage.blob import BlobStorage
from xt_submit.adapters.storage.directory import DirectoryStorage
from xt_submit.adapters.storage.prefetched import PrefetchedCode

ADAPTERS = {ports.Storage: [DirectoryStorage, BlobStorage, PrefetchedCode], ports.StatsStore: [SqliteStats, MongoStats],
            ports.Compute: [LocalCompute, QueueCompute, BatchCompute, ComputeRouter], ports.TaskTable: [LocalCompute],
            ports.Publisher: [QueuePublisher], ports.MessageQueue: [SqliteQueue, ServiceBusQueue],
            ports.Node: [LocalNode, SshNode]}


@pytest.mark.parametrize("port", list(ADAPTERS), ids=lambda port: port.__name__)
def test_every_adapter_implements_its_whole_port(port):
    for adapter in ADAPTERS[port]:
        assert issubclass(adapter, port) and not inspect.isabstract(adapter), (adapter, adapter.__abstractmethods__)


@pytest.mark.parametrize("port", list(ADAPTERS), ids=lambda port: port.__name__)
def test_an_adapter_missing_any_method_fails_when_built(port):
    for missing in sorted(port.__abstractmethods__):
        methods = {name: (lambda self, *a, **k: None) for name in port.__abstractmethods__ if name != missing}
        partial = type(f"Partial{port.__name__}", (port,), methods)
        with pytest.raises(TypeError, match=missing):
            partial()
