"""Start a job from another system: `xt run --to-zip`, the zip dropped into uploads/, the job found
from the result written back beside it; on the embedded default through the CLI and its host, and
on Blob Storage (Azurite) through the handlers."""
import io
import json
import os
import subprocess
import sys
import time
import uuid
import zipfile

import pytest

from support.cli_project import SCRIPT


def place(uploads, name, data):
    """As a dropping system should: the whole zip appears at once (written aside, then renamed)."""
    uploads.mkdir(parents=True, exist_ok=True)
    (uploads / f".{name}.part").write_bytes(data)
    os.rename(uploads / f".{name}.part", uploads / name)


def wait_for_result(path, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            result = json.loads(path.read_text())
            if result["status"] != "accepted":
                return result
        time.sleep(0.2)
    raise AssertionError(f"{path}: no final result within {timeout}s")


def test_a_drop_zip_from_xt_run_becomes_the_job_its_result_names(project):
    line = project.xt("run", "--to-zip", "drop.zip", "train.py", "--lr=[0.1,0.2]").stdout
    uploads = project.home / "storage" / "uploads"
    assert line == f"drop.zip: a drop of 2 runs; move it to {uploads / 'drop.zip'}, and read the outcome from " \
                   f"uploads/drop.result.json\n"
    assert not (project.home / "queue.db").exists()  # written, not submitted
    place(uploads, "drop.zip", (project.code / "drop.zip").read_bytes())
    host = subprocess.Popen([sys.executable, "-m", "xt_submit.cli", "serve", "--idle-exit", "3"], cwd=project.code,
                            env=project.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        result = wait_for_result(uploads / "drop.result.json")
        assert result["status"] == "submitted" and result["upload"] == "uploads/drop.zip"
        job = result["job"]
        assert job == "job1" and result["runs"] == ["run1.1", "run1.2"] and result["workspace"] == "ws1"
        assert project.wait_job(job)["status"] == "completed"
        runs = project.json("list", "runs", "--job", job)
        assert [(r["name"], r["status"], r["hparams"]["lr"]) for r in runs] == [
            ("run1.1", "completed", 0.1), ("run1.2", "completed", 0.2)]
        assert project.xt("view", "console", "run1.2").stdout.startswith("training lr=0.2 opt=sgd")
        assert host.wait(timeout=120) == 0
    finally:
        host.kill()
        host.wait()
    assert sorted(p.name for p in uploads.iterdir()) == ["drop.result.json", "drop.zip"]


def test_refused_drops_say_why_beside_each_zip(project):
    uploads = project.home / "storage" / "uploads"
    manifest = {"workspace": "ws1", "experiment": "e", "script": "train.py", "hp_space": {"lr": [0.5]}}  # no command
    for name, files in [("nocommand.zip", {"xt_manifest.json": json.dumps(manifest), "train.py": SCRIPT}),
                        ("unsafe.zip", {"xt_manifest.json": json.dumps(dict(manifest, command="python train.py")),
                                        "../../escape.py": "x"})]:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for member, text in files.items():
                archive.writestr(member, text)
        place(uploads, name, buffer.getvalue())
    project.xt("serve", "--idle-exit", "3", timeout=120)
    assert json.loads((uploads / "nocommand.result.json").read_text()) == {
        "version": 1, "upload": "uploads/nocommand.zip", "status": "refused", "job": None, "runs": [], "workspace": None,
        "submission_id": None, "reason": "uploads/nocommand.zip: xt_manifest.json: command: required field missing"}
    unsafe = json.loads((uploads / "unsafe.result.json").read_text())
    assert (unsafe["status"], unsafe["reason"]) == (
        "refused", "uploads/unsafe.zip: '../../escape.py': path escapes the target directory")
    assert project.json("list", "jobs") == []
    # the results were not taken for uploads in turn (no uploads/<name>.result.result.json)
    assert sorted(p.name for p in uploads.iterdir()) == ["nocommand.result.json", "nocommand.zip", "unsafe.result.json",
                                                         "unsafe.zip"]


def test_results_beside_drops_on_blob_storage(tmp_path, azurite_connection_string, monkeypatch):
    """The handlers on Azurite: accepted, then submitted with the job's name; and a refusal."""
    from xt_submit import handlers
    from xt_submit.adapters.storage.blob import BlobStorage
    from xt_submit.bootstrap import embedded
    from xt_submit.cli.main import main
    from xt_submit.domain.messages import ContractError, UploadReceived, decode_event
    from xt_submit.ports import Ports

    code = tmp_path / "proj"
    code.mkdir()
    (code / "train.py").write_text(SCRIPT)
    monkeypatch.chdir(code)
    monkeypatch.setenv("XT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XT_CONFIG", raising=False)
    assert main(["run", "--to-zip", "drop.zip", "train.py", "--lr=[0.1,0.2]"]) == 0

    blob = BlobStorage(f"xt-drop-{uuid.uuid4().hex[:8]}", connection_string=azurite_connection_string)
    blob.ensure_container()
    base = embedded(tmp_path / "hosted")
    ports = Ports(storage=blob, stats=base.ports.stats, compute=base.compute, publisher=base.ports.publisher)
    blob.upload_file("uploads/ci-42.zip", str(code / "drop.zip"))  # as `az storage blob upload` would
    event = UploadReceived(upload_key="uploads/ci-42.zip", received_at=7.0)

    submitted = handlers.accept_upload(event, ports)
    accepted = json.loads(blob.read("uploads/ci-42.result.json"))
    assert (accepted["status"], accepted["job"], accepted["submission_id"]) == ("accepted", None, submitted.submission_id)
    (message,) = base.queue.receive("jobs")
    handlers.dispatch_job(decode_event(message.body), ports)
    result = blob.read("uploads/ci-42.result.json")
    assert json.loads(result) == {"version": 1, "upload": "uploads/ci-42.zip", "status": "submitted", "job": "job1",
                                  "runs": ["run1.1", "run1.2"], "workspace": "ws1",
                                  "submission_id": submitted.submission_id, "reason": None}
    assert [r["hparams"]["lr"] for r in base.ports.stats.list_runs("ws1", job="job1")] == [0.1, 0.2]
    handlers.accept_upload(event, ports)  # redelivered: the result still names the job
    assert blob.read("uploads/ci-42.result.json") == result
    assert handlers.accept_upload(UploadReceived(upload_key="uploads/ci-42.result.json", received_at=8.0), ports) is None

    blob.write("uploads/ci-43.zip", b"PK but not really a zip")
    with pytest.raises(ContractError):
        handlers.accept_upload(UploadReceived(upload_key="uploads/ci-43.zip", received_at=9.0), ports)
    refused = json.loads(blob.read("uploads/ci-43.result.json"))
    assert refused["status"] == "refused" and refused["reason"].startswith("uploads/ci-43.zip: not a zip file")
    assert sorted(blob.list("uploads/")) == ["uploads/ci-42.result.json", "uploads/ci-42.zip",
                                             "uploads/ci-43.result.json", "uploads/ci-43.zip"]
