#!/usr/bin/env bash
# Runs the public HTTP cache test suite (https://github.com/http-tests/cache-tests, the one
# behind https://cache-tests.fyi) against examples/reverse_proxy.rs, and prints a pass/fail
# summary by kind next to the suite's published results for nginx, Varnish, Apache httpd,
# Squid and ATS (and the other reverse proxies it has results for).
#
# Needs git, node (>= 18) and npm; not part of CI. The suite's test server and the proxy
# listen on free ports on 127.0.0.1 only, and both are stopped by PID at exit.
#
#   scripts/cache-tests.sh                      # fetch the suite into a temp dir, build, run
#   scripts/cache-tests.sh -d ~/cache-tests     # keep the suite there (reused next time)
#   scripts/cache-tests.sh -d DIR -i freshness-none   # one test, requests and responses shown
#
# Options:
#   -d DIR   the suite's directory: used as it is when it already holds the suite, else the
#            suite is fetched into it (default: a temporary directory, removed at exit)
#   -o FILE  where the JSON results go (default: ./cache-tests-results.json)
#   -m FILE  also write the summary as Markdown tables to FILE
#   -i ID    run the test ID alone and show its exchanges (no results file, no summary)
#   -b BIN   the proxy binary to run (default: build the example with cargo)
#   -u       update a suite directory given with -d (git pull) before running
#   -c FILE  the earlier results to list changes against (default:
#            docs/cache-tests-results.json, the run docs/cache-tests.md describes;
#            `-c ''` for none)
#
# Environment:
#   CACHE_TESTS_REPO  git URL of the suite (default https://github.com/http-tests/cache-tests.git)
#   CACHE_TESTS_GIT   a local clone or bare mirror of the suite to export HEAD from instead
#                     of cloning (e.g. a mirror made without network access to GitHub)
#   CARGO_TARGET_DIR  as for cargo; the binary is looked up there
#   HEURISTIC_TTL     the proxy's TTL for responses that give no freshness and no
#                     `Last-Modified` (default 0, as in the example): the published proxies
#                     run with such default caching off, as the suite asks;
#                     `freshness-none` checks it and 30 tests depend on it, so with 60 most
#                     of the suite is not run (HEURISTIC_MAX, the example's cap of the
#                     `Last-Modified` heuristic, default a day, can go in PROXY_ENV)
#   PROXY_ENV         extra VAR=value words for the proxy's environment
#   RUST_LOG          the proxy's log filter (default warn); its log is kept only on failure
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SUITE_DIR=""
OUT="$PWD/cache-tests-results.json"
MARKDOWN=""
TEST_ID=""
BIN=""
UPDATE=0
BASELINE="$ROOT/docs/cache-tests-results.json"

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

while getopts "d:o:m:i:b:c:uh" opt; do
  case "$opt" in
    d) SUITE_DIR=$OPTARG ;;
    o) OUT=$OPTARG ;;
    m) MARKDOWN=$OPTARG ;;
    i) TEST_ID=$OPTARG ;;
    b) BIN=$OPTARG ;;
    u) UPDATE=1 ;;
    c) BASELINE=$OPTARG ;;
    h) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done

