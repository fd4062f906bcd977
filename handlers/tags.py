"""Tags set after submission (`xt set tags`, `xt clear tags`): storage first, then the index."""
from __future__ import annotations

from typing import Dict, Sequence

import msgspec

from xt_submit.domain import layout
from xt_submit.ports import NotFound, Ports


def change_tags(ports: Ports, workspace: str, name: str, set_tags: Dict[str, str], clear: Sequence[str]) -> Dict[str, str]:
    """Apply to a job (`job7`) or a run (`run7.2`); returns the tags it has now."""
    is_job = bool(layout.JOB_PATTERN.match(name))
    record = ports.stats.get_job(workspace, name) if is_job else ports.stats.get_run(workspace, name)
    key = layout.job_tags_key(workspace, name) if is_job else layout.run_tags_key(workspace, name)
    try:
        tags = msgspec.json.decode(ports.storage.read(key))
    except NotFound:
        tags = dict(record["tags"] or {})
    tags.update(set_tags)
    for tag in clear:
        tags.pop(tag, None)
    ports.storage.write(key, msgspec.json.encode(tags))
    if is_job:
        ports.stats.update_job(workspace, name, {"tags": tags})
    else:
        ports.stats.update_run(workspace, name, {"tags": tags})
    return tags
