"""`xt report` end to end: a real sweep through the CLI on the embedded default, its page written by
`xt report --job`, then opened from disk in a real headless Chromium (Debian's `chromium` and
`chromium-driver`, which scripts/test.sh installs) and driven with Selenium: it loads without console
errors or requests, the table sorts and filters, and each Vega-Lite chart holds and draws what the runs
logged (read from its Vega view, window.xtViews, and counted in the SVG it rendered).
One sweep and one browser session for the whole module."""
import json
import math
import re
import statistics
import textwrap
from pathlib import Path

import pytest

from support.cli_project import Project
from xt_submit.services import html_report

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
STEPS = 6
# 3 lr x 2 opt; lr=0.4 with adam fails (exit 3); every run prints what would end a <script> element
TRAIN = textwrap.dedent('''
    import argparse, os, sys
    from xt_submit import Run

    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float)
    parser.add_argument("--opt")
    args = parser.parse_args()
    run = Run()
    run.log_hparams({"lr": args.lr, "opt": args.opt})
    for step in range(1, %d + 1):
        run.log_metrics({"step": step, "epoch": (step - 1) // 2, "loss": args.lr * 10 / step + (args.opt == "adam"),
                         "acc": 1 - args.lr / step})
    print("training lr=%%s </script><script>window.pwned = 1</script> <!-- done" %% args.lr, flush=True)
    os.makedirs(os.environ["XT_OUTPUT_DIR"], exist_ok=True)
    with open(os.path.join(os.environ["XT_OUTPUT_DIR"], "model.txt"), "w") as f:
        f.write("weights")
    run.close()
    sys.exit(3 if (args.lr, args.opt) == (0.4, "adam") else 0)
''' % STEPS)
LRS = [0.1, 0.2, 0.4]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """job1: 6 runs of TRAIN (one of them an error), and its report written by the CLI."""
    project = Project(tmp_path_factory.mktemp("html_report"))
    (project.code / "report_train.py").write_text(TRAIN)
    done = project.xt("run", "--wait", "--json", "--concurrent", "3", "report_train.py", "--lr=[0.1,0.2,0.4]",
                      "--opt=[sgd,adam]", check=False)
    assert done.stdout.startswith("{"), f"xt run -> {done.returncode}\n{done.stdout}\n{done.stderr}"
    job = json.loads(done.stdout)
    assert job["job"] == "job1" and len(job["runs"]) == 6, done.stdout + done.stderr
    written = project.xt("report", "--job", "job1", "--out", "r.html")
    assert re.fullmatch(r"wrote r\.html \(6 runs, \d+ KB\)\n", written.stdout), written.stdout
    yield project
    project.stop_host()


def embedded(page: Path):
    text = page.read_text()
    return json.loads(re.search(r'<script type="application/json" id="xt-report-data">(.*?)</script>', text, re.S)[1])


def test_the_page_embeds_what_xt_list_runs_selects(sweep):
    data = embedded(sweep.code / "r.html")
    listed = sweep.json("list", "runs", "--job", "job1", "--all")
    assert [run["name"] for run in data["runs"]] == [run["name"] for run in listed] == [f"run1.{k}" for k in range(1, 7)]
    for run, record in zip(data["runs"], listed):
        assert {key: run[key] for key in record} == record  # the same records as --json, and more
        assert run["curves"]["loss"]["points"] == STEPS and run["curves"]["loss"]["epoch"] == [0, 0, 1, 1, 2, 2]
        assert "</script><script>window.pwned = 1</script>" in run["console"]["text"]
        assert run["outputs"] == ["model.txt"]
    failed = [run for run in data["runs"] if run["status"] != "completed"]
    assert [(run["hparams"], run["status"], run["exit_code"]) for run in failed] == [({"lr": 0.4, "opt": "adam"}, "error", 3)]
    assert data["primary"]["metric"] == "loss" and data["primary"]["maximize"] is False
    assert data["primary"]["best"] == min(listed, key=lambda r: r["metrics"]["loss"])["name"]
    assert [group["label"] for group in data["groups"]["lr"]] == ["0.1", "0.2", "0.4"]
    assert [p.name for p in sweep.code.iterdir() if p.name.endswith("tmp")] == []


