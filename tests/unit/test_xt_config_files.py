"""An XT user's own xt_config.yaml loads: XT's settings this pipeline does not use are one warning,
XT's spellings with the same meaning land where ours do, and typos and wrong types still fail.

The files in tests/corpus/xt_configs/ are XT's own (microsoft/ExperimentTools; see ORIGIN.md there).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from xt_submit import config as xt_config
from xt_submit.config import ConfigError, load_config

XT_FILES = Path(__file__).resolve().parents[1] / "corpus" / "xt_configs"
IGNORED = "ignored XT settings this pipeline does not use: "

# What each file drops, in file order (cmdlineTest's and demo_files' are the same settings).
_CMDLINE_TEST = (
    "general.advanced-mode, general.xt-team-name, general.remote-control, logging, internal, code.xtlib-upload, "
    "code.code-zip, after-files.after-upload, data.data-local, model.model-local, "
    "hyperparameter-search.fn-generated-config, "
    "hyperparameter-explorer, run-reports.uppercase-hdr, boxes.local.setup (XT's default setup 'local'), "
    "boxes.local.os, boxes.local.box-class, boxes.local.actions"
)
_QUICK_TEST = (
    "general.advanced-mode, general.xt-team-name, general.remote-control, general.monitor, internal, "
    "code.xtlib-upload, data.data-local, hyperparameter-explorer, boxes.local.setup (XT's default setup 'local'), "
    "boxes.local.os, boxes.local.box-class, boxes.local.actions"
)
_XT_DEFAULTS = (
    "compute-targets.local-docker.docker, dockers, general.advanced-mode, general.username, "
    "general.azure-tenant-id, general.feedback, general.run-cache-dir, general.distributed, general.direct-run, "
    "general.quick-start, general.env-vars, general.xt-team-name, general.remote-control, general.monitor, "
    "code.code-upload, code.code-zip, code.xtlib-upload, code.working-dir, after-files.after-upload, data.data-local, "
    "data.data-upload, data.data-omit, model.model-local, "
    "logging, internal, aml-options, hyperparameter-search.option-prefix, hyperparameter-search.aggregate-dest, "
    "hyperparameter-search.max-minutes, hyperparameter-search.fn-generated-config, "
    "hyperparameter-search.concurrent, hyperparameter-explorer, run-reports.group, run-reports.number-groups, "
    "run-reports.uppercase-hdr, run-reports.right-align-numeric, run-reports.truncate-with-ellipses, "
    "run-reports.status, run-reports.report-rollup, commands, job-reports.max-width, job-reports.uppercase-hdr, "
    "job-reports.right-align-numeric, job-reports.truncate-with-ellipses, tensorboard, script-launch-prefix, "
    "azure-batch-images, boxes.local.actions, providers"
)
EXPECTED_IGNORED = {
    "cmdlineTest.xt_config.yaml": _CMDLINE_TEST,
    "demo_files.xt_config.yaml": _CMDLINE_TEST,
    "quick-test.xt_config.yaml": _QUICK_TEST,
    "tests.xt_config.yaml": _QUICK_TEST,
    "default_config.yaml": _XT_DEFAULTS,
}


def load_with_warnings(path, **kwargs):
    warnings: list[str] = []
    cfg = load_config(path, on_warning=warnings.append, **kwargs)
    return cfg, warnings


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "xt_config.yaml"
    path.write_text(text)
    return path


def error_of(tmp_path, text: str) -> str:
    write(tmp_path, text)
    warnings: list[str] = []
    with pytest.raises(ConfigError) as info:
        load_config(cwd=tmp_path, on_warning=warnings.append)
    assert warnings == []  # a file that fails says why, not what it would have ignored
    return str(info.value)


def test_the_corpus_is_what_origin_names():
    assert sorted(p.name for p in XT_FILES.glob("*.yaml")) == sorted(EXPECTED_IGNORED)
    origin = (XT_FILES / "ORIGIN.md").read_text()
    for name in EXPECTED_IGNORED:
        assert name in origin


@pytest.mark.parametrize("name", sorted(EXPECTED_IGNORED))
def test_each_xt_file_loads_with_one_warning_naming_what_is_ignored(name):
    path = XT_FILES / name
    cfg, warnings = load_with_warnings(path)
    assert warnings == [f"{path}: {IGNORED}{EXPECTED_IGNORED[name]}"]
    assert "\n" not in warnings[0]
    assert isinstance(cfg, xt_config.Config)


@pytest.mark.parametrize("name,workspace", [("cmdlineTest.xt_config.yaml", "ws3"),
                                            ("demo_files.xt_config.yaml", "xt-demo")])
def test_cmdline_test_and_demo_values_land_where_ours_are(name, workspace):
    cfg, _ = load_with_warnings(XT_FILES / name)
    assert cfg.general.workspace == workspace
    assert cfg.general.experiment == "exper5"
    assert cfg.general.primary_metric == "test-acc"
    assert cfg.general.maximize_metric is True
    assert cfg.general.step_name == "epoch"
    assert cfg.general.authentication == "auto"  # commented out in the file: our default
    assert cfg.setups["py36"] == xt_config.Setup(activate="$call conda activate py36", pip_packages=["xtlib==*"])
    assert cfg.setups["aml"].pip_packages == ["torch==1.2.0", "torchvision==0.4.1", "Pillow==6.2.0",
                                              "watchdog==0.9.0", "horovod", "xtlib==*"]
    assert cfg.setups["aml"].activate is None
    assert cfg.code.code_omit == [".git", "__pycache__", "logs", "data"]
    assert cfg.code.code_dirs == ["."]  # not in the file: our default
    assert cfg.after_files.after_dirs == ["output/**", "logs/**"]
    assert cfg.after_files.after_omit == ["*.junk"]
    assert cfg.run_reports.columns[:4] == (["run", "job", "username", "xt_version=version"]
                                           if name.startswith("cmdline") else ["run", "job", "created:$to", "experiment"])
    assert cfg.run_reports.columns[-2:] == ["metrics.*", "duration"]
    assert cfg.job_reports.columns[0] == "job" and cfg.job_reports.columns[-1] == "completed_runs:$bz"
    assert cfg.boxes == {"local": xt_config.Box(address="localhost", max_runs=1, setup=None)}
    assert set(cfg.compute_targets) == {"local", "pool"}  # `compute-targets: {}`: our defaults stay
    assert cfg.compute_targets["local"].service == "local"


@pytest.mark.parametrize("name,workspace", [("quick-test.xt_config.yaml", "quick-test-rf31"),
                                            ("tests.xt_config.yaml", "pytest-workspace")])
def test_quick_test_values_land_where_ours_are(name, workspace):
    cfg, _ = load_with_warnings(XT_FILES / name)
    assert cfg.general.workspace == workspace
    assert cfg.general.step_name == "epoch"
    assert cfg.general.primary_metric == "loss"  # not in the file: our default
    assert cfg.run_reports.columns[:3] == ["run", "job", "created:$do"]
    assert cfg.run_reports.columns[-1] == "duration" and len(cfg.run_reports.columns) == 29
    assert cfg.boxes == {"local": xt_config.Box(address="localhost", max_runs=1)}


def test_xt_defaults_land_where_ours_are():
    cfg, _ = load_with_warnings(XT_FILES / "default_config.yaml")
    # `storage: null` / `mongo: null` (no service chosen) is the embedded default here
    assert (cfg.xt_services.storage, cfg.xt_services.stats, cfg.xt_services.vault) == ("embedded", "embedded", None)
    assert cfg.xt_services.target == "local"
    assert cfg.external_services == {"filestorage": {"type": "storage", "provider": "store-file",
                                                     "path": "~/.xt/file_store"}}
    assert cfg.compute_targets["local"].service == "pool"
    assert cfg.compute_targets["local"].boxes == ["localhost"]
    assert cfg.compute_targets["local"].setup == "local"  # XT's own `setups.local` is in this file
    assert cfg.compute_targets["local-docker"].setup == "local"
    assert cfg.setups["local"].activate == "$call conda activate $current_conda_env"
    assert cfg.general.workspace == "ws1" and cfg.general.experiment == "exper1"
    assert (cfg.general.primary_metric, cfg.general.maximize_metric, cfg.general.step_name) == ("test-acc", True, "step")
    assert cfg.code.code_dirs == ["$scriptdir/**"]
    assert cfg.code.code_omit == [".git", "__pycache__"]
    assert cfg.after_files.after_dirs == ["output/**"] and cfg.after_files.after_omit == [".git", "__pycache__"]
    assert cfg.early_stopping == xt_config.EarlyStopping(early_policy="none", delay_evaluation=10, evaluation_interval=1,
                                                         slack_factor=0.0, slack_amount=0.0, truncation_percentage=5)
    assert cfg.hyperparameter_search.search_type == "random"  # XT's default, as XT writes it
    assert cfg.hyperparameter_search.max_runs is None
    assert cfg.hyperparameter_search.hp_config == ""  # XT's "none"; `xt run` treats it as no hp-config
    assert (cfg.run_reports.sort, cfg.run_reports.reverse, cfg.run_reports.max_width) == ("name", False, 30)
    assert (cfg.run_reports.precision, cfg.run_reports.last) == (3, 10)
    assert (cfg.job_reports.sort, cfg.job_reports.precision, cfg.job_reports.last) == ("name", 3, 10)
    assert cfg.boxes["local"] == xt_config.Box(address="localhost", max_runs=1, setup="local")


# ----------------------------------------------------------------------------- XT's spellings


def test_xt_search_and_early_stopping_spellings_load_as_ours(tmp_path):
    cfg, warnings = load_with_warnings(write(tmp_path, (
        "general:\n  primary-metric: dev-acc\n  maximize-metric: true\n"
        "hyperparameter-search:\n  search-type: bayesian\n  max-runs: 100\n  hp-config: hp.yaml\n"
        "  concurrent: 4\n  max-minutes: 30\n"
        "early-stopping:\n  early-policy: bandit\n  delay-evaluation: 5\n  evaluation-interval: 2\n"
        "  slack-factor: 0.2\n  slack-amount: 0\n  truncation-percentage: 10\n"
    )))
    assert (cfg.general.primary_metric, cfg.general.maximize_metric) == ("dev-acc", True)
    assert cfg.hyperparameter_search.search_type == "bayesian"
    assert cfg.hyperparameter_search.max_runs == 100
    assert cfg.hyperparameter_search.hp_config == "hp.yaml"
    assert cfg.early_stopping == xt_config.EarlyStopping(early_policy="bandit", delay_evaluation=5, evaluation_interval=2,
                                                         slack_factor=0.2, slack_amount=0.0, truncation_percentage=10)
    assert warnings == [f"{tmp_path / 'xt_config.yaml'}: {IGNORED}"
                        "hyperparameter-search.concurrent, hyperparameter-search.max-minutes"]


# Lines from XT's quick-test/default_config_for_quicktest.yaml (microsoft/ExperimentTools at 801e63ef), trimmed.
XT_SERVICES = """\
external-services:
    xtsandboxbatch: {type: "batch", key: "$vault", url: "https://xtsandboxbatch.eastus.batch.azure.com"}
    aml-sandbox-ws: {type: "aml", subscription-id: "41c6e824-0f66-4076-81dd-f751c70a140b", resource-group: "xt-sandbox"}
    philly: {type: "philly"}
    xt-sandbox-cosmos: {type: "mongo", mongo-connection-string: "$vault"}
    sandbox-vault: {type: "vault", url: "https://xtsandboxvault.vault.azure.net/"}

