"""`xt report`'s data and page (services/html_report.py), on the embedded stores: which runs, metrics,
groups and primary metric the page embeds, the bounds on its size, the escaping of what runs print,
the chart libraries it inlines, and the refusals of bad input. The page's drawing is tested in a real
browser (tests/e2e)."""
import hashlib
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from xt_submit import config as xt_config
from xt_submit.domain import layout, records
from xt_submit.domain.errors import OneLineError
from xt_submit.domain.messages import JobManifest
from xt_submit.domain.run_log import MetricRow
from xt_submit.domain.run_query import QueryError
from xt_submit.services import html_report

WS = "ws1"
HOSTILE = 'epoch 3 </script><script>window.pwned = 1</script> <!-- & "quotes" \u2028 done\n'


def add_job(parts, number, hparams_of_runs, *, primary="loss", maximize=False, experiment="exp1"):
    """job<number> with one completed run per hparams dict; each run logs 3 steps of loss, acc and epoch."""
    manifest = JobManifest(workspace=WS, experiment=experiment, script="train.py", command="python train.py",
                           code_key="code/x.zip", code_sha256="x", primary_metric=primary, maximize_metric=maximize)
    job = layout.job_name(number)
    plan = [(layout.run_name(number, k), f"python train.py #{k}", hp) for k, hp in enumerate(hparams_of_runs, start=1)]
    stats, storage = parts.ports.stats, parts.ports.storage
    stats.insert_job(records.new_job(manifest, name=job, number=number, submission_id=f"sub-{number}",
                                     run_count=len(plan), created=100.0))
    stats.insert_runs(records.new_runs(manifest, job=job, number=number, plan=plan, created=100.0))
    for name, _, hp in plan:
        lr = hp.get("lr", 0.5)
        rows = []
        for step in (1, 2, 3):
            t = 1000.0 + step
            # epoch after loss in the call: a point's epoch is its own call's, whatever the order
            rows += [MetricRow(step, "loss", lr * 10 / step, t), MetricRow(step, "acc", 1 - lr / step, t),
                     MetricRow(step, "epoch", step - 1, t)]
        stats.replace_metrics(WS, name, rows)
        stats.update_run(WS, name, {"status": "completed", "exit_code": 0, "started": 999.0, "ended": 1004.0,
                                    "duration": 5.0, "hparams": hp,
                                    "metrics": {"loss": lr * 10 / 3, "acc": 1 - lr / 3, "epoch": 2}})
        storage.write(layout.console_key(WS, name), f"training {name}\n".encode())
        storage.write(layout.output_prefix(WS, name) + "result.txt", b"0.1\n")
    return [name for name, _, _ in plan]


SWEEP = [{"lr": 0.1, "opt": "sgd"}, {"lr": 0.1, "opt": "adam"}, {"lr": 0.2, "opt": "sgd"}, {"lr": 0.2, "opt": "adam"}]


def data_of(parts, cfg=None, **options):
    cfg = cfg or xt_config.load_config(None)
    query = html_report.run_reports.query_from(WS, cfg.run_reports, names=options.pop("names", ()),
                                               jobs=options.pop("jobs", ()), filters=options.pop("filters", ()),
                                               everything=True)
    return html_report.report_data(parts.ports.stats, parts.ports.storage, query, sort_given=False,
                                   primary_metric=cfg.general.primary_metric,
                                   maximize_metric=cfg.general.maximize_metric, **options)


def embedded_data(page):
    """The JSON the page's script reads, as the browser's parser would cut it out."""
    match = re.search(r'<script type="application/json" id="xt-report-data">(.*?)</script>', page, re.S)
    return json.loads(match.group(1))


