#!/usr/bin/env bash
# pytest_pass.sh NAME PYTHON sqlite|postgres REDIS_DB [PYTEST_ARGS...]
# One pytest run of the suite: one environment, one database, its own Redis database
# (so passes running side by side never flush each other's queues). Its JUnit report, the
# versions it ran (test-output/NAME/versions, for scripts/summarize.py) and any
# screenshots go to test-output/NAME/.
set -euo pipefail

name=$1 python=$2 database=$3 redis_db=$4
shift 4
cd "$(dirname "$0")/.."

PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/test}
out=$PWD/test-output/$name
rm -rf "$out"
mkdir -p "$out"

unset DATABASE_URL
if [ "$database" = postgres ]; then
    rc=0
    "$python" scripts/postgres.py "$PG_URL" || rc=$?
    if [ "$rc" = 1 ]; then
        echo "== $name: SKIPPED (no PostgreSQL at $PG_URL)"
        echo "no PostgreSQL" > "$out/skipped"
        exit 0
    elif [ "$rc" != 0 ]; then
        exit "$rc"
    fi
    export DATABASE_URL=$PG_URL
fi

redis=$("$python" scripts/redis_url.py --name test --db "$redis_db")
"$python" scripts/versions.py ${DATABASE_URL:+--postgres} > "$out/versions"
echo "== $name: $(cat "$out/versions"), $database, Redis $redis"
export TEST_REDIS_URL=$redis REDIS_URL=$redis TEST_OUTPUT=$out
exec "$python" -m pytest --junitxml="$out/junit.xml" -o junit_family=xunit2 "$@"
