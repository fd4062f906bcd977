"""The blob-drop contract: the manifest's published JSON Schema, `xt run --to-zip`, and the result
the upload and dispatch handlers write back beside a dropped zip (uploads/<name>.result.json)."""
import json
import zipfile
from pathlib import Path

import jsonschema
import msgspec
import pytest

from support.zips import zip_bytes

from xt_submit import handlers
from xt_submit.cli.main import main
from xt_submit.domain import layout
from xt_submit.domain.manifest import manifest_schema
from xt_submit.domain.messages import (ContractError, JobManifest, JobSubmitted, UploadReceived, decode_event,
                                       decode_manifest)
from xt_submit.runtime.local_host import LocalHost
from support.pipeline import state_of

SHIPPED_SCHEMA = Path(__file__).resolve().parents[2] / "xt_submit" / "schemas" / "xt_manifest.schema.json"
DROP = "uploads/drop1.zip"
RESULT = "uploads/drop1.result.json"
MANIFEST = {"workspace": "ws1", "experiment": "exp1", "script": "train.py", "command": "python train.py",
            "hp_space": {"lr": [0.1, 0.2]}}


@pytest.fixture
def drop_dir(tmp_path, monkeypatch):
    """A project folder with a script, its own XT_HOME, as the current directory."""
    code = tmp_path / "proj"
    code.mkdir()
    (code / "train.py").write_text("print('training')\n")
    monkeypatch.chdir(code)
    monkeypatch.setenv("XT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XT_CONFIG", raising=False)
    return code


def zip_of(files):
    return zip_bytes(files)


def result_of(parts, key=RESULT):
    return json.loads(parts.ports.storage.read(key))


def drop(parts, manifest=MANIFEST, key=DROP, **extra_files):
    files = {"xt_manifest.json": json.dumps(manifest), "train.py": "print(1)\n", **extra_files}
    parts.ports.storage.write(key, zip_of(files))
    return UploadReceived(upload_key=key, received_at=5.0)


def sent_jobs(parts):
    return [decode_event(m["body"]) for m in parts.queue.peek("jobs")]


# --- the schema ----------------------------------------------------------------------------------
def test_the_shipped_schema_is_what_msgspec_generates_now_and_what_xt_schema_prints(capsys):
    shipped = SHIPPED_SCHEMA.read_bytes()
    assert shipped == manifest_schema(), "regenerate: xt schema manifest > xt_submit/schemas/xt_manifest.schema.json"
    schema = json.loads(shipped)
    generated = msgspec.json.schema(JobManifest)
    assert {k: v for k, v in schema.items() if k not in ("$schema", "title")} == json.loads(json.dumps(generated))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    body = schema["$defs"]["JobManifest"]
    assert body["required"] == ["workspace", "experiment", "script", "command"]
    assert body["additionalProperties"] is False
    assert body["properties"]["concurrent"] == {"description": "runs at once on the target (1 to 10000)", "type": "integer",
                                                "default": 2}
    assert main(["schema", "manifest"]) == 0
    assert capsys.readouterr().out.encode() == shipped


def test_a_manifest_from_xt_run_to_zip_validates_against_the_schema(drop_dir, capsys):
    assert main(["run", "--to-zip", "drop.zip", "train.py", "--lr=[0.1,0.2]", "--opt=adam"]) == 0
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and line.startswith("drop.zip: a drop of 2 runs; move it to ")
    assert "storage/uploads/drop.zip" in line and "uploads/drop.result.json" in line
    with zipfile.ZipFile(drop_dir / "drop.zip") as archive:
        assert sorted(archive.namelist()) == ["train.py", "xt_manifest.json"]
        assert archive.read("train.py") == b"print('training')\n"
        manifest = json.loads(archive.read("xt_manifest.json"))
    validator = jsonschema.Draft202012Validator(json.loads(SHIPPED_SCHEMA.read_bytes()))
    assert list(validator.iter_errors(manifest)) == []
    assert manifest["hp_space"] == {"lr": [0.1, 0.2]}
    assert manifest["command"] == "python train.py --opt=adam"
    assert (manifest["code_key"], manifest["code_sha256"]) == ("", "")  # the upload handler names the drop's own
    assert decode_manifest(json.dumps(manifest).encode()).hp_space == {"lr": [0.1, 0.2]}


