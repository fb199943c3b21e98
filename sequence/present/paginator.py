"""A paginator for tables of millions of rows: it never waits long for COUNT(*).

On PostgreSQL a count is exact only while it is cheap: an unfiltered list of a large
table takes the planner's row count from ``pg_class``; a filtered one takes the
planner's estimate for its query when that is large, and otherwise counts under a short
statement timeout, falling back to the estimate.
Other databases count exactly. ``estimated`` tells the template to say "about".
"""

from __future__ import annotations

import json
from typing import Any

from django.core.paginator import Paginator
from django.db import OperationalError, connections, transaction
from django.db.models import QuerySet
from django.utils.functional import cached_property

QUERY_CANCELED = "57014"


class EstimatedCountPaginator(Paginator):  # type: ignore[type-arg]  # not generic at run time
    """Counts exactly when that is cheap; estimates on PostgreSQL when it is not."""

    # Lists the planner expects to hold at least this many rows are not counted.
    estimate_above = 100_000
    # Milliseconds a filtered count may take before the estimate is used instead.
    count_timeout_ms = 100

    estimated = False

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet):
            return super().count
        connection = connections[queryset.db]
        if connection.vendor != "postgresql":
            return queryset.count()
        if not queryset.query.where:
            rows = self._table_rows(queryset)
            if rows >= self.estimate_above:
                self.estimated = True
                return rows
            if rows >= 0:  # analysed and small: an exact count is quick
                return queryset.count()
        else:
            # The planner's guess costs no scan: a filter matching many rows is not
            # counted at all, one matching few is counted exactly.
            planned = self._planned_rows(queryset)
            if planned >= self.estimate_above:
                self.estimated = True
                return planned
        exact = self._count_within_timeout(queryset)
        if exact is not None:
            return exact
        self.estimated = True
        return self._planned_rows(queryset)

    def _table_rows(self, queryset: QuerySet[Any]) -> int:
        """The planner's row count for the whole table; -1 if it was never analysed."""
        with connections[queryset.db].cursor() as cursor:
            cursor.execute(
                "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                [queryset.model._meta.db_table],
            )
            row = cursor.fetchone()
        return int(row[0]) if row is not None else -1

    def _count_within_timeout(self, queryset: QuerySet[Any]) -> int | None:
        connection = connections[queryset.db]
        try:
            # A savepoint: if the count is canceled, rolling it back also undoes the
            # local timeout; if it is not, the timeout is put back by hand, since a
            # released savepoint keeps it for the rest of an outer transaction.
            with transaction.atomic(using=queryset.db), connection.cursor() as cursor:
                cursor.execute(
                    "SELECT current_setting('statement_timeout'), "
                    "set_config('statement_timeout', %s, true)",
                    [f"{self.count_timeout_ms}ms"],
                )
                row = cursor.fetchone()
                previous = row[0] if row is not None else "0"
                count = queryset.count()
                cursor.execute("SELECT set_config('statement_timeout', %s, true)", [previous])
                return count
        except OperationalError as exc:
            if getattr(exc.__cause__, "sqlstate", None) == QUERY_CANCELED:
                return None
            raise

    def _planned_rows(self, queryset: QuerySet[Any]) -> int:
        sql, params = queryset.query.sql_with_params()
        with connections[queryset.db].cursor() as cursor:
            cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
            row = cursor.fetchone()
        plan = row[0] if row is not None else [{"Plan": {"Plan Rows": 0}}]
        if isinstance(plan, str):
            plan = json.loads(plan)
        return int(plan[0]["Plan"]["Plan Rows"])