def test_the_data_holds_the_selected_runs_with_their_curves_groups_and_primary_metric(parts):
    names = add_job(parts, 1, SWEEP, primary="acc", maximize=True)
    add_job(parts, 2, [{"lr": 0.3, "opt": "sgd"}])  # not selected
    data = data_of(parts, jobs=["job1"], selection="job1")
    assert [run["name"] for run in data["runs"]] == names
    first = data["runs"][0]
    assert first["hparams"] == {"lr": 0.1, "opt": "sgd"} and first["status"] == "completed"
    assert first["metrics"]["loss"] == pytest.approx(1 / 3)
    assert data["curve_metrics"] == ["loss", "acc", "epoch"] and data["x_axes"] == ["step", "time", "epoch"]
    loss = first["curves"]["loss"]
    assert loss["step"] == [1, 2, 3] and loss["epoch"] == [0, 1, 2] and loss["points"] == 3
    assert loss["value"] == pytest.approx([1.0, 0.5, 1 / 3])
    assert loss["time"] == [2.0, 3.0, 4.0]  # seconds since the run started (999)
    assert data["columns"] == {"hparams": ["lr", "opt"], "metrics": ["loss", "acc", "epoch"]}
    assert data["swept"] == ["lr", "opt"]
    assert [(g["label"], g["runs"]) for g in data["groups"]["lr"]] == [("0.1", names[:2]), ("0.2", names[2:])]
    assert [(g["label"], g["runs"]) for g in data["groups"]["opt"]] == [("adam", [names[1], names[3]]),
                                                                        ("sgd", [names[0], names[2]])]
    # the job recorded acc (max): it wins over the config's loss (min); the best run has the highest acc
    assert data["primary"] == {"metric": "acc", "maximize": True, "source": "the runs' jobs", "best": names[0]}
    assert first["console"] == {"text": "training run1.1\n", "bytes": 16, "truncated": False}
    assert first["outputs"] == ["result.txt"]
    assert data["live"] == [] and data["subsampled"] == []


def test_selection_is_xt_list_runs_own_filters_and_bare_names(parts):
    add_job(parts, 1, SWEEP)
    data = data_of(parts, jobs=["job1"], filters=["lr=0.1"])  # a bare name: the hparam, as in xt list runs
    assert [run["name"] for run in data["runs"]] == ["run1.1", "run1.2"]
    assert data["swept"] == ["opt"]  # lr is one value among the selected runs
    with pytest.raises(QueryError, match=r"^--filter: unknown column 'metrics.los' \(no run has it\)$"):
        data_of(parts, jobs=["job1"], filters=["metrics.los<1"])
    with pytest.raises(QueryError, match="no runs match job9 in workspace ws1"):
        data_of(parts, jobs=["job9"], selection="job9")


def test_the_config_names_the_primary_metric_when_the_jobs_disagree(parts, tmp_path):
    add_job(parts, 1, SWEEP[:2], primary="acc", maximize=True)
    add_job(parts, 2, SWEEP[2:], primary="loss")
    (tmp_path / "xt.yaml").write_text("general:\n  primary-metric: epoch\n  maximize-metric: true\n")
    data = data_of(parts, cfg=xt_config.load_config(tmp_path / "xt.yaml"), jobs=["job1", "job2"])
    assert data["primary"]["metric"] == "epoch" and data["primary"]["maximize"] is True
    assert data["primary"]["source"] == "the config (general.primary-metric)"


def test_a_run_without_an_hparam_is_in_the_none_group_and_live_runs_are_named(parts):
    add_job(parts, 1, [{"lr": 0.1}, {}])
    parts.ports.stats.update_run(WS, "run1.2", {"status": "running", "ended": None})
    data = data_of(parts, jobs=["job1"])
    assert [(g["label"], g["runs"]) for g in data["groups"]["lr"]] == [("0.1", ["run1.1"]), ("(none)", ["run1.2"])]
    assert data["swept"] == ["lr"] and data["live"] == ["run1.2"]
    assert data["runs"][1]["curves"]["loss"]["points"] == 3  # what a live run logged so far is drawn


def test_long_histories_are_subsampled_evenly_and_say_so(parts):
    add_job(parts, 1, SWEEP[:1])
    rows = [MetricRow(step, "loss", 1.0 / step, 2000.0 + step) for step in range(1, 2001)]
    rows.append(MetricRow(None, "eval", 0.5, 5000.0))  # a step that is no integer: its place in the log
    parts.ports.stats.replace_metrics(WS, "run1.1", rows)
    data = data_of(parts, jobs=["job1"], limits=html_report.Limits(max_points=100))
    loss = data["runs"][0]["curves"]["loss"]
    assert len(loss["step"]) == len(loss["value"]) == len(loss["time"]) == 100 and loss["points"] == 2000
    assert loss["step"][0] == 1 and loss["step"][-1] == 2000 and loss["step"] == sorted(set(loss["step"]))
    assert "epoch" not in loss and data["x_axes"] == ["step", "time"]
    assert data["runs"][0]["curves"]["eval"]["step"] == [2001]
    assert data["subsampled"] == [{"run": "run1.1", "metric": "loss", "points": 2000, "shown": 100}]