@pytest.mark.parametrize("change,path,decoded", [
    (lambda m: m.pop("command"), [], "command: required field missing"),
    (lambda m: m.update(runs="two"), ["runs"], "runs: expected int | null, got str"),
    (lambda m: m.update(hp_space=[0.1]), ["hp_space"], "hp_space: expected object, got array"),
    (lambda m: m.update(concurrnt=2), [], "xt_manifest.json: object contains unknown field concurrnt"),
])
def test_a_wrong_manifest_fails_the_schema_as_it_fails_the_decoder(change, path, decoded):
    manifest = dict(MANIFEST)
    change(manifest)
    (error,) = jsonschema.Draft202012Validator(json.loads(SHIPPED_SCHEMA.read_bytes())).iter_errors(manifest)
    assert list(error.absolute_path) == path
    with pytest.raises(ContractError, match=decoded):
        decode_manifest(json.dumps(manifest).encode())


# --- xt run --to-zip -------------------------------------------------------------------------------
def test_to_zip_into_a_missing_folder_is_one_line_and_writes_nothing(drop_dir, capsys):
    assert main(["run", "--to-zip", "no/such/drop.zip", "train.py"]) == 2
    err = capsys.readouterr().err
    assert err == "xt: no/such/drop.zip: no folder no/such to write it in\n"
    assert main(["run", "--to-zip", ".", "train.py"]) == 2
    assert capsys.readouterr().err == "xt: .: a folder, not a file name\n"
    assert sorted(p.name for p in drop_dir.iterdir()) == ["train.py"]
    assert not (drop_dir.parent / "home").exists()  # nothing was set up: no host, no queue


