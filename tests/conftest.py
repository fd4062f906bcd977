import itertools
import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from support.azurite import AZURITE_KEY
from support.peers import START_SECONDS, first_line, wait_for_port

ROOT = Path(__file__).resolve().parent.parent

# Generated inputs are the same on every run, so CI's verdict never depends on luck; explore with
# HYPOTHESIS_PROFILE=explore (fresh random inputs each run).
hypothesis_settings.register_profile("ci", derandomize=True, deadline=None)
hypothesis_settings.register_profile("explore", deadline=None)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def mongo_uri():
    """A real MongoDB wire-protocol peer on loopback (tests/peers/mongo_server.py, mongoeco),
    or the server XT_TEST_MONGO_URI names (a real MongoDB or Cosmos DB)."""
    import subprocess

    if os.environ.get("XT_TEST_MONGO_URI"):
        yield os.environ["XT_TEST_MONGO_URI"]
        return

    process = subprocess.Popen([sys.executable, str(ROOT / "tests" / "peers" / "mongo_server.py")],
                               stdout=subprocess.PIPE, text=True)
    uri = first_line(process, "the MongoDB peer (tests/peers/mongo_server.py)")
    assert uri.startswith("mongodb://"), f"the MongoDB peer printed {uri!r}, not its URI"
    yield uri
    process.kill()
    process.wait()




@pytest.fixture(scope="session")
def azurite_connection_string(tmp_path_factory):
    """A real Blob Storage emulator (Azurite, from npm) on a free loopback port."""
    import socket
    import subprocess
    import time

    binary = ROOT / "node_modules" / ".bin" / "azurite-blob"
    assert binary.exists(), "Azurite is missing: scripts/bootstrap.sh installs it (npm ci)"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path_factory.mktemp("azurite") / "azurite.log"
    process = subprocess.Popen([str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
                                "--skipApiVersionCheck", "--loose", "--disableTelemetry"],
                               stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_SECONDS
    while "successfully listens" not in log.read_text():
        assert process.poll() is None, f"Azurite exited before listening: {log.read_text()}"
        assert time.monotonic() < deadline, f"Azurite did not listen within {START_SECONDS}s: {log.read_text()}"
        time.sleep(0.1)
    yield (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
           f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")
    process.kill()
    process.wait()


@pytest.fixture(scope="session")
def servicebus_connection_string():
    """The in-memory AMQP 1.0 broker (tests/peers/servicebus_broker.py) the real SDK talks to, on loopback.
    Locks last 2 s and a 5th delivery dead-letters, as the embedded queue is set up in the tests."""
    import subprocess

    env = dict(os.environ, XT_BROKER_LOCK_SECONDS="2", XT_BROKER_MAX_DELIVERY_COUNT="5")
    process = subprocess.Popen([sys.executable, str(ROOT / "tests" / "peers" / "servicebus_broker.py")],
                               stdout=subprocess.PIPE, text=True, env=env)
    name = "the AMQP broker (tests/peers/servicebus_broker.py)"
    port = int(first_line(process, name))
    wait_for_port("127.0.0.1", port, process, name)  # it prints its port before it listens
    yield (f"Endpoint=sb://127.0.0.1:{port};SharedAccessKeyName=RootManageSharedAccessKey;"
           f"SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true")
    process.kill()
    process.wait()


@pytest.fixture(scope="session")
def ssh_boxes():
    """Two real OpenSSH boxes on loopback (tests/peers/ssh_boxes.py), each its own user and port."""
    from peers import ssh_boxes

    why_not = ssh_boxes.available()
    if why_not:
        pytest.skip(why_not)
    boxes = ssh_boxes.SshBoxes()
    # pytest-xdist's workers each get their own pair of users: a box's home is its user's
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    boxes.start("box1", f"xtbox1{worker}")
    boxes.start("box2", f"xtbox2{worker}")
    yield boxes
    boxes.stop()


_databases = itertools.count()


@pytest.fixture(params=["sqlite", "mongo"])
def stats_store(request, tmp_path):
    """Each stats store adapter, empty: the contract tests run against every one."""
    if request.param == "sqlite":
        from xt_submit.adapters.stats.sqlite import SqliteStats

        return SqliteStats(str(tmp_path / "stats.db"))
    from xt_submit.adapters.stats.mongo import MongoStats

    return MongoStats(request.getfixturevalue("mongo_uri"), database=f"xt_test_{next(_databases)}")


@pytest.fixture
def parts(tmp_path):
    """The embedded default on a fresh XT_HOME."""
    from xt_submit.bootstrap import embedded

    return embedded(tmp_path / "home")


class ReliabilityCounts:
    """Counts per scenario (faults injected, inputs tried, messages duplicated) for RELIABILITY.md."""

    def __init__(self):
        self.rows = {}

    def add(self, scenario, **counts):
        row = self.rows.setdefault(scenario, {})
        for name, value in counts.items():
            row[name] = row.get(name, 0) + value


@pytest.fixture(scope="session")
def reliability():
    counts = ReliabilityCounts()
    yield counts
    out = os.environ.get("XT_RELIABILITY_OUT")
    if out:
        import json

        Path(out).write_text(json.dumps(counts.rows, indent=2, sort_keys=True))


@pytest.fixture
def project(tmp_path):
    """A project dir with a training script and its own XT_HOME; its host is stopped afterwards."""
    from support.cli_project import Project

    proj = Project(tmp_path)
    yield proj
    proj.stop_host()


@pytest.fixture(scope="session")
def functions_host():
    """The Python worker (azure_functions_runtime, Python 3.13+) started on the repository root as
    the Functions host starts it; one per test process (the worker keeps its functions globally)."""
    pytest.importorskip("azure_functions_runtime", reason="the Functions worker needs Python 3.13+")
    from support.functions_host import FunctionsHost

    os.environ["PYTHON_SCRIPT_FILE_NAME"] = "xt_functions.py"  # an app setting the worker reads at init
    return FunctionsHost(ROOT)


@pytest.fixture
def throttling_proxy(mongo_uri):
    """tests/peers/throttling_proxy.py in front of the MongoDB peer: refuses chosen writes inside a
    bulk write the way a throttled Cosmos DB does (error 16500, the other writes applied)."""
    from pymongo import uri_parser

    from peers.throttling_proxy import ThrottlingProxy

    parsed = uri_parser.parse_uri(mongo_uri) if mongo_uri.startswith("mongodb://") else None
    if parsed is None or len(parsed["nodelist"]) != 1 or parsed["options"].get("tls"):
        pytest.skip("the throttling proxy speaks plain TCP to one server (not TLS, SRV or a replica set)")
    proxy = ThrottlingProxy(*parsed["nodelist"][0]).start()
    yield proxy
    proxy.stop()