def test_the_console_tail_is_capped_and_starts_at_a_line(parts):
    add_job(parts, 1, SWEEP[:1])
    console = "".join(f"line {i}\n" for i in range(3000)).encode()
    parts.ports.storage.write(layout.console_key(WS, "run1.1"), console)
    tail = data_of(parts, jobs=["job1"], limits=html_report.Limits(console_bytes=100))["runs"][0]["console"]
    assert tail["bytes"] == len(console) and tail["truncated"] is True
    assert len(tail["text"].encode()) <= 100 and tail["text"].startswith("line ") and tail["text"].endswith("line 2999\n")
    assert console.decode().endswith(tail["text"])


def test_what_runs_print_or_log_cannot_break_out_of_the_page(parts):
    add_job(parts, 1, SWEEP[:1])
    parts.ports.storage.write(layout.console_key(WS, "run1.1"), HOSTILE.encode())
    parts.ports.stats.update_run(WS, "run1.1", {"metrics": {"loss": math.nan, "acc": math.inf, "note": "</script>"}})
    data = data_of(parts, jobs=["job1"], title="a </title><b>title")
    page = html_report.render(data)
    # the data block, the three chart libraries and the page's script
    assert page.count("<script") == 5 and page.count("</script>") == 5
    assert "<title>a &lt;/title&gt;&lt;b&gt;title</title>" in page
    back = embedded_data(page)
    assert back["runs"][0]["console"]["text"] == HOSTILE
    assert back["runs"][0]["metrics"] == {"loss": None, "acc": None, "note": "</script>"}  # NaN is no JSON
    assert back["runs"] == json.loads(json.dumps(html_report._json_safe(data["runs"])))


def test_the_page_forbids_every_request_and_inlines_its_assets(parts):
    add_job(parts, 1, SWEEP[:1])
    page = html_report.render(data_of(parts, jobs=["job1"]))
    # no 'unsafe-eval': the page has vega interpret the charts' expressions
    assert ('<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; script-src \'unsafe-inline\'; '
            'style-src \'unsafe-inline\'; img-src data:">') in page
    assert page.index("Content-Security-Policy") < page.index("<style>") < page.index("<script")
    # each library once, in the order they need each other, before the page's script that uses them
    libraries = [html_report._vendor_script(name) for name in html_report.VENDOR_SCRIPTS]
    places = [page.index(f"<script>\n{text}\n</script>") for text in libraries]
    assert places == sorted(places) and places[-1] < page.index(html_report._asset("html_report.js"))
    assert [page.count(text) for text in libraries] == [1, 1, 1] and "sourceMappingURL" not in page
    # the libraries can fetch (data by URL, which the page never asks for); the CSP would stop them.
    # What the page is besides them fetches nothing.
    own = page
    for text in libraries:
        own = own.replace(text, "")
    assert not re.search(r'\b(src|href)\s*=\s*["\']?\s*(https?:)?//', own)
    assert not re.search(r"@import|url\(|\bfetch\(|XMLHttpRequest|WebSocket|\bimport\(", own)


