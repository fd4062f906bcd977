"""services/submit.py: a submission waits for its whole job, not for the first record of it."""
import threading
import time

from support.pipeline import make_code_zip, make_manifest
from xt_submit.domain import records
from xt_submit.services import submit


def test_a_submission_waits_until_every_run_of_its_job_is_recorded(parts):
    """The dispatch names the job, records it, then its runs: the runs must all be there when the
    submitter reads them (it used to answer `job1: no runs` for a real sweep)."""
    key, sha = make_code_zip(parts)
    manifest = make_manifest(key, sha, hp_space={"lr": [0.1, 0.2, 0.3]})
    stats = parts.ports.stats
    job = stats.assign_job_name("ws1", "sub-1")
    stats.insert_job(records.new_job(manifest, name=job, number=1, submission_id="sub-1", run_count=3, created=1.0))
    plan = [(f"run1.{k}", f"python train.py --lr={lr}", {"lr": lr}) for k, lr in enumerate([0.1, 0.2, 0.3], start=1)]

    def the_rest_of_the_dispatch():
        time.sleep(0.3)
        stats.insert_runs(records.new_runs(manifest, job=job, number=1, plan=plan[:1], created=1.0))
        time.sleep(0.3)
        stats.insert_runs(records.new_runs(manifest, job=job, number=1, plan=plan, created=1.0))

    dispatcher = threading.Thread(target=the_rest_of_the_dispatch)
    dispatcher.start()
    submission = submit.await_dispatch(parts, "ws1", "sub-1", keep_served=lambda: None, timeout=60)
    dispatcher.join()
    assert submission == submit.Submission("job1", ["run1.1", "run1.2", "run1.3"])