xt-services:
    mongo: "xt-sandbox-cosmos"         # database used for all runs
    vault: "sandbox-vault"             # where to keep sensitive data (service credentials)
    target: "local"                    # our default compute target

compute-targets:
    batch: {service: "xtsandboxbatch", vm-size: "Standard_NC6", azure-image: "dsvm", nodes: 1, low-pri: true,  box-class: "dsvm", setup: "batch"}
    philly: {service: "philly", vc: "msrlabs", cluster: "rr2", sku: "G1", nodes: 1, low-pri: true, docker: "philly-pytorch", setup: "philly"}
    aml: {service: "aml-sandbox-ws", compute: "sandbox-compute", vm-size: "Standard_NC6", nodes: 1, low-pri: false, setup: "aml"}

setups:
    batch: {activate: "conda activate py36", conda-packages: [], pip-packages: ["dnspython", "xtlib==*"]}
"""


def test_xt_services_map_onto_ours(tmp_path):
    cfg, warnings = load_with_warnings(write(tmp_path, XT_SERVICES))
    assert cfg.xt_services.stats == "xt-sandbox-cosmos"  # XT's `mongo`
    assert cfg.xt_services.storage == "embedded"
    assert cfg.xt_services.vault == "sandbox-vault"
    assert cfg.external_services["xt-sandbox-cosmos"] == {"type": "mongo", "connection-string": "$vault"}
    batch = cfg.compute_targets["batch"]  # XT's service: <a batch account's entry>
    assert (batch.service, batch.account, batch.vm_size, batch.nodes, batch.low_pri, batch.setup) == (
        "batch", "xtsandboxbatch", "Standard_NC6", 1, True, "batch")
    assert batch.image is None
    assert "philly" not in cfg.compute_targets and "aml" not in cfg.compute_targets
    assert warnings == [f"{tmp_path / 'xt_config.yaml'}: {IGNORED}"
                        "compute-targets.philly (philly target), compute-targets.aml (aml target), "
                        "compute-targets.batch.azure-image, compute-targets.batch.box-class"]


def test_both_mongo_and_stats_keep_ours_and_name_xts(tmp_path):
    cfg, warnings = load_with_warnings(write(tmp_path, (
        "external-services:\n  a: {type: mongo, connection-string: x}\n  b: {type: mongo, connection-string: y}\n"
        "xt-services: {stats: a, mongo: b}\n")))
    assert cfg.xt_services.stats == "a"
    assert warnings == [f"{tmp_path / 'xt_config.yaml'}: {IGNORED}xt-services.mongo"]


def test_a_setup_of_the_files_own_named_local_is_kept(tmp_path):
    cfg, warnings = load_with_warnings(write(tmp_path, (
        "setups: {local: {activate: 'source ~/venv/bin/activate'}}\n"
        "boxes: {local: {address: localhost, max-runs: 1, setup: local}}\n")))
    assert cfg.boxes["local"].setup == "local"
    assert warnings == []


# ----------------------------------------------------------------------------- still errors


def test_a_file_without_xt_only_settings_warns_nothing(tmp_path):
    cfg, warnings = load_with_warnings(write(tmp_path, "general: {workspace: ws2}\n"))
    assert cfg.general.workspace == "ws2" and warnings == []


def test_xt_key_unused_here_inside_a_known_section_is_a_warning(tmp_path):
    cfg, warnings = load_with_warnings(write(tmp_path, "general: {advanced-mode: true, workspace: ws2}\n"))
    assert cfg.general.workspace == "ws2"
    assert warnings == [f"{tmp_path / 'xt_config.yaml'}: {IGNORED}general.advanced-mode"]


def test_a_typod_section_in_an_xt_file_still_errors(tmp_path):
    text = (XT_FILES / "cmdlineTest.xt_config.yaml").read_text() + "\ngenral: {workspace: x}\n"
    assert error_of(tmp_path, text) == (
        "xt_config.yaml: genral: unknown section (expected one of after-files, boxes, code, "
        "compute-targets, data, early-stopping, external-services, general, hyperparameter-search, job-reports, "
        "model, run-reports, setups, xt-services)"
    )


@pytest.mark.parametrize("text,error", [
    ("general: {advanced-mode: true, workspase: ws2}", "general.workspase: unknown key (expected one of"),
    ("general: {primary_metric: acc}", "general.primary_metric: unknown key"),  # XT spells it with '-' too
    ("logging: {}\ncode: {xtlib-upload: true, code-zap: fast}", "code.code-zap: unknown key"),
    ("boxes: {b: {address: localhost, max-runs: 1, os: linux, colour: red}}", "boxes.b.colour: unknown key"),
    ("compute-targets: {t: {service: pool, vc: x, clusterr: y}}", "compute-targets.t.clusterr: unknown key"),
    ("hyperparameter-search: {max-concurrent-runs: 2}", "hyperparameter-search.max-concurrent-runs: unknown key"),
])
def test_a_key_outside_xts_schema_still_errors(tmp_path, text, error):
    assert error_of(tmp_path, text + "\n").startswith(f"xt_config.yaml: {error}")


@pytest.mark.parametrize("text,error", [
    ("general: {advanced-mode: true, workspace: 3}", "general.workspace: expected str, got int"),
    ("internal: {stack-trace: true}\nhyperparameter-search: {max-runs: many}",
     "hyperparameter-search.max-runs: expected int or null, got str"),
    ("hyperparameter-search: {search-type: bayes, concurrent: 2}",
     "hyperparameter-search.search-type: expected one of grid, random, bayesian, dgd, got 'bayes'"),
    ("early-stopping: {early-policy: bandit, delay-evaluation: ten}",
     "early-stopping.delay-evaluation: expected int, got str"),
    ("general: {maximize-metric: 'yes', xt-team-name: phoenix}", "general.maximize-metric: expected bool, got str"),
    ("xt-services: {mongo: 7}", "xt-services.stats: expected str, got int"),
    ("boxes: {local: {address: localhost, max-runs: 0, box-class: linux}}", "boxes.local.max-runs: expected int >= 1"),
])
def test_a_known_key_of_the_wrong_type_still_fails_in_one_line(tmp_path, text, error):
    message = error_of(tmp_path, text + "\n")
    assert message.startswith(f"xt_config.yaml: {error}") and "\n" not in message, message


def test_xt_target_on_an_unknown_service_name_still_errors(tmp_path):
    assert error_of(tmp_path, "compute-targets: {gpu: {service: nowhere}}\n").startswith(
        "xt_config.yaml: compute-targets.gpu.service: expected one of local, pool, batch, got 'nowhere'")


# ----------------------------------------------------------------------------- the CLI says it once


def test_the_cli_prints_the_warning_once_on_stderr(tmp_path, monkeypatch, capsys):
    from xt_submit.cli.main import main

    monkeypatch.setattr(xt_config, "_WARNED", set())
    monkeypatch.setenv("XT_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    path = XT_FILES / "quick-test.xt_config.yaml"
    assert main(["list", "targets", "--config", str(path)]) == 0
    assert main(["list", "targets", "--config", str(path)]) == 0  # loaded again in the same process
    err = capsys.readouterr().err
    assert err.splitlines() == [f"{path}: {IGNORED}{_QUICK_TEST}"]


def test_warn_once_prints_each_line_once(monkeypatch, capsys):
    monkeypatch.setattr(xt_config, "_WARNED", set())
    for line in ("a: ignored x", "a: ignored x", "b: ignored y"):
        xt_config.warn_once(line)
    assert capsys.readouterr().err == "a: ignored x\nb: ignored y\n"