def test_the_vendored_libraries_are_what_origin_md_records_with_their_licences():
    origin = (html_report.VENDOR / "ORIGIN.md").read_text()
    files = re.findall(r"^\| (\S+) \| (\d+) \| `([0-9a-f]{64})` \|$", origin, re.M)
    recorded = {name: (int(size), digest) for name, size, digest in files}
    shipped = sorted(path.name for path in html_report.VENDOR.iterdir() if path.name != "ORIGIN.md")
    assert sorted(recorded) == shipped
    for name, (size, digest) in recorded.items():
        data = (html_report.VENDOR / name).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (size, digest), name
    for script in html_report.VENDOR_SCRIPTS:
        licence = (html_report.VENDOR / script.replace(".min.js", ".LICENSE")).read_text()
        assert "Redistribution and use in source and binary forms" in licence, script
    versions = dict(re.findall(r"^\| (vega|vega-lite|vega-embed) \| (\d+\.\d+\.\d+) \| https://registry\.npmjs\.org/",
                               origin, re.M))
    script = (Path(__file__).parents[2] / "scripts" / "update_report_vendor.sh").read_text()
    pinned = re.findall(r"^(VEGA|VEGA_LITE|VEGA_EMBED)=\$\{\d:-([\d.]+)\}$", script, re.M)
    assert [version for _, version in pinned] == [versions["vega"], versions["vega-lite"], versions["vega-embed"]]
    # every package the builds bundle, as ORIGIN.md lists them, has its notice: version, licence and text
    builds = r"(?:vega|vega-lite|vega-embed)\.min\.js"
    bundled = re.findall(rf"^\| ([\w.-]+) \| (\d+\.\d+\.\d+) \| ([\w.+-]+) \| ({builds}(?:, {builds})*) \|$", origin, re.M)
    names = {name for name, *_ in bundled}
    assert {"d3-array", "d3-scale", "topojson-client", "delaunator", "vega-tooltip", "vega-themes", "fast-json-patch",
            "json-stringify-pretty-compact", "semver"} <= names, names
    notices = (html_report.VENDOR / "THIRD_PARTY_NOTICES.md").read_text()
    sections = dict(re.findall(r"^## (\S+ \d+\.\d+\.\d+)\n(.*?)(?=^## |\Z)", notices, re.M | re.S))
    for name, version, licence, where in bundled:
        section = sections.get(f"{name} {version}")
        assert section, f"THIRD_PARTY_NOTICES.md has no section for {name} {version}"
        assert f"- bundled in: {where}\n- licence: {licence}\n" in section, name
        text = re.search(r"^```text\n(.*?)\n```$", section, re.M | re.S)
        assert text and re.search(r"Permission|Redistribution|unencumbered", text.group(1)), f"{name}: no licence text"
    assert set(sections) - {f"{name} {version}" for name, version, *_ in bundled} == set()  # none unlisted
    # the script that writes them pins each one's version, but vega's own packages' (vega's versions of them)
    for name, version, _, where in bundled:
        pins = [re.search(rf"^{build[:-len('.min.js')]} {re.escape(name)} {re.escape(version)}$", script, re.M)
                for build in where.split(", ")]
        assert all(pins) or (where == "vega.min.js" and name.startswith("vega-")), name


def test_a_library_that_would_end_its_script_element_is_refused(tmp_path, monkeypatch):
    (tmp_path / "lib.min.js").write_text('var end = "</SCRIPT>";\n//# sourceMappingURL=lib.min.js.map\n')
    (tmp_path / "ok.min.js").write_text('var tag = "</div>";\n//# sourceMappingURL=ok.min.js.map\n')
    monkeypatch.setattr(html_report, "VENDOR", tmp_path)
    html_report._vendor_script.cache_clear()  # each library is read once per process
    with pytest.raises(RuntimeError, match="lib.min.js: holds '</script' or '<!--'"):
        html_report._vendor_script("lib.min.js")
    assert html_report._vendor_script("ok.min.js") == 'var tag = "</div>";'  # its source map, not shipped, dropped


def test_make_report_writes_one_file_from_the_cli_options(parts, tmp_path):
    add_job(parts, 1, SWEEP)
    (tmp_path / "pages").mkdir()
    out = tmp_path / "pages" / "r.html"
    written = html_report.make_report(xt_config.load_config(None), parts.ports.stats, parts.ports.storage, str(out),
                                      jobs=["job1"], filters=["opt=adam"])
    assert written["out"] == str(out) and written["runs"] == 2 and written["bytes"] == len(out.read_bytes())
    data = embedded_data(out.read_text())
    assert [run["name"] for run in data["runs"]] == ["run1.2", "run1.4"]
    assert data["selection"] == "job1 where opt=adam" and data["title"] == "XT report: job1 where opt=adam"
    assert [p.name for p in out.parent.iterdir()] == ["r.html"]  # nothing left beside it


