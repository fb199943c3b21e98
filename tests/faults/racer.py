"""Run by the race test (fault 6) in several processes at once.

``python -m tests.faults.racer START THREADS ROUNDS ID...``: in round r, at the wall-clock
time START + r * SPACING, every thread delivers the job (id, step r, epoch r) of every
sequence, in its own order, through ``sequence.ops.faults.deliver``.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time

SPACING = 1.5


def main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
    import django

    django.setup()
    from django.db import connection

    from sequence.ops import faults

    start, threads, rounds = float(argv[0]), int(argv[1]), int(argv[2])
    ids = [int(x) for x in argv[3:]]
    errors: list[BaseException] = []

    def race(number: int) -> None:
        rng = random.Random(number * 7919 + os.getpid())
        try:
            for step in range(rounds):
                at = start + step * SPACING
                while (left := at - time.time()) > 0.005:
                    time.sleep(left - 0.004)
                while time.time() < at:
                    pass
                order = ids[:]
                rng.shuffle(order)
                for seq_id in order:
                    faults.deliver(seq_id, step, step, worker=f"racer-{os.getpid()}-{number}")
        except BaseException as exc:
            errors.append(exc)
            raise
        finally:
            connection.close()

    pool = [threading.Thread(target=race, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    if errors:
        raise SystemExit(f"{len(errors)} threads failed: {errors[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