for tool in git node npm; do
  command -v "$tool" > /dev/null || { echo "cache-tests: $tool is needed" >&2; exit 1; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cache-tests.XXXXXX")
SERVER_PID=""
PROXY_PID=""
KEEP_LOGS=0
cleanup() {
  local pid
  for pid in $PROXY_PID $SERVER_PID; do
    kill "$pid" 2> /dev/null || true
  done
  for pid in $PROXY_PID $SERVER_PID; do
    wait "$pid" 2> /dev/null || true
  done
  if [[ $KEEP_LOGS == 1 ]]; then
    echo "cache-tests: logs kept in $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the suite ---------------------------------------------------------------------------
REPO=${CACHE_TESTS_REPO:-https://github.com/http-tests/cache-tests.git}
if [[ -z $SUITE_DIR ]]; then
  SUITE_DIR="$WORK/suite"
fi
mkdir -p "$SUITE_DIR"
SUITE_DIR=$(cd "$SUITE_DIR" && pwd)
if [[ ! -f $SUITE_DIR/test-engine/cli.mjs ]]; then
  if [[ -n ${CACHE_TESTS_GIT:-} ]]; then
    echo "cache-tests: exporting the suite from $CACHE_TESTS_GIT" >&2
    GIT_DIR_OPT=$(git -C "$CACHE_TESTS_GIT" rev-parse --absolute-git-dir 2> /dev/null || echo "$CACHE_TESTS_GIT")
    git --git-dir="$GIT_DIR_OPT" archive HEAD | tar -x -C "$SUITE_DIR"
    git --git-dir="$GIT_DIR_OPT" rev-parse HEAD > "$SUITE_DIR/.suite-commit"
  else
    echo "cache-tests: cloning $REPO into $SUITE_DIR" >&2
    git clone --quiet --depth 1 "$REPO" "$SUITE_DIR"
  fi
elif [[ $UPDATE == 1 ]]; then
  if [[ ! -d $SUITE_DIR/.git ]]; then
    echo "cache-tests: $SUITE_DIR is not a clone; remove it to fetch the suite again" >&2
    exit 1
  fi
  git -C "$SUITE_DIR" pull --quiet --ff-only
  rm -rf "$SUITE_DIR/node_modules"
fi
if git -C "$SUITE_DIR" rev-parse --is-inside-work-tree > /dev/null 2>&1 \
  && [[ $(git -C "$SUITE_DIR" rev-parse --show-toplevel) == "$SUITE_DIR" ]]; then
  SUITE_COMMIT=$(git -C "$SUITE_DIR" rev-parse HEAD)
else
  SUITE_COMMIT=$(cat "$SUITE_DIR/.suite-commit" 2> /dev/null || echo unknown)
fi
if [[ ! -d $SUITE_DIR/node_modules ]]; then
  echo "cache-tests: npm install in $SUITE_DIR" >&2
  (cd "$SUITE_DIR" && npm install --omit=dev --no-audit --no-fund --loglevel=error > /dev/null)
fi

# --- the proxy ---------------------------------------------------------------------------
if [[ -z $BIN ]]; then
  echo "cache-tests: building examples/reverse_proxy.rs" >&2
  (cd "$ROOT" && cargo build --quiet --all-features --example reverse_proxy)
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/examples/reverse_proxy"
fi
[[ -x $BIN ]] || { echo "cache-tests: no proxy binary at $BIN" >&2; exit 1; }
OUR_COMMIT=$(git -C "$ROOT" rev-parse HEAD)
git -C "$ROOT" diff --quiet HEAD 2> /dev/null || OUR_COMMIT="$OUR_COMMIT (with uncommitted changes)"

# Two free ports on the loopback interface.
read -r SERVER_PORT PROXY_PORT < <(node -e '
  const net = require("net")
  const a = net.createServer().listen(0, "127.0.0.1", () => {
    const b = net.createServer().listen(0, "127.0.0.1", () => {
      console.log(a.address().port, b.address().port); a.close(); b.close()
    })
  })')

# The suite's server listens on every interface; this preload keeps it on 127.0.0.1.
cat > "$WORK/loopback.mjs" << 'EOF'
import http from 'node:http'
const listen = http.Server.prototype.listen
http.Server.prototype.listen = function (port, ...rest) {
  if (typeof port === 'number' || typeof port === 'string') {
    return listen.call(this, port, '127.0.0.1', ...rest)
  }
  return listen.call(this, port, ...rest)
}
EOF

wait_for_port() {
  local port=$1 pid=$2 name=$3 i
  for i in $(seq 1 100); do
    if (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null; then return 0; fi
    kill -0 "$pid" 2> /dev/null || { echo "cache-tests: the $name exited" >&2; KEEP_LOGS=1; exit 1; }
    sleep 0.1
  done
  echo "cache-tests: the $name is not listening on 127.0.0.1:$port" >&2
  KEEP_LOGS=1
  exit 1
}

(
  cd "$SUITE_DIR"
  exec env npm_package_config_protocol=http npm_config_port="$SERVER_PORT" \
    npm_config_pidfile="$WORK/server.pid" \
    node --import "file://$WORK/loopback.mjs" test-engine/server/server.mjs
) > "$WORK/server.log" 2>&1 &
SERVER_PID=$!
wait_for_port "$SERVER_PORT" "$SERVER_PID" "test server"

# No REDIS_URL: the local store only, so that every run starts empty.
# shellcheck disable=SC2086
env -u REDIS_URL UPSTREAM="http://127.0.0.1:$SERVER_PORT" PROXY_ADDR="127.0.0.1:$PROXY_PORT" \
  HEURISTIC_TTL="${HEURISTIC_TTL:-0}" RUST_LOG="${RUST_LOG:-warn}" ${PROXY_ENV:-} "$BIN" > "$WORK/proxy.log" 2>&1 &
PROXY_PID=$!
wait_for_port "$PROXY_PORT" "$PROXY_PID" "proxy"

echo "cache-tests: server 127.0.0.1:$SERVER_PORT (pid $SERVER_PID), proxy 127.0.0.1:$PROXY_PORT (pid $PROXY_PID)" >&2
echo "cache-tests: stormcache $OUR_COMMIT, suite $SUITE_COMMIT" >&2

run_client() {
  (cd "$SUITE_DIR" && env npm_config_base="http://127.0.0.1:$PROXY_PORT" npm_config_id="$1" npm_package_config_id="" \
    node --no-warnings test-engine/cli.mjs)
}

if [[ -n $TEST_ID ]]; then
  run_client "$TEST_ID"
  exit 0
fi

echo "cache-tests: running the suite (a few minutes)" >&2
if ! run_client "" > "$WORK/results.json"; then
  KEEP_LOGS=1
  echo "cache-tests: the client failed" >&2
  exit 1
fi
mkdir -p "$(dirname "$OUT")"
cp "$WORK/results.json" "$OUT"
echo "cache-tests: results in $OUT" >&2

echo "stormcache $OUR_COMMIT (HEURISTIC_TTL=${HEURISTIC_TTL:-0}); cache-tests $SUITE_COMMIT; $(date -u +%Y-%m-%dT%H:%MZ)"
BASELINE_OPT=()
[[ -n $BASELINE && -f $BASELINE ]] && BASELINE_OPT=(--baseline "$BASELINE")
node "$ROOT/scripts/cache-tests-summary.mjs" "$SUITE_DIR" "$OUT" "${BASELINE_OPT[@]}"
if [[ -n $MARKDOWN ]]; then
  {
    echo "Run $(date -u +%Y-%m-%d) — stormcache \`$OUR_COMMIT\` (\`HEURISTIC_TTL=${HEURISTIC_TTL:-0}\`), cache-tests \`$SUITE_COMMIT\`."
    echo
    node "$ROOT/scripts/cache-tests-summary.mjs" "$SUITE_DIR" "$OUT" --markdown
  } > "$MARKDOWN"
  echo "cache-tests: Markdown summary in $MARKDOWN" >&2
fi