@pytest.mark.parametrize(("out", "options", "message"), [
    ("r.png", {"jobs": ["job1"]}, "--out: expected an .html file, got 'r.png'"),
    ("nowhere/r.html", {"jobs": ["job1"]}, "--out: folder 'nowhere' does not exist"),
    ("r.html", {}, "xt report: name runs (run7.1 run7.2, run7.*), --job JOB or --experiment EXP"),
    ("r.html", {"jobs": ["job1"], "limits": html_report.Limits(max_points=1)}, "--max-points: expected 2 or more, got 1"),
    ("r.html", {"jobs": ["job1"], "limits": html_report.Limits(console_bytes=-1)},
     "--console-tail: expected 0 or more bytes, got -1"),
    ("r.html", {"jobs": ["job1"], "filters": ["lr>>1"]}, "--filter: 'lr>>1': unknown operator"),
    ("r.html", {"jobs": ["job7"]}, "no runs match job7 in workspace ws1"),
])
def test_bad_input_is_one_line_naming_the_option_and_writes_nothing(parts, tmp_path, monkeypatch, out, options, message):
    add_job(parts, 1, SWEEP[:1])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OneLineError) as error:
        html_report.make_report(xt_config.load_config(None), parts.ports.stats, parts.ports.storage, out, **options)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    assert not list(tmp_path.glob("*.htm*")) and not list(tmp_path.glob(".*tmp"))


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_beside_it(tmp_path):
    out = tmp_path / "r.html"
    out.write_text("the old report")
    with pytest.raises(UnicodeEncodeError):
        html_report.write_page(out, "half a page \ud800")  # a lone surrogate cannot be written as UTF-8
    assert out.read_text() == "the old report" and [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_the_notebook_api_writes_the_same_page(parts, tmp_path, monkeypatch):
    add_job(parts, 1, SWEEP)
    monkeypatch.setenv("XT_HOME", str(parts.home))
    monkeypatch.delenv("XT_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    from xt_submit import api

    path = api.report("run1.1-run1.3", out="nb.html", max_points=10)
    assert path == "nb.html"
    data = embedded_data((tmp_path / "nb.html").read_text())
    assert [run["name"] for run in data["runs"]] == ["run1.1", "run1.2", "run1.3"]
    assert data["limits"]["max_points"] == 10


def test_the_page_script_and_style_are_ours_and_readable():
    """No third-party blob: short lines, no `</` that would end their element, and the script parses."""
    for name in ("html_report.js", "html_report.css"):
        text = (html_report._ASSETS / name).read_text()
        assert "</" not in text and max(map(len, text.splitlines())) <= 124, name
    node = shutil.which("node")  # the tests' Azurite needs Node.js, so it is there where the suite runs
    if node:
        check = subprocess.run([node, "--check", str(html_report._ASSETS / "html_report.js")], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr


def test_a_jobs_page_is_published_to_storage_once_it_ended_and_linked(parts):
    from xt_submit.domain import layout
    from xt_submit.domain.messages import RunFinished

    add_job(parts, 1, [{"lr": 0.1}, {"lr": 0.2}])
    key = layout.job_report_key(WS, "job1")
    running = RunFinished(workspace=WS, job="job1", run="run1.1", node_id="n", status="completed", exit_code=0,
                          started_at=1.0, ended_at=2.0)
    parts.ports.stats.update_job(WS, "job1", {"status": "running"})
    assert html_report.publish_if_ended(parts.ports.stats, parts.ports.storage, running) is None
    assert not parts.ports.storage.exists(key)
    parts.ports.stats.update_job(WS, "job1", {"status": "completed"})
    assert html_report.publish_if_ended(parts.ports.stats, parts.ports.storage, running) == key
    page = parts.ports.storage.read(key).decode()
    data = json.loads(page.split(f'id="{html_report.DATA_ELEMENT}">', 1)[1].split("</script>", 1)[0])
    assert [run["name"] for run in data["runs"]] == ["run1.1", "run1.2"]
    link = html_report.job_report_link(parts.ports.stats, parts.ports.storage, WS, "job1", hours=1)
    assert link.startswith("file://") and link.endswith(key) and Path(link[len("file://"):]).read_text() == page
