"""Layered configuration: precedence, merging, one-line errors, the starter file."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xt_submit.config import (
    Config,
    ConfigError,
    config_to_dict,
    default_config_dict,
    load_config,
    starter_config_text,
    write_starter_config,
)

SECTIONS = [
    "general", "xt-services", "external-services", "compute-targets", "setups", "code",
    "after-files", "hyperparameter-search", "early-stopping", "data", "model", "run-reports", "job-reports", "boxes",
]


@pytest.fixture(autouse=True)
def no_env_config(monkeypatch):
    monkeypatch.delenv("XT_CONFIG", raising=False)


def write(path, text):
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_text(tmp_path, text, **kwargs):
    write(tmp_path / "xt_config.yaml", text)
    return load_config(cwd=tmp_path, **kwargs)


def error_of(tmp_path, text, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- defaults and precedence


def test_no_file_gives_defaults(tmp_path):
    cfg = load_config(cwd=tmp_path)
    assert cfg == Config()
    assert cfg.general.workspace == "ws1"
    assert cfg.general.experiment == "exper1"
    assert cfg.xt_services.target == "local"
    assert cfg.compute_targets["local"].service == "local"
    assert cfg.compute_targets["local"].concurrent == 2
    assert cfg.code.code_dirs == ["."]
    assert cfg.after_files.after_dirs == ["output/**"]
    assert cfg.run_reports.columns[-2:] == ["hparams.*", "metrics.*"]
    assert cfg.job_reports.columns[0] == "name"
    assert cfg.general.xt_home is None


def test_default_dict_is_kebab_keyed_and_fresh():
    defaults = default_config_dict()
    assert list(defaults) == SECTIONS
    assert defaults["general"]["primary-metric"] == "loss"
    assert defaults["compute-targets"]["local"]["service"] == "local"
    defaults["code"]["code-dirs"].append("mutated")
    defaults["compute-targets"]["local"]["concurrent"] = 99
    assert default_config_dict()["code"]["code-dirs"] == ["."]
    assert load_config(overrides={}).compute_targets["local"].concurrent == 2


def test_config_to_dict_round_trips():
    cfg = load_config(overrides={"general.workspace": "ws9", "setups.s.pip-packages": ["numpy"]})
    as_dict = config_to_dict(cfg)
    assert as_dict["general"]["workspace"] == "ws9"
    assert as_dict["setups"]["s"]["pip-packages"] == ["numpy"]
    assert msgspec.convert(as_dict, Config) == cfg


def test_file_beats_defaults_and_overrides_beat_file(tmp_path):
    write(tmp_path / "xt_config.yaml", """\
        general:
          workspace: filews
          experiment: fileexp
        hyperparameter-search:
          max-runs: 10
        """)
    from_file = load_config(cwd=tmp_path)
    assert (from_file.general.workspace, from_file.general.experiment) == ("filews", "fileexp")
    assert from_file.hyperparameter_search.max_runs == 10
    assert from_file.general.primary_metric == "loss"  # untouched keys keep their defaults

    overridden = load_config(
        cwd=tmp_path,
        overrides={"general.workspace": "cliws", "hyperparameter-search.max-runs": 25,
                   "compute-targets.local.concurrent": 4},
    )
    assert overridden.general.workspace == "cliws"
    assert overridden.general.experiment == "fileexp"
    assert overridden.hyperparameter_search.max_runs == 25
    assert overridden.compute_targets["local"].concurrent == 4
    assert overridden.compute_targets["local"].service == "local"


def test_none_overrides_are_ignored(tmp_path):
    write(tmp_path / "xt_config.yaml", "general: {workspace: filews}\n")
    cfg = load_config(cwd=tmp_path, overrides={"general.workspace": None, "hyperparameter-search.seed": None})
    assert cfg.general.workspace == "filews"
    assert cfg.hyperparameter_search.seed is None


def test_cwd_file_found_from_process_working_directory(tmp_path, monkeypatch):
    write(tmp_path / "xt_config.yaml", "general: {workspace: here}\n")
    monkeypatch.chdir(tmp_path)
    assert load_config().general.workspace == "here"


def test_env_var_beats_cwd_file_and_explicit_path_beats_env(tmp_path, monkeypatch):
    write(tmp_path / "xt_config.yaml", "general: {workspace: cwdws}\n")
    write(tmp_path / "env.yaml", "general: {workspace: envws}\n")
    write(tmp_path / "arg.yaml", "general: {workspace: argws}\n")
    monkeypatch.chdir(tmp_path)
    assert load_config().general.workspace == "cwdws"
    monkeypatch.setenv("XT_CONFIG", str(tmp_path / "env.yaml"))
    assert load_config().general.workspace == "envws"
    assert load_config("arg.yaml").general.workspace == "argws"


def test_relative_paths_resolve_against_cwd_argument(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf" / "mine.yaml", "general: {workspace: relws}\n")
    assert load_config("conf/mine.yaml", cwd=tmp_path).general.workspace == "relws"
    monkeypatch.setenv("XT_CONFIG", "conf/mine.yaml")
    assert load_config(cwd=tmp_path).general.workspace == "relws"


def test_explicit_missing_file_is_an_error(tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as info:
        load_config("nope.yaml", cwd=tmp_path)
    assert str(info.value) == "nope.yaml: config file not found (named by --config)"
    monkeypatch.setenv("XT_CONFIG", "gone.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(cwd=tmp_path)
    assert str(info.value) == "gone.yaml: config file not found (named by XT_CONFIG)"


def test_empty_file_and_empty_sections_give_defaults(tmp_path):
    assert load_text(tmp_path, "") == Config()
    assert load_text(tmp_path, "# only a comment\n") == Config()
    assert load_text(tmp_path, "general:\n  # workspace: x\ncode:\n") == Config()


# ----------------------------------------------------------------------------- merging


def test_dicts_under_a_section_merge_one_level_deeper(tmp_path):
    cfg = load_text(tmp_path, """\
        compute-targets:
          local: {concurrent: 4}
          gpu: {service: batch, vm-size: Standard_NC6, nodes: 2, low-pri: true, max-time: 3600}
        """)
    assert cfg.compute_targets["local"].service == "local"
    assert cfg.compute_targets["local"].concurrent == 4
    gpu = cfg.compute_targets["gpu"]
    assert (gpu.service, gpu.vm_size, gpu.nodes, gpu.low_pri, gpu.max_time) == ("batch", "Standard_NC6", 2, True, 3600.0)
    assert gpu.concurrent == 1


def test_lists_replace_rather_than_extend(tmp_path):
    cfg = load_text(tmp_path, """\
        code:
          code-dirs: [src, lib]
        run-reports:
          columns: [name, status]
        """)
    assert cfg.code.code_dirs == ["src", "lib"]
    assert cfg.code.max_size_mb == 500
    assert cfg.run_reports.columns == ["name", "status"]
    assert cfg.run_reports.precision == 4


def test_override_replaces_a_list_and_reaches_into_file_entries(tmp_path):
    write(tmp_path / "xt_config.yaml", """\
        setups:
          py: {pip-packages: [numpy], environment: {A: "1"}}
        compute-targets:
          gpu: {service: pool, setup: py}
        """)
    cfg = load_config(
        cwd=tmp_path,
        overrides={"setups.py.pip-packages": ["torch"], "xt-services.target": "gpu",
                   "setups.py.environment.B": "2"},
    )
    assert cfg.setups["py"].pip_packages == ["torch"]
    assert cfg.setups["py"].environment == {"A": "1", "B": "2"}
    assert cfg.xt_services.target == "gpu"


def test_full_featured_file_loads(tmp_path):
    cfg = load_text(tmp_path, """\
        general: {authentication: device-code, xt-home: /data/xt, maximize-metric: true}
        external-services:
          blob1: {type: storage, account: acct}
          q1: {type: servicebus}
        xt-services: {storage: blob1, queue: q1, target: mybatch}
        setups:
          py311: {activate: "conda activate py311", conda-packages: [python=3.11]}
        compute-targets:
          mybatch: {service: batch, setup: py311, image: pytorch}
        boxes:
          box1: {address: user@host, max-runs: 2, setup: py311, key: ~/.ssh/id, host-key: AAAA}
        hyperparameter-search: {search-type: random, runs: 20, seed: 7, hp-config: hp.yaml}
        job-reports: {sort: created, reverse: true, last: 10}
        after-files: {after-omit: ["*.tmp"]}
        """)
    assert cfg.general.authentication == "device-code"
    assert cfg.external_services["blob1"]["account"] == "acct"
    assert cfg.xt_services.storage == "blob1"
    assert cfg.compute_targets["mybatch"].setup == "py311"
    assert "local" in cfg.compute_targets
    assert cfg.boxes["box1"].max_runs == 2
    assert cfg.hyperparameter_search.search_type == "random"
    assert cfg.job_reports.last == 10
    assert cfg.after_files.after_omit == ["*.tmp"]


# ----------------------------------------------------------------------------- error messages


def test_wrong_type_names_file_path_and_expectation(tmp_path):
    assert error_of(tmp_path, "general:\n  workspace: 5\n") == (
        "xt_config.yaml: general.workspace: expected str, got int"
    )


def test_unknown_key_lists_the_known_ones(tmp_path):
    assert error_of(tmp_path, "general:\n  colour: red\n") == (
        "xt_config.yaml: general.colour: unknown key (expected one of authentication, experiment, "
        "maximize-metric, primary-metric, step-name, workspace, xt-home)"
    )


def test_unknown_section(tmp_path):
    assert error_of(tmp_path, "genral: {workspace: x}\n") == (
        "xt_config.yaml: genral: unknown section (expected one of after-files, boxes, code, "
        "compute-targets, data, early-stopping, external-services, general, hyperparameter-search, job-reports, "
        "model, run-reports, setups, xt-services)"
    )


def test_snake_case_keys_are_unknown(tmp_path):
    assert error_of(tmp_path, "general: {primary_metric: acc}\n").startswith(
        "xt_config.yaml: general.primary_metric: unknown key"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("compute-targets: {gpu: {service: pool, colour: red}}",
         "compute-targets.gpu.colour: unknown key (expected one of account, boxes, concurrent, image, low-pri, "
         "max-time, mount-shares, nodes, preemption-retries, service, setup, vm-size)"),
        ("compute-targets: {gpu: {nodes: 2}}", "compute-targets.gpu.service: required key missing"),
        ("compute-targets: {gpu: {service: cloud}}",
         "compute-targets.gpu.service: expected one of local, pool, batch, got 'cloud'"),
        ("compute-targets: {local: {concurrent: 0}}",
         "compute-targets.local.concurrent: expected int >= 1, got 0"),
        ("compute-targets: {local: {concurrent: true}}",
         "compute-targets.local.concurrent: expected int, got bool"),
        ("compute-targets: {local: {max-time: fast}}",
         "compute-targets.local.max-time: expected float or null, got str"),
        ("compute-targets: [local]", "compute-targets: expected mapping, got list"),
        ("compute-targets: {local: 3}", "compute-targets.local: expected mapping, got int"),
        ("compute-targets: {1: {service: local}}", "compute-targets: expected text keys, got int 1"),
        ("general: [ws1]", "general: expected mapping, got list"),
        ("general: {maximize-metric: 1}", "general.maximize-metric: expected bool, got int"),
        ("general: {authentication: password}",
         "general.authentication: expected one of auto, browser, device-code, service-principal, got 'password'"),
        ("code: {code-dirs: [src, 3]}", "code.code-dirs[1]: expected str, got int"),
        ("code: {code-dirs: src}", "code.code-dirs: expected list, got str"),
        ("setups: {py: {environment: {PATH: 1}}}", "setups.py.environment.PATH: expected str, got int"),
        ("hyperparameter-search: {search-type: bayes}",
         "hyperparameter-search.search-type: expected one of grid, random, bayesian, dgd, got 'bayes'"),
        ("hyperparameter-search: {max-runs: 0}", "hyperparameter-search.max-runs: expected int >= 1, got 0"),
        ("run-reports: {precision: -1}", "run-reports.precision: expected int >= 0, got -1"),
        ("boxes: {b1: {max-runs: 2}}", "boxes.b1.address: required key missing"),
        ("external-services: {blob: {account: a}}", "external-services.blob.type: required key missing"),
        ("external-services: {blob: {type: 3}}", "external-services.blob.type: expected str, got int"),
        ("external-services: {blob: storage}", "external-services.blob: expected mapping, got str"),
    ],
)
def test_structural_errors_name_the_dotted_path(tmp_path, text, expected):
    assert error_of(tmp_path, text + "\n") == f"xt_config.yaml: {expected}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("xt-services: {target: gpu}",
         "xt-services.target: expected a compute-targets name (one of local, pool), got 'gpu'"),
        ("xt-services: {storage: blob1}",
         "xt-services.storage: expected 'embedded' or an external-services name (none defined), got 'blob1'"),
        ("external-services: {q1: {type: servicebus}}\nxt-services: {queue: q2}",
         "xt-services.queue: expected 'embedded' or an external-services name (one of q1), got 'q2'"),
        ("compute-targets: {local: {setup: py}}",
         "compute-targets.local.setup: expected a setups name (none defined), got 'py'"),
        ("setups: {a: {}, b: {}}\nboxes: {b1: {address: h, setup: c}}",
         "boxes.b1.setup: expected a setups name (one of a, b), got 'c'"),
        ("general: {workspace: ../etc}",
         "general.workspace: expected a name of letters, digits, '_' or '-' starting with a letter "
         "(at most 63 characters), got '../etc'"),
        ("general: {experiment: 1abc}",
         "general.experiment: expected a name of letters, digits, '_' or '-' starting with a letter "
         "(at most 63 characters), got '1abc'"),
    ],
)
def test_reference_and_name_errors(tmp_path, text, expected):
    assert error_of(tmp_path, text + "\n") == f"xt_config.yaml: {expected}"


@pytest.mark.parametrize("name", ["a" * 64, "a/b", "a b", "ws.1", "", "-ws"])
def test_unsafe_storage_names_are_rejected(name):
    with pytest.raises(ConfigError, match=r"^command line: general\.workspace: expected a name"):
        load_config(overrides={"general.workspace": name})


def test_longest_allowed_workspace_name_is_accepted():
    assert load_config(overrides={"general.workspace": "a" + "b_-9" * 15 + "xy"}).general.workspace


def test_source_is_the_explicit_path_as_given(tmp_path):
    write(tmp_path / "team.yaml", "general: {workspace: 5}\n")
    with pytest.raises(ConfigError) as info:
        load_config("team.yaml", cwd=tmp_path)
    assert str(info.value) == "team.yaml: general.workspace: expected str, got int"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"compute-targets.local.concurrent": 0}, "compute-targets.local.concurrent: expected int >= 1, got 0"),
        ({"general.workspace": 7}, "general.workspace: expected str, got int"),
        ({"general.colour": "red"}, "general.colour: unknown key (expected one of"),
        ({"colour": "red"}, "colour: unknown section (expected one of"),
        ({"compute-targets.gpu.concurrent": 3}, "compute-targets.gpu.service: required key missing"),
        ({"xt-services.target": "gpu"}, "xt-services.target: expected a compute-targets name"),
        ({"general.workspace.inner": "x"}, "general.workspace: expected str, got mapping"),
        ({"general..workspace": "x"}, "'general..workspace': expected a dotted path"),
    ],
)
def test_override_errors_name_the_command_line(tmp_path, overrides, expected):
    write(tmp_path / "xt_config.yaml", "general: {workspace: fine}\n")
    with pytest.raises(ConfigError) as info:
        load_config(cwd=tmp_path, overrides=overrides)
    assert str(info.value).startswith(f"command line: {expected}")
    assert "\n" not in str(info.value)


def test_a_bad_file_is_blamed_even_when_overrides_would_mask_it(tmp_path):
    write(tmp_path / "xt_config.yaml", "general: {workspace: 5}\n")
    with pytest.raises(ConfigError, match=r"^xt_config\.yaml: general\.workspace: expected str, got int$"):
        load_config(cwd=tmp_path, overrides={"general.workspace": "ok"})


def test_yaml_syntax_error_reports_the_line(tmp_path):
    message = error_of(tmp_path, """\
        general:
          workspace: ws1
          experiment: [unclosed
        code:
          max-size-mb: 5
        """)
    assert re.fullmatch(r"xt_config\.yaml: line 4: .*expected ',' or '\]'.*", message), message
    message = error_of(tmp_path, "general:\n  workspace: ws1\n experiment: x\n")
    assert re.fullmatch(r"xt_config\.yaml: line 3: .+", message), message


def test_yaml_mapping_value_error_names_line(tmp_path):
    # libyaml and pure-Python PyYAML word the rest differently
    assert error_of(tmp_path, "general:\n  workspace: a: b\n").startswith(
        "xt_config.yaml: line 2: mapping values are not allowed"
    )


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("just text\n", "str"), ("42\n", "int")])
def test_top_level_must_be_a_mapping(tmp_path, text, kind):
    assert error_of(tmp_path, text) == (
        f"xt_config.yaml: expected a mapping of sections at the top level, got {kind}"
    )


def test_unreadable_config_path_is_an_error(tmp_path):
    (tmp_path / "adir").mkdir()
    with pytest.raises(ConfigError, match=r"^adir: cannot read"):
        load_config("adir", cwd=tmp_path)


@settings(max_examples=150, deadline=None)
@given(
    path=st.sampled_from([
        "general.workspace", "general.maximize-metric", "compute-targets.local.concurrent",
        "compute-targets.local.max-time", "code.code-dirs", "setups.s.environment", "boxes.b.address",
        "hyperparameter-search.search-type", "run-reports.first", "external-services.e",
    ]),
    value=st.recursive(
        st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | st.text(max_size=8),
        # keys without ` and $: a user's key may hold them, and then the message rightly shows them,
        # while the check below is for msgspec's own `$.path` notation leaking through
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
            st.text(alphabet=st.characters(blacklist_characters="`$"), max_size=4), inner, max_size=3),
        max_leaves=6,
    ),
)
def test_any_override_value_loads_or_fails_on_one_line(path, value):
    try:
        load_config(overrides={path: value})
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message
        assert message.startswith(f"command line: {path.split('.')[0]}")
        assert "$." not in message and "`" not in message


# ----------------------------------------------------------------------------- starter file


def test_starter_text_loads_to_exactly_the_defaults(tmp_path):
    cfg = load_text(tmp_path, starter_config_text())
    assert cfg == Config()
    assert config_to_dict(cfg) == default_config_dict()


def test_starter_text_mentions_every_section_and_key():
    text = starter_config_text()
    for section in SECTIONS:
        assert re.search(rf"^{re.escape(section)}:", text, re.MULTILINE), section
    for section, keys in default_config_dict().items():
        if section in ("external-services", "compute-targets", "setups", "boxes"):
            continue  # named entries; their keys are covered below
        for key in keys:
            assert re.search(rf"^\s+{re.escape(key)}:", text, re.MULTILINE), f"{section}.{key}"
    entry_keys = ["service", "concurrent", "setup", "vm-size", "image", "nodes", "low-pri", "max-time", "mount-shares",
                  "boxes", "activate", "pip-packages", "conda-packages", "environment", "address",
                  "max-runs", "key", "host-key", "type"]
    for key in entry_keys:
        assert re.search(rf"^#?\s+{re.escape(key)}:", text, re.MULTILINE), key


def test_write_starter_config_creates_then_refuses_to_overwrite(tmp_path):
    target = tmp_path / "xt_config.yaml"
    write_starter_config(target)
    assert target.read_text(encoding="utf-8") == starter_config_text()
    assert load_config(cwd=tmp_path) == Config()
    target.write_text("general: {workspace: mine}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="already exists"):
        write_starter_config(target)
    assert target.read_text(encoding="utf-8") == "general: {workspace: mine}\n"


# ----------------------------------------------------------------------------- speed


def test_yaml_is_not_imported_without_a_config_file(tmp_path):
    code = (
        "import sys; from xt_submit.config import load_config; "
        f"load_config(cwd={str(tmp_path)!r}); print('yaml' in sys.modules)"
    )
    env = {name: value for name, value in os.environ.items() if name != "XT_CONFIG"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == "False"
