"""The admin's sequence list on a large table: ``python -m bench.admin_page fill|measure PLAN OUT``.

``fill`` fills ``sequence_record`` with finished sequences in one INSERT ... SELECT
(PostgreSQL's generate_series, a recursive CTE on SQLite); ``measure`` then times
``GET /admin/sequence/sequencerecord/`` as a superuser with Django's test Client. Two
commands, so that the bench can fill both databases side by side and then measure each
page alone.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ["BENCH_ADMIN"] = "1"  # load every app's admin.py, as a site does
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

import django

django.setup()

from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

URL = "/admin/sequence/sequencerecord/"
NAMES = ["bench.Five", "bench.Fifty", "demo.ContactFormSequence", "testapp.ThreeSteps"]


def _expressions(vendor: str) -> dict[str, tuple[str, list[Any]]]:
    """SQL for each known column, as a function of the series value ``g``."""
    pg = vendor == "postgresql"

    def ago(offset: str) -> str:
        if pg:
            return f"now() - make_interval(secs => g + {offset})"
        return f"strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '-' || (g + {offset}) || ' seconds')"

    jsonb = "::jsonb" if pg else ""
    name = "CASE g %% 4 " + " ".join(f"WHEN {i} THEN %s" for i in range(4)) + " END"
    status = (
        "CASE WHEN g %% 50 = 0 THEN 'failed' WHEN g %% 50 = 1 THEN 'canceled' ELSE 'completed' END"
    )
    return {
        "name": (name, list(NAMES)),
        "status": (status, []),
        "data": (
            f"%s{jsonb}",
            [json.dumps({"run": "admin", "count": 5, "email": "a@example.com"})],
        ),
        "plan": (f"%s{jsonb}", [json.dumps(["Work"] * 5)]),
        "step_index": ("5", []),
        "epoch": ("5", []),
        "error": ("CASE WHEN g %% 50 = 0 THEN 'RuntimeError: the step failed' ELSE '' END", []),
        "created_at": (ago("2"), []),
        "updated_at": (ago("0"), []),
        "finished_at": (ago("0"), []),
        "claimed_at": ("NULL", []),
        "lease_until": ("NULL", []),
        "dispatch_due": ("NULL", []),
        "claim_token": ("NULL", []),
        "key": ("NULL", []),
    }


def fill(rows: int) -> float:
    """Insert ``rows`` finished sequences; return the seconds it took."""
    from sequence.models import SequenceRecord

    known = _expressions(connection.vendor)
    columns, selects, params = [], [], []
    for field in SequenceRecord._meta.concrete_fields:
        if field.primary_key:
            continue
        columns.append(connection.ops.quote_name(field.column))
        if field.name in known:
            sql, args = known[field.name]
        else:  # a column added since this was written: its default
            sql, args = "%s", [field.get_db_prep_save(field.get_default(), connection)]
        selects.append(sql)
        params.extend(args)
    table = connection.ops.quote_name(SequenceRecord._meta.db_table)
    if connection.vendor == "postgresql":
        series = f"FROM generate_series(1, {rows:d}) AS s(g)"
        sql = f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(selects)} {series}"
    else:
        sql = (
            f"INSERT INTO {table} ({', '.join(columns)}) "
            f"WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {rows:d}) "
            f"SELECT {', '.join(selects)} FROM s"
        )
    started = time.monotonic()
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            # This connection only: a page cache that holds the indexes while they grow.
            cursor.execute("PRAGMA cache_size = -262144")
        cursor.execute(sql, params)
        cursor.execute(f"ANALYZE {table}")
    return time.monotonic() - started


def main() -> None:
    from django.contrib import admin
    from django.contrib.auth import get_user_model
    from django.test import Client

    from sequence.models import SequenceRecord

    command = sys.argv[1]
    plan = json.loads(Path(sys.argv[2]).read_text())
    out_file = Path(sys.argv[3])
    rows = plan["admin_rows"]
    if command == "fill":
        result: dict[str, Any] = {"vendor": connection.vendor, "rows": rows}
        if not admin.site.is_registered(SequenceRecord):
            result["skipped"] = "sequence/admin.py does not register SequenceRecord yet"
        else:
            print(f"  [{connection.vendor}] filling {rows:,} rows", flush=True)
            result["fill_seconds"] = fill(rows)
        out_file.write_text(json.dumps(result))
        return
    if command != "measure":
        raise SystemExit(f"unknown command {command!r}: fill or measure")
    result = json.loads(out_file.read_text())
    if result.get("skipped"):
        return
    user = get_user_model().objects.create_superuser("bench", "bench@example.com", "bench")
    client = Client()
    client.force_login(user)
    response = client.get(URL)  # warm-up: templates, caches, the planner
    if response.status_code != 200:
        raise SystemExit(f"GET {URL} answered {response.status_code}")
    timings = []
    for _ in range(plan["admin_reps"]):
        started = time.perf_counter()
        response = client.get(URL)
        timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200
    with CaptureQueriesContext(connection) as queries:
        client.get(URL)
    result["ms"] = timings
    result["queries"] = len(queries.captured_queries)
    result["slowest_sql"] = sorted(
        ({"ms": float(q["time"]) * 1000, "sql": q["sql"][:300]} for q in queries.captured_queries),
        key=lambda q: -q["ms"],
    )[:3]
    print(
        f"  [{connection.vendor}] admin list: {sorted(timings)[len(timings) // 2]:.0f} ms",
        flush=True,
    )
    out_file.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