@pytest.mark.parametrize(("args", "message"), [
    (["--job", "job1", "--out", "r.png"], "xt: --out: expected an .html file, got 'r.png'"),
    (["--out", "x.html"], "xt: xt report: name runs (run7.1 run7.2, run7.*), --job JOB or --experiment EXP"),
    (["--job", "job9", "--out", "x.html"], "xt: no runs match job9 in workspace ws1"),
    (["--job", "job1", "--filter", "metrics.los<1", "--out", "x.html"], "xt: --filter: unknown column 'metrics.los'"),
    (["--job", "job1", "--max-points", "1", "--out", "x.html"],
     "xt report: argument --max-points: expected a whole number from 2 to 100000, got '1'"),
    (["--job", "job1", "--max-points", "many", "--out", "x.html"],
     "xt report: argument --max-points: expected a whole number from 2 to 100000, got 'many'"),
])
def test_bad_input_is_one_line_naming_the_option_and_no_file(sweep, args, message):
    result = sweep.xt("report", *args, check=False)
    assert result.returncode == 2 and result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
    assert not (sweep.code / "x.html").exists()


# --- in a real browser ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(f"no headless Chromium here ({CHROMIUM} and {CHROMEDRIVER}: apt-get install chromium "
                    "chromium-driver, as scripts/test.sh does)")
    from selenium import webdriver  # a test extra: missing, it is an error, not a skip
    from selenium.webdriver.chrome.service import Service as ChromeService

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,2000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def drawn(driver):
    """Wait until every chart has drawn the page's latest choices; {chart: drawn or not}."""
    return driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "window.xtDrawn().then(views => done(Object.fromEntries(Object.entries(views).map(([k, v]) => [k, !!v]))),"
        "                      error => done({error: String(error)}));")


def open_page(driver, path):
    driver.get(path.as_uri())
    assert drawn(driver) == {"curves": True, "bands": True, "parallel": True}
    return driver


@pytest.fixture
def page(sweep, browser):
    browser.get((sweep.code / "r.html").as_uri())
    browser.get_log("browser")  # drop what an earlier test's page logged
    browser.refresh()
    return open_page(browser, sweep.code / "r.html")


def run_script(driver, script, *args):
    return driver.execute_script(script, *args)


def visible_rows(driver):
    return run_script(driver, "return [...document.querySelectorAll('#runs tbody tr')].filter(tr => !tr.hidden)"
                              ".map(tr => tr.dataset.run)")


def column(driver, key):
    """The cells of a table column, top to bottom, as shown."""
    return run_script(driver, """
        const i = [...document.querySelectorAll('#runs th')].findIndex(th => th.dataset.key === arguments[0]);
        return [...document.querySelectorAll('#runs tbody tr')].map(tr => tr.children[i].textContent);""", key)


def chart_data(driver, chart, dataset):
    """The rows of a named dataset of a chart's Vega view, as the view holds them."""
    drawn(driver)
    return run_script(driver, "return window.xtViews[arguments[0]].data(arguments[1])"
                              ".map(row => Object.assign({}, row))", chart, dataset)


def drawn_lines(driver, chart):
    """Per drawn line of the chart's SVG (`g.mark-line path`, one per run or group), its number of
    points, counted from the path's own commands."""
    drawn(driver)
    paths = run_script(driver, "return [...document.querySelectorAll(`#${arguments[0]} g.mark-line path`)]"
                               ".map(p => p.getAttribute('d'))", chart)
    return sorted(len(re.findall(r"[ML]", d)) for d in paths)


def count(driver, selector):
    return run_script(driver, "return document.querySelectorAll(arguments[0]).length", selector)


def texts(driver, selector):
    return run_script(driver, "return [...document.querySelectorAll(arguments[0])].map(t => t.textContent)", selector)


def choose(driver, select_id, value):
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", select_id)).select_by_value(value)
    drawn(driver)


def type_filter(driver, text):
    box = driver.find_element("id", "filter")
    box.clear()
    box.send_keys(text)
    drawn(driver)


def severe(driver):
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def logged_series(data, metric, x):
    """{run: [(x, value), ...]} of what the page embeds, the points the curves must draw."""
    return {run["name"]: list(zip(run["curves"][metric][x], run["curves"][metric]["value"])) for run in data["runs"]}


