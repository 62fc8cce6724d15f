"""Several workers (``serve --jobs-workers N``): each job is claimed by one of them, jobs train at once, and a
job is taken over only when its worker is gone."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.unit.jobs.live import jobs_server, upload, wait
from tunesmith.jobs.store import LEASE_S, Store

ROWS = [
    {"messages": [{"role": "user", "content": f"Echo {i}."}, {"role": "assistant", "content": f"{i}"}]}
    for i in range(8)
]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_running_job_is_taken_over_only_from_a_dead_or_silent_worker(tmp_path):
    store = Store(tmp_path)
    fid = store.add_file("t.jsonl", b"{}\n", "fine-tune")["id"]
    jid = store.add_job({"model": "m", "training_file": fid}, {})["id"]
    assert store.claim(4242) is None  # still validating_files
    store.set_status(jid, "queued")
    me = os.getpid()
    assert store.claim(me)["id"] == jid
    assert store.claim(1) is None  # its worker is alive and beating: not another's to take
    store.set_status(jid, "running", heartbeat=int(time.time()) - LEASE_S)
    assert store.claim(1)["id"] == jid  # alive but silent for a lease: taken over
    dead = _dead_pid()
    store.set_status(jid, "running", worker_pid=dead, heartbeat=int(time.time()))
    assert store.claim(me)["id"] == jid and store.job(jid)["worker_pid"] == me  # its worker died
    assert store.claim(1) is None


def test_two_workers_train_two_jobs_at_once(tmp_path, tiny_model_dir):
    with jobs_server(tmp_path, tiny_model_dir, jobs_workers=2) as client:
        uploaded = upload(client, ROWS)
        ids = [
            client.fine_tuning.jobs.create(
                model=tiny_model_dir.name,
                training_file=uploaded.id,
                metadata={"tunesmith_max_steps": "100000"},
            ).id
            for _ in range(2)
        ]
        for jid in ids:  # a step of each logged: both train now
            wait(client, jid, until=("running",))
            while not any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(jid, limit=100)):
                time.sleep(0.1)
        assert [client.fine_tuning.jobs.retrieve(jid).status for jid in ids] == ["running", "running"]
        pids = {Store(tmp_path).job(jid)["worker_pid"] for jid in ids}
        assert len(pids) == 2
        for jid in ids:
            client.fine_tuning.jobs.cancel(jid)
        assert [wait(client, jid).status for jid in ids] == ["cancelled", "cancelled"]
