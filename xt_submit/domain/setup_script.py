"""A setup as shell steps run before a run's command, and `pkg==*` pins taken from this machine.

Packages are installed before the first run on a node and not again while the setup is
unchanged: a marker named by the setup's digest records the install, and flock keeps two runs
starting together on one node from installing at once.
"""
from __future__ import annotations

import json
import shlex
from typing import List, Sequence

from xt_submit.domain.errors import OneLineError
from xt_submit.domain.messages import SetupSpec


class SetupError(OneLineError):
    pass


def install_commands(setup: SetupSpec) -> List[str]:
    """The install commands, conda first (pip then installs into the environment conda made)."""
    commands = []
    if setup.conda_packages:
        commands.append("conda install --yes --quiet " + " ".join(shlex.quote(p) for p in setup.conda_packages))
    if setup.pip_packages:
        commands.append("python -m pip install --quiet " + " ".join(shlex.quote(p) for p in setup.pip_packages))
    return commands


def setup_digest(setup: SetupSpec) -> str:
    import hashlib  # here: OpenSSL's binding (~3 ms) only for a setup's digest, not every `xt run`'s start

    body = json.dumps([setup.activate, setup.conda_packages, setup.pip_packages])
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def setup_steps(setup: SetupSpec, marker_dir: str) -> List[str]:
    """Shell steps: the activation (every run, since it shapes the run's environment), then the
    installs (once per node and setup)."""
    steps = [setup.activate] if setup.activate else []
    installs = install_commands(setup)
    if installs:
        marker = f"{marker_dir}/{setup_digest(setup)}"
        once = f"test -f {shlex.quote(marker + '.done')} || {{ {' && '.join(installs)} && touch {shlex.quote(marker + '.done')}; }}"
        steps.append(f"mkdir -p {shlex.quote(marker_dir)}")
        steps.append(f"flock {shlex.quote(marker + '.lock')} /bin/bash -c {shlex.quote(once)}")
    return steps


def with_setup(command: str, setup: SetupSpec, marker_dir: str) -> str:
    """The run's shell script: the setup's steps, then the command, each only if the last succeeded."""
    return " && ".join(setup_steps(setup, marker_dir) + [command])


def pin_installed(packages: Sequence[str], where: str) -> List[str]:
    """`pkg==*` becomes `pkg==<the version installed here>`, so every node gets what the submitter has."""
    from importlib import metadata

    pinned = []
    for spec in packages:
        if spec.replace(" ", "").endswith("==*"):
            name = spec.replace(" ", "")[:-3]
            try:
                spec = f"{name}=={metadata.version(name)}"
            except metadata.PackageNotFoundError:
                raise SetupError(f"{where}: {name}==* pins to the version installed here, but {name} is not installed") from None
        pinned.append(spec)
    return pinned