def test_it_loads_without_errors_requests_or_injected_script(sweep, page):
    assert severe(page) == []
    csp = run_script(page, "const m = document.querySelector('meta[http-equiv=\"Content-Security-Policy\"]');"
                           "return m && m.content")
    # no 'unsafe-eval': vega runs the charts' expressions with its interpreter
    assert csp == "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"
    links = run_script(page, "return [...document.querySelectorAll('[src],[href]')]"
                             ".map(e => e.getAttribute('src') || e.getAttribute('href'))")
    assert links and not [link for link in links if re.match(r"\s*(https?:)?//", link, re.I)]
    fetched = run_script(page, "return performance.getEntriesByType('resource').map(e => e.name)")
    assert fetched == []  # nothing was requested beyond the file itself
    assert run_script(page, "return window.pwned") is None
    consoles = run_script(page, "return [...document.querySelectorAll('pre.console')].map(p => p.textContent)")
    assert len(consoles) == 6 and all("</script><script>window.pwned = 1</script> <!-- done" in c for c in consoles)
    assert run_script(page, "return document.title") == "XT report: job1"
    origin = (Path(html_report.VENDOR) / "ORIGIN.md").read_text()
    pinned = dict(re.findall(r"^\| (vega|vega-lite|vega-embed) \| (\d[\w.\-]*) \|", origin, re.M))
    loaded = run_script(page, "return {vega: vega.version, 'vega-lite': vegaLite.version, 'vega-embed': vegaEmbed.version}")
    assert loaded == pinned and len(pinned) == 3
    assert count(page, "svg.marks") == 3  # the three charts, drawn by Vega's SVG renderer


def test_the_table_has_a_row_per_run_and_sorts_by_a_clicked_header(page):
    assert visible_rows(page) == [f"run1.{k}" for k in range(1, 7)]
    header = page.find_element("css selector", "#runs th[data-key='hparams.lr']")
    header.click()
    assert [float(v) for v in column(page, "hparams.lr")] == sorted([lr for lr in LRS for _ in range(2)])
    header.click()
    assert column(page, "hparams.lr")[0] == "0.4"
    page.find_element("css selector", "#runs th[data-key='metrics.loss']").click()
    losses = [float(v) for v in column(page, "metrics.loss")]
    assert losses == sorted(losses) and column(page, "name")[0] == "run1.1"  # lr 0.1 sgd: the lowest loss
    page.find_element("css selector", "#runs th[data-key='name']").click()
    assert column(page, "name") == [f"run1.{k}" for k in range(1, 7)]  # run1.10 would come after run1.9
    assert severe(page) == []


def test_the_filter_box_hides_rows_and_their_curves(sweep, page):
    data = embedded(sweep.code / "r.html")
    type_filter(page, "opt=adam")
    adam = visible_rows(page)
    assert adam == [run["name"] for run in data["runs"] if run["hparams"]["opt"] == "adam"] and len(adam) == 3
    assert {row["run"] for row in chart_data(page, "curves", "points")} == set(adam)
    assert drawn_lines(page, "curves") == [STEPS] * 3
    assert sorted(row["run"] for row in chart_data(page, "parallel", "runs")) == adam
    assert drawn_lines(page, "parallel") == [3] * 3
    assert {row["group"] for row in chart_data(page, "bands", "bands")} == {"0.1", "0.2", "0.4"}
    assert {row["runs"] for row in chart_data(page, "bands", "bands")} == {1}
    type_filter(page, "lr>0.1 sgd")  # a term and a word (a substring of the run's text)
    assert len(visible_rows(page)) == 2 and drawn_lines(page, "curves") == [STEPS] * 2
    type_filter(page, "run1.4")
    assert visible_rows(page) == ["run1.4"]
    assert {row["run"] for row in chart_data(page, "curves", "points")} == {"run1.4"}
    type_filter(page, "lrr=1")
    assert len(visible_rows(page)) == 6 and drawn_lines(page, "curves") == [STEPS] * 6
    assert "unknown column 'lrr'" in page.find_element("id", "filter-status").text
    type_filter(page, "status=error")
    assert len(visible_rows(page)) == 1
    type_filter(page, "nothing-matches-this")
    assert visible_rows(page) == [] and page.find_element("id", "curves").text.startswith("no run shown logged loss")
    assert run_script(page, "return window.xtViews.curves") is None
    assert severe(page) == []


def test_typing_in_the_filter_redraws_the_charts_once_it_pauses(sweep, page):
    """Each key updates the table at once; the charts are drawn again once, after the last key (every
    key in one script turn here, so no pause can fall between them), and xtDrawn waits for that."""
    data = embedded(sweep.code / "r.html")
    counted = run_script(page, """
        const embed = window.vegaEmbed;
        window.embeds = 0;
        window.vegaEmbed = (...args) => { window.embeds += 1; return embed(...args); };
        const box = document.getElementById('filter'), rows = [];
        for (const end of [1, 2, 3, 'opt=adam'.length]) {
            box.value = 'opt=adam'.slice(0, end);
            box.dispatchEvent(new Event('input', {bubbles: true}));
            rows.push([...document.querySelectorAll('#runs tbody tr')].filter(tr => !tr.hidden).length);
        }
        return {rows, embeds: window.embeds};""")
    adam = [run["name"] for run in data["runs"] if run["hparams"]["opt"] == "adam"]
    assert counted["embeds"] == 0 and counted["rows"][-1] == len(adam) == 3  # rows at once, charts not yet
    assert {row["run"] for row in chart_data(page, "curves", "points")} == set(adam)
    assert sorted(row["run"] for row in chart_data(page, "parallel", "runs")) == adam
    assert run_script(page, "return window.embeds") == 3  # one drawing per chart for the four keys
    choose(page, "curve-metric", "acc")  # a control still redraws its chart at once
    assert run_script(page, "return window.embeds") == 4
    assert severe(page) == []