def test_to_zip_leaves_an_earlier_drop_out_and_says_json(drop_dir, capsys):
    assert main(["run", "--to-zip", "drop.zip", "train.py"]) == 0
    capsys.readouterr()
    assert main(["run", "--json", "--to-zip", "drop.zip", "train.py", "--lr=[1,2,3]"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"zip": "drop.zip", "bytes": (drop_dir / "drop.zip").stat().st_size, "upload": "uploads/drop.zip",
                   "result": "uploads/drop.result.json",
                   "runs": [{"index": k, "hparams": {"lr": lr}, "command": f"python train.py --lr={lr}"}
                            for k, lr in enumerate([1, 2, 3], start=1)]}
    with zipfile.ZipFile(drop_dir / "drop.zip") as archive:
        assert sorted(archive.namelist()) == ["train.py", "xt_manifest.json"]  # not the first drop.zip
    assert sorted(p.name for p in drop_dir.iterdir()) == ["drop.zip", "train.py"]  # no .part left


def test_to_zip_goes_with_neither_wait_nor_dry_run(drop_dir, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--to-zip", "drop.zip", "--wait", "train.py"])
    assert exit_.value.code == 2
    assert "not allowed with argument --to-zip" in capsys.readouterr().err
    assert not (drop_dir / "drop.zip").exists()


# --- the result beside the zip ------------------------------------------------------------------------
def test_an_accepted_drop_names_its_job_once_dispatched_and_redeliveries_change_nothing(parts):
    event = drop(parts)
    submitted = handlers.accept_upload(event, parts.ports)
    accepted = parts.ports.storage.read(RESULT)
    assert json.loads(accepted) == {"version": 1, "upload": DROP, "status": "accepted", "job": None, "runs": [],
                                    "workspace": "ws1", "submission_id": submitted.submission_id, "reason": None}
    assert submitted.upload_key == DROP
    assert handlers.accept_upload(event, parts.ports) == submitted  # the same event twice: the same result file
    assert parts.ports.storage.read(RESULT) == accepted

    dispatched = handlers.dispatch_job(submitted, parts.ports)
    result = parts.ports.storage.read(RESULT)
    assert json.loads(result) == {"version": 1, "upload": DROP, "status": "submitted", "job": "job1",
                                  "runs": ["run1.1", "run1.2"], "workspace": "ws1",
                                  "submission_id": submitted.submission_id, "reason": None}
    assert dispatched.job == "job1"
    assert [r["hparams"]["lr"] for r in parts.ports.stats.list_runs("ws1", job="job1")] == [0.1, 0.2]

    before = state_of(parts)
    handlers.dispatch_job(submitted, parts.ports)  # a redelivered JobSubmitted
    assert state_of(parts) == before
    handlers.accept_upload(event, parts.ports)  # a redelivered upload event, after the dispatch
    assert parts.ports.storage.read(RESULT) == result  # still names the job
    assert {e.submission_id for e in sent_jobs(parts)} == {submitted.submission_id}


def test_a_drop_with_new_content_under_the_same_name_gets_a_new_result(parts):
    handlers.dispatch_job(handlers.accept_upload(drop(parts), parts.ports), parts.ports)
    fixed = handlers.accept_upload(drop(parts, dict(MANIFEST, experiment="exp2")), parts.ports)
    assert result_of(parts)["status"] == "accepted" and result_of(parts)["submission_id"] == fixed.submission_id
    handlers.dispatch_job(fixed, parts.ports)
    assert (result_of(parts)["job"], result_of(parts)["runs"]) == ("job2", ["run2.1", "run2.2"])


@pytest.mark.parametrize("files,reason", [
    ({"xt_manifest.json": json.dumps({k: v for k, v in MANIFEST.items() if k != "command"})},
     "uploads/drop1.zip: xt_manifest.json: command: required field missing"),
    ({"xt_manifest.json": json.dumps(dict(MANIFEST, runs=0))},
     "uploads/drop1.zip: xt_manifest.json: runs: expected a whole number >= 1, got 0"),
    ({"xt_manifest.json": json.dumps(MANIFEST), "../evil.py": "x"},
     "uploads/drop1.zip: '../evil.py': path escapes the target directory"),
    ({"train.py": "x"}, "uploads/drop1.zip: no xt_manifest.json at the top of the zip"),
])
def test_a_refused_drop_says_why_beside_the_zip_before_the_error_propagates(parts, files, reason):
    parts.ports.storage.write(DROP, zip_of(files))
    event = UploadReceived(upload_key=DROP, received_at=1.0)
    for _ in range(2):  # the same event twice: the same result file
        with pytest.raises(ContractError) as error:
            handlers.accept_upload(event, parts.ports)
        assert str(error.value) == reason
        assert parts.ports.storage.read(RESULT) == (
            b'{"version":1,"upload":"uploads/drop1.zip","status":"refused","job":null,"runs":[],"workspace":null,'
            b'"submission_id":null,"reason":' + json.dumps(reason).encode() + b"}\n")
    assert sent_jobs(parts) == []


def test_a_not_a_zip_drop_is_refused_too(parts):
    parts.ports.storage.write("uploads/x.zip", b"not a zip")
    with pytest.raises(ContractError):
        handlers.accept_upload(UploadReceived(upload_key="uploads/x.zip", received_at=1.0), parts.ports)
    assert result_of(parts, "uploads/x.result.json")["reason"].startswith("uploads/x.zip: not a zip file")


def test_dispatch_refusing_an_uploaded_job_writes_the_refusal(parts):
    submitted = handlers.accept_upload(drop(parts), parts.ports)
    parts.ports.storage.delete(submitted.manifest.code_key)  # say, a retention rule took the code
    with pytest.raises(ContractError, match="code_key: .* not found in storage"):
        handlers.dispatch_job(submitted, parts.ports)
    result = result_of(parts)
    assert result["status"] == "refused" and result["job"] is None
    assert result["reason"] == f"xt_manifest.json: code_key: {submitted.manifest.code_key} not found in storage"


def test_a_job_from_xt_run_writes_no_result(parts):
    submitted = handlers.accept_upload(drop(parts), parts.ports)
    parts.ports.storage.delete(RESULT)
    handlers.dispatch_job(JobSubmitted(submission_id="cli-1", manifest=submitted.manifest, submitted_at=1.0), parts.ports)
    assert parts.ports.storage.list(layout.UPLOADS_PREFIX) == [DROP]


def test_result_files_are_never_taken_for_uploads(parts):
    parts.ports.storage.write("uploads/old.result.json", b'{"status": "refused"}')
    before = state_of(parts)
    assert handlers.accept_upload(UploadReceived(upload_key="uploads/old.result.json", received_at=1.0),
                                  parts.ports) is None
    assert state_of(parts) == before
    drop(parts)
    LocalHost(parts).step()  # the local host's upload watcher
    assert [e.upload_key for e in sent_jobs(parts)] == [DROP]
