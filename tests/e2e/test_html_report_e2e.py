"""`xt report` end to end: a real sweep through the CLI on the embedded default, its page written by
`xt report --job`, then opened from disk in a real headless Chromium (Debian's `chromium` and
`chromium-driver`, which scripts/test.sh installs) and driven with Selenium: it loads without console
errors or requests, the table sorts and filters, and each chart draws what the runs logged.
One sweep and one browser session for the whole module."""
import json
import re
import textwrap
from pathlib import Path

import pytest

from support.cli_project import Project

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
    yield driver
    driver.quit()


@pytest.fixture
def page(sweep, browser):
    browser.get((sweep.code / "r.html").as_uri())
    browser.get_log("browser")  # drop what an earlier test's page logged
    browser.refresh()
    return browser


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


def curves(driver, selector="#curves path.curve"):
    """{run: number of points} of the drawn curves, counted from each path's own commands."""
    paths = run_script(driver, "return [...document.querySelectorAll(arguments[0])]"
                               ".map(p => [p.dataset.run, p.getAttribute('d'), p.dataset.points])", selector)
    for _, d, points in paths:
        assert len(re.findall(r"[ML]", d)) == int(points)
    return {run: len(re.findall(r"[ML]", d)) for run, d, _ in paths}


def choose(driver, select_id, value):
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", select_id)).select_by_value(value)


def severe(driver):
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_it_loads_without_errors_requests_or_injected_script(page):
    assert severe(page) == []
    csp = run_script(page, "const m = document.querySelector('meta[http-equiv=\"Content-Security-Policy\"]');"
                           "return m && m.content")
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


def test_the_filter_box_hides_rows_and_their_curves(page):
    box = page.find_element("id", "filter")
    box.send_keys("opt=adam")
    adam = visible_rows(page)
    assert len(adam) == 3
    assert set(curves(page)) == set(adam)
    assert run_script(page, "return document.querySelectorAll('#parallel polyline.pc-line').length") == 3
    box.clear()
    box.send_keys("lr>0.1 sgd")  # a term and a word (a substring of the run's text)
    assert len(visible_rows(page)) == 2
    box.clear()
    box.send_keys("run1.4")
    assert visible_rows(page) == ["run1.4"]
    box.clear()
    box.send_keys("lrr=1")
    assert len(visible_rows(page)) == 6
    assert "unknown column 'lrr'" in page.find_element("id", "filter-status").text
    box.clear()
    box.send_keys("status=error")
    assert len(visible_rows(page)) == 1
    assert severe(page) == []


def test_the_curves_draw_every_point_of_every_run_against_each_x(page):
    assert curves(page) == {f"run1.{k}": STEPS for k in range(1, 7)}
    for x in ("epoch", "time"):
        choose(page, "curve-x", x)
        assert curves(page) == {f"run1.{k}": STEPS for k in range(1, 7)}, x
    choose(page, "curve-metric", "acc")
    assert len(curves(page)) == 6
    assert severe(page) == []


def test_the_bands_are_one_per_value_of_the_chosen_hparam(page):
    bands = "return [...document.querySelectorAll('#bands path.band')].map(p => [p.dataset.group, +p.dataset.runs])"
    assert run_script(page, bands) == [["0.1", 2], ["0.2", 2], ["0.4", 2]]
    choose(page, "band-group", "opt")
    assert run_script(page, bands) == [["adam", 3], ["sgd", 3]]
    choose(page, "band-x", "time")  # real times differ between runs: binned, still one band per group
    assert len(run_script(page, bands)) == 2
    assert severe(page) == []


def test_the_parallel_coordinates_have_a_line_per_run_across_the_hparams_and_the_metric(page):
    lines = run_script(page, "return [...document.querySelectorAll('#parallel polyline.pc-line')]"
                             ".map(p => [p.dataset.run, p.getAttribute('points').trim().split(/\\s+/).length])")
    assert sorted(lines) == [[f"run1.{k}", 3] for k in range(1, 7)]  # lr, opt, loss
    titles = run_script(page, "return [...document.querySelectorAll('#parallel .axis-title')].map(t => t.textContent)")
    assert titles == ["lr", "opt", "loss (lower is better)"]


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
    browser.get((sweep.code / "small.html").as_uri())
    assert curves(browser) == {f"run1.{k}": 3 for k in range(1, 4)}
    assert "subsampled evenly" in browser.find_element("id", "report").text
    assert severe(browser) == []


def test_a_screenshot_of_the_charts_is_not_blank(sweep, page):
    from PIL import Image

    for chart in ("curves", "bands", "parallel"):
        shot = sweep.code / f"{chart}.png"  # beside the report, for a person to look at
        page.find_element("css selector", f"#{chart} svg").screenshot(str(shot))
        image = Image.open(shot).convert("RGB")
        assert image.width > 300 and image.height > 100, chart
        colours = image.getcolors(maxcolors=1 << 16) or []
        assert len(colours) > 20, chart  # lines in several colours and grey axes, not a blank box