def test_the_curves_draw_every_point_of_every_run_against_each_x(sweep, page):
    data = embedded(sweep.code / "r.html")
    labels = {run["name"]: " ".join([run["name"], f"lr={run['hparams']['lr']}", f"opt={run['hparams']['opt']}"])
              for run in data["runs"]}
    for metric, x in (("loss", "step"), ("loss", "epoch"), ("loss", "time"), ("acc", "step")):
        choose(page, "curve-metric", metric)
        choose(page, "curve-x", x)
        rows = chart_data(page, "curves", "points")
        shown = {}
        for row in rows:
            shown.setdefault(row["run"], []).append((row["x"], row["value"]))
            assert row["label"] == labels[row["run"]]
        assert shown == logged_series(data, metric, x), (metric, x)
        assert drawn_lines(page, "curves") == [STEPS] * 6, (metric, x)
        title = "time (s since the run started)" if x == "time" else x
        assert sorted(texts(page, "#curves .role-axis-title text")) == sorted([title, metric])
    assert texts(page, "#curves .role-legend-label text") == list(labels.values())
    assert severe(page) == []


def band_rows(data, hparam, metric, names=None):
    """Per value of the hparam, per step: the mean and sample std (0 for one run) of the runs' metric."""
    groups = {}
    for run in data["runs"]:
        if names is None or run["name"] in names:
            group = groups.setdefault(str(run["hparams"][hparam]), {})
            for step, value in zip(run["curves"][metric]["step"], run["curves"][metric]["value"]):
                group.setdefault(step, []).append(value)
    return {(label, step): (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
            for label, steps in groups.items() for step, values in steps.items()}


def shown_bands(rows):
    for row in rows:
        assert math.isclose(row["lower"], row["mean"] - row["std"]) and math.isclose(row["upper"], row["mean"] + row["std"])
    return {(row["group"], row["x"]): (row["mean"], row["std"]) for row in rows}


def assert_close(shown, expected):
    assert shown.keys() == expected.keys()
    for key, (mean, std) in expected.items():
        assert math.isclose(shown[key][0], mean, abs_tol=1e-12) and math.isclose(shown[key][1], std, abs_tol=1e-12), key


def test_the_bands_are_the_mean_and_std_of_each_value_of_the_chosen_hparam(sweep, page):
    data = embedded(sweep.code / "r.html")
    assert_close(shown_bands(chart_data(page, "bands", "bands")), band_rows(data, "lr", "loss"))
    assert count(page, "#bands g.mark-area path") == 3 and drawn_lines(page, "bands") == [STEPS] * 3
    assert texts(page, "#bands .role-legend-label text") == ["lr=0.1 (2 runs)", "lr=0.2 (2 runs)", "lr=0.4 (2 runs)"]
    choose(page, "band-group", "opt")
    expected = band_rows(data, "opt", "loss")
    assert all(std > 0 for _, std in expected.values())  # adam's loss is sgd's + 1: the bands have a width
    assert_close(shown_bands(chart_data(page, "bands", "bands")), expected)
    assert count(page, "#bands g.mark-area path") == 2
    assert texts(page, "#bands .role-legend-label text") == ["opt=adam (3 runs)", "opt=sgd (3 runs)"]
    choose(page, "band-metric", "acc")
    assert_close(shown_bands(chart_data(page, "bands", "bands")), band_rows(data, "opt", "acc"))
    choose(page, "band-x", "time")  # real times differ between runs: still one band per group
    rows = chart_data(page, "bands", "bands")
    assert {row["group"] for row in rows} == {"adam", "sgd"} and count(page, "#bands g.mark-area path") == 2
    assert all(math.isfinite(row["std"]) and row["n"] >= 1 for row in rows)
    choose(page, "band-x", "step")
    choose(page, "band-group", "lr")
    type_filter(page, "run1.1")  # one run in its group: its std is 0, the band its curve
    rows = chart_data(page, "bands", "bands")
    assert_close(shown_bands(rows), band_rows(data, "lr", "acc", names={"run1.1"}))
    assert {row["std"] for row in rows} == {0} and {row["label"] for row in rows} == {"lr=0.1 (1 run)"}
    assert severe(page) == []


def test_the_parallel_coordinates_have_a_line_per_run_across_the_hparams_and_the_metric(sweep, page):
    data = embedded(sweep.code / "r.html")
    assert texts(page, "#parallel .role-axis-label text") == ["lr", "opt", "loss (lower is better)"]
    # where each run's line meets each axis: its value normalised over the runs (sgd above adam)
    losses = [run["metrics"]["loss"] for run in data["runs"]]
    expected = {run["name"]: [(run["hparams"]["lr"] - 0.1) / 0.3, ["adam", "sgd"].index(run["hparams"]["opt"]),
                              (run["metrics"]["loss"] - min(losses)) / (max(losses) - min(losses))]
                for run in data["runs"]}
    lines = run_script(page, """
        const view = window.xtViews.parallel, y = view.scale('y'), lines = {};
        (function walk(mark) {
          mark.items.forEach(item => {
            if (mark.marktype === 'line' && mark.role === 'mark') {
              (lines[item.datum.run] = lines[item.datum.run] || []).push(item.y);
            }
            (item.items || []).forEach(walk);
          });
        })(view.scenegraph().root);
        const wanted = arguments[0];
        return Object.fromEntries(Object.entries(lines).map(([run, ys]) => [run, [ys, wanted[run].map(y)]]));
    """, expected)
    assert sorted(lines) == [f"run1.{k}" for k in range(1, 7)]
    for run, (drawn_y, expected_y) in lines.items():
        assert len(drawn_y) == 3 and all(math.isclose(a, b, abs_tol=0.01) for a, b in zip(drawn_y, expected_y)), run
    assert drawn_lines(page, "parallel") == [3] * 6
    ticks = {(row["title"], row["label"]) for row in chart_data(page, "parallel", "ticks")}
    assert {("opt", "adam"), ("opt", "sgd"), ("lr", "0.1"), ("lr", "0.4")} <= ticks
    choose(page, "parallel-metric", "acc")
    assert texts(page, "#parallel .role-axis-label text") == ["lr", "opt", "acc (lower is better)"]
    assert sorted(row["score"] for row in chart_data(page, "parallel", "runs")) == sorted(
        run["metrics"]["acc"] for run in data["runs"])
    assert severe(page) == []


def test_each_run_shows_its_status_and_a_failed_one_is_open(page):
    details = run_script(page, "return [...document.querySelectorAll('details.run-detail')]"
                               ".map(d => [d.dataset.run, d.open, d.querySelector('summary').textContent])")
    assert len(details) == 6
    opened = [summary for _, is_open, summary in details if is_open]
    assert len(opened) == 1 and " · error" in opened[0]
    page.find_element("css selector", "#runs tbody tr[data-run='run1.2'] a").click()
    assert run_script(page, "return document.getElementById('run-run1.2').open") is True
    text = page.find_element("id", "run-run1.2").text
    assert "model.txt" in text and "xt download run1.2" in text and re.search(r"console: \d+ bytes", text)


def test_long_histories_are_subsampled_and_the_page_says_so(sweep, browser):
    sweep.xt("report", "run1.1-run1.3", "--max-points", "3", "--console-tail", "10", "--out", "small.html")
    open_page(browser, sweep.code / "small.html")
    steps = {row["run"]: [] for row in chart_data(browser, "curves", "points")}
    for row in chart_data(browser, "curves", "points"):
        steps[row["run"]].append(row["x"])
    logged = {run["name"]: run["curves"]["loss"]["step"] for run in embedded(sweep.code / "small.html")["runs"]}
    assert steps == logged and sorted(steps) == [f"run1.{k}" for k in range(1, 4)]
    assert all(len(xs) == 3 and xs[0] == 1 and xs[-1] == STEPS for xs in steps.values())  # the first and the last kept
    assert drawn_lines(browser, "curves") == [3] * 3
    assert "subsampled evenly" in browser.find_element("id", "report").text
    assert severe(browser) == []


def test_a_screenshot_of_the_charts_is_not_blank(sweep, page):
    from PIL import Image

    for chart in ("curves", "bands", "parallel"):
        shot = sweep.code / f"{chart}.png"  # beside the report, for a person to look at
        page.find_element("css selector", f"#{chart} svg.marks").screenshot(str(shot))
        image = Image.open(shot).convert("RGB")
        assert image.width > 300 and image.height > 100, chart
        colours = image.getcolors(maxcolors=1 << 16) or []
        assert len(colours) > 20, chart  # lines in several colours and grey axes, not a blank box
