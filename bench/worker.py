"""One benchmark worker process: ``python -m bench.worker KIND JOBS QUEUE``.

KIND is the worker class: ``fork`` (RQ's default ``Worker``), ``simple`` (RQ's
``SimpleWorker``) or ``recommended`` (what ``sequence`` ships: for sequence jobs the
``manage.py sequence worker`` command itself; for the hand-written chains the same
worker class with a job class that lets their functions run). JOBS is ``plain`` or
``sequence`` (the job class). Every worker uses JSON payloads and the scheduler.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    kind, jobs, queue_name = sys.argv[1:4]
    from bench import sqlcount

    sqlcount.install()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from rq import SimpleWorker, Worker
    from rq.job import Job
    from rq.serializers import JSONSerializer

    import bench.app.jobs
    import sequence.runner  # noqa: F401 - imported up front, as a long-lived worker has
    from sequence.jobs import SequenceJob
    from sequence.ops.worker import SequenceWorker

    if kind == "recommended" and jobs == "sequence":
        call_command("sequence", "worker", queue_name)
        return
    worker_class = {"fork": Worker, "simple": SimpleWorker, "recommended": SequenceWorker}[kind]
    job_class = SequenceJob if jobs == "sequence" else Job
    queue = bench.app.jobs.queue(queue_name)
    # A forking worker must not hold a database connection its horses would share.
    from django.db import connections

    for conn in connections.all():
        conn.close()
    worker = worker_class(
        [queue], connection=queue.connection, job_class=job_class, serializer=JSONSerializer
    )
    worker.work(with_scheduler=True)


if __name__ == "__main__":
    main()
