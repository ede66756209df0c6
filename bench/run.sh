#!/usr/bin/env bash
# tollgate benchmark: the upstream directly, nginx as a bare reverse proxy, and tollgate
# (authentication and usage records on), each at a fixed concurrency and at a fixed
# rate. See bench/README.md for what is measured and how to read it.
#
# Everything runs on 127.0.0.1, on ports chosen at run time; every process the script
# starts is stopped on exit and its temporary directory removed. Knobs (environment):
#
#   BENCH_CONNECTIONS=32   connections of the fixed-concurrency run
#   BENCH_DURATION=15      seconds measured at fixed concurrency (after BENCH_WARMUP)
#   BENCH_WARMUP=3         seconds of warm-up before each measured run (not counted)
#   BENCH_RATE=200         requests/s of the fixed-rate run
#   BENCH_RATE_DURATION=20 seconds measured at the fixed rate (after BENCH_WARMUP)
#   BENCH_THREADS=2        load-generator threads at fixed concurrency
#   BENCH_NGINX_WORKERS=auto  worker_processes of both nginx instances
#   BENCH_SIMULATOR=1      also measure `tollgate mock` directly (0 to skip)
#   BENCH_UPSTREAM_HEADERS=openai  the upstream's answers carry OpenAI's headers (x-ratelimit-*,
#                          openai-version, openai-processing-ms), as the real API's do; none:
#                          only x-request-id (runs before session 7 used none)
#   BENCH_FLOOR=1          also measure the floor of tollgate's stack: the least proxy that
#                          tokio and hyper with tollgate's threading can be
#                          (crates/gateway/examples/proxy_floor.rs; 0 to skip)
#   BENCH_PROXY_ROUNDS=6   after the single runs, that many pairs of runs of the nginx proxy and
#                          tollgate at fixed concurrency, in ABBA order (BENCH_PAIR_SECONDS=8
#                          each, after 1 s of warm-up), and BENCH_RATE_ROUNDS=4 rounds of the
#                          upstream, the nginx proxy and tollgate at the fixed rate
#                          (BENCH_RATE_ROUND_SECONDS=10 each, after 1 s of warm-up, the order
#                          rotating): a single run moves by 10-20 % on a shared VM, so issue 3's
#                          figures are also reported as medians over these (0 to skip)
#   BENCH_LIMITS=1         also measure tollgate with an RPM and a TPM rule on the benchmark
#                          key's project, set high enough never to refuse, then with the rule
#                          cleared again (compared with the mean of both runs without it;
#                          0 to skip)
#   BENCH_LIMITS_ROUNDS=6  then that many more pairs of runs at fixed concurrency, limits off
#                          and on, in ABBA order (BENCH_LIMITS_SECONDS=8 each, after 1 s of warm-up): the
#                          limiter's cost is smaller than two single runs differ on a shared
#                          VM, so it is also reported as the median over paired runs (0 to skip)
#   BENCH_REDIS=0          1: also measure a second tollgate with the same rules counted in
#                          Redis (needs BENCH_LIMITS=1), and report the admission round
#                          trip's p50/p99 from its /metrics histogram. Redis: BENCH_REDIS_URL,
#                          else a redis-server of its own on a free port (installed if missing)
#   BENCH_REDIS_TIMEOUT_MS=50  redis.timeout_ms of the Redis tollgate (raise it on a loaded
#                          machine: a call past it falls back, which voids the figures)
#   BENCH_REDIS_BUDGET=0   1: with BENCH_REDIS=1, also govern the key by a daily spend budget
#                          far above what the run spends, so each admission takes the rate
#                          limits and reserves the budget in its one Redis script call
#   BENCH_MAX_LOAD=1.5     wait (up to BENCH_LOAD_WAIT s, default 300) until the 1-min
#                          load average is below this before measuring
#   BENCH_NO_INSTALL=1     never call apt-get (fail if a tool is missing)
#   BENCH_NO_BUILD=1       use the existing target/release/tollgate
#   BENCH_TOLLGATE=PATH    measure this tollgate binary instead (e.g. the PGO build of
#                          scripts/build-release: target/pgo/release/tollgate)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
OUT_DIR="$HERE/out"

CONNECTIONS="${BENCH_CONNECTIONS:-32}"
DURATION="${BENCH_DURATION:-15}"
WARMUP="${BENCH_WARMUP:-3}"
RATE="${BENCH_RATE:-200}"
RATE_DURATION="${BENCH_RATE_DURATION:-20}"
THREADS="${BENCH_THREADS:-2}"
NGINX_WORKERS="${BENCH_NGINX_WORKERS:-auto}"
SIMULATOR="${BENCH_SIMULATOR:-1}"
FLOOR="${BENCH_FLOOR:-1}"
UPSTREAM_HEADER_SET="${BENCH_UPSTREAM_HEADERS:-openai}"
[[ "$UPSTREAM_HEADER_SET" == openai || "$UPSTREAM_HEADER_SET" == none ]] || { echo "BENCH_UPSTREAM_HEADERS: openai or none" >&2; exit 1; }
PROXY_ROUNDS="${BENCH_PROXY_ROUNDS:-6}"
PAIR_SECONDS="${BENCH_PAIR_SECONDS:-8}"
RATE_ROUNDS="${BENCH_RATE_ROUNDS:-4}"
RATE_ROUND_SECONDS="${BENCH_RATE_ROUND_SECONDS:-10}"
LIMITS="${BENCH_LIMITS:-1}"
LIMITS_ROUNDS="${BENCH_LIMITS_ROUNDS:-6}"
LIMITS_SECONDS="${BENCH_LIMITS_SECONDS:-8}"
REDIS="${BENCH_REDIS:-0}"
[[ "$REDIS" != 1 || "$LIMITS" == 1 ]] || { echo "BENCH_REDIS=1 needs BENCH_LIMITS=1" >&2; exit 1; }
MAX_LOAD="${BENCH_MAX_LOAD:-1.5}"
LOAD_WAIT="${BENCH_LOAD_WAIT:-300}"

log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- processes and cleanup
TMP="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-bench.XXXXXX")"
chmod 755 "$TMP" # nginx workers may run as nobody
PIDS=()

stop_pid() {
    local pid="$1" i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? pid
    for pid in "${PIDS[@]:-}"; do
        [[ -n "$pid" ]] && stop_pid "$pid"
    done
    wait 2>/dev/null || true
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- tools
SUDO=""
[[ "$(id -u)" -eq 0 ]] || SUDO="sudo"

apt_candidate() { # prints the candidate version of a Debian package, or nothing
    apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { if ($2 != "(none)") print $2 }'
}

APT_UPDATED=0
apt_install() {
    [[ "${BENCH_NO_INSTALL:-0}" == 1 ]] && die "missing $* (BENCH_NO_INSTALL=1)"
    if [[ "$APT_UPDATED" == 0 ]]; then
        log "apt-get update"
        $SUDO apt-get update -qq >&2
        APT_UPDATED=1
    fi
    log "apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >&2
}

if ! command -v nginx >/dev/null 2>&1 && [[ ! -x /usr/sbin/nginx ]]; then
    if [[ -n "$(apt_candidate nginx-light)" ]]; then apt_install nginx-light; else apt_install nginx; fi
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

# Fixed-concurrency tool: oha when Debian has it, else wrk.
LOADGEN=""
if command -v oha >/dev/null 2>&1; then
    LOADGEN=oha
elif command -v wrk >/dev/null 2>&1; then
    LOADGEN=wrk
elif [[ -n "$(apt_candidate oha)" ]]; then
    apt_install oha && LOADGEN=oha
else
    apt_install wrk && LOADGEN=wrk
fi
command -v "$LOADGEN" >/dev/null 2>&1 || die "no load generator (oha or wrk) available"
command -v curl >/dev/null 2>&1 || apt_install curl
command -v python3 >/dev/null 2>&1 || apt_install python3
if [[ "$REDIS" == 1 && -z "${BENCH_REDIS_URL:-}" ]]; then
    command -v redis-server >/dev/null 2>&1 || apt_install redis-server
fi

# Fixed-rate tool: Debian has neither wrk2 nor (in bookworm) oha, and wrk has no rate
# option, so a small std-only Rust program does it (bench/fixed_rate.rs).
FIXED_RATE="$TMP/fixed_rate"
log "building bench/fixed_rate.rs"
rustc -O --edition 2021 "$HERE/fixed_rate.rs" -o "$FIXED_RATE"

# ---------------------------------------------------------------- tollgate
if [[ "${BENCH_NO_BUILD:-0}" != 1 ]]; then
    log "cargo build --release -p tollgate"
    (cd "$ROOT" && cargo build --release -p tollgate >&2)
    if [[ "$FLOOR" == 1 ]]; then
        log "cargo build --release -p tollgate-gateway --example proxy_floor"
        (cd "$ROOT" && cargo build --release -p tollgate-gateway --example proxy_floor >&2)
    fi
fi
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
TOLLGATE="${BENCH_TOLLGATE:-$TARGET_DIR/release/tollgate}"
[[ -x "$TOLLGATE" ]] || die "$TOLLGATE not found"
PROXY_FLOOR="$TARGET_DIR/release/examples/proxy_floor"
[[ "$FLOOR" != 1 || -x "$PROXY_FLOOR" ]] || die "$PROXY_FLOOR not found (BENCH_FLOOR=0 to skip it)"

# ---------------------------------------------------------------- machine quiet?
load1() { cut -d' ' -f1 /proc/loadavg; }
waited=0
while awk -v l="$(load1)" -v m="$MAX_LOAD" 'BEGIN { exit !(l > m) }'; do
    if (( waited >= LOAD_WAIT )); then
        log "load average still $(load1) after ${waited}s; measuring anyway (figures will be pessimistic)"
        break
    fi
    log "load average $(load1) > $MAX_LOAD (something else is busy); waiting…"
    sleep 15
    waited=$((waited + 15))
done
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------- payloads
# A realistic small non-streaming Chat Completions answer (no single quotes or `$`:
# it is inlined into nginx's `return`).
UPSTREAM_BODY='{"id":"chatcmpl-bench000000000000000000001","object":"chat.completion","created":1735689600,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":21,"completion_tokens":9,"total_tokens":30,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_bench00001"}'
# The headers OpenAI sends with every answer (OPENAI-WIRE.md §f), unless
# BENCH_UPSTREAM_HEADERS=none: a gateway relays them, and with its own limits replaces
# the six x-ratelimit-* ones, so the answers are as large with limits on as off.
UPSTREAM_HEADERS=""
if [[ "$UPSTREAM_HEADER_SET" == openai ]]; then
    for h in "openai-version 2020-10-01" "openai-processing-ms 81" \
        "x-ratelimit-limit-requests 30000" "x-ratelimit-limit-tokens 150000000" \
        "x-ratelimit-remaining-requests 29999" "x-ratelimit-remaining-tokens 149999979" \
        "x-ratelimit-reset-requests 2ms" "x-ratelimit-reset-tokens 0s"; do
        UPSTREAM_HEADERS+="add_header $h; "
    done
fi
REQUEST_BODY='{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello in five words."}],"max_tokens":64}'
printf '%s' "$REQUEST_BODY" >"$TMP/request.json"
PROVIDER_KEY="sk-bench-provider-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_http() { # url: wait up to 10 s for any HTTP answer
    local i
    for i in $(seq 1 100); do
        curl -s -o /dev/null -m 1 "$1" && return 0
        sleep 0.1
    done
    die "nothing answers at $1"
}

wait_listening() { # file: wait up to 20 s for "listening on http://ADDR"; prints ADDR
    local i addr
    for i in $(seq 1 200); do
        addr="$(sed -n '1s#^listening on http://##p' "$1" 2>/dev/null || true)"
        if [[ -n "$addr" ]]; then printf '%s\n' "$addr"; return 0; fi
        sleep 0.1
    done
    die "no 'listening on' line in $1"
}

NGINX_USER=""
[[ "$(id -u)" -eq 0 ]] && NGINX_USER="user nobody nogroup;"

nginx_conf() { # name port server-block
    local name="$1" port="$2" server="$3" dir="$TMP/$1"
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
$NGINX_USER
worker_processes $NGINX_WORKERS;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    $server
}
EOF
}

# 1. The upstream: a fixed body, as cheap as an HTTP answer gets.
UP_PORT="$(free_port)"
nginx_conf upstream "$UP_PORT" "
    server {
        listen 127.0.0.1:$UP_PORT;
        location = /v1/chat/completions {
            default_type application/json;
            add_header x-request-id req_upstream_bench;
            $UPSTREAM_HEADERS
            return 200 '$UPSTREAM_BODY';
        }
        location / { return 404; }
    }"
"$NGINX" -p "$TMP/upstream" -c "$TMP/upstream/nginx.conf" -g 'daemon off;' 2>>"$TMP/upstream/error.log" &
UP_PID=$!
PIDS+=("$UP_PID")

# 2. nginx as a bare reverse proxy in front of it (keep-alive upstream connections; it
#    swaps the credential as any gateway would, and does nothing else).
PX_PORT="$(free_port)"
nginx_conf proxy "$PX_PORT" "
    upstream llm { server 127.0.0.1:$UP_PORT; keepalive 64; }
    server {
        listen 127.0.0.1:$PX_PORT;
        location / {
            proxy_pass http://llm;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Authorization \"Bearer $PROVIDER_KEY\";
        }
    }"
"$NGINX" -p "$TMP/proxy" -c "$TMP/proxy/nginx.conf" -g 'daemon off;' 2>>"$TMP/proxy/error.log" &
PX_PID=$!
PIDS+=("$PX_PID")

wait_http "http://127.0.0.1:$UP_PORT/"
wait_http "http://127.0.0.1:$PX_PORT/"

# 3. tollgate, release build, fresh data directory, one key.
DATA="$TMP/tollgate-data"
mkdir -p "$DATA"
KEY_JSON="$("$TOLLGATE" keys create --project bench --env prod --name bench --json --data-dir "$DATA")"
GATEWAY_KEY="$(printf '%s' "$KEY_JSON" | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')"
BENCH_PROVIDER_KEY="$PROVIDER_KEY" "$TOLLGATE" serve \
    --listen 127.0.0.1:0 \
    --upstream-url "http://127.0.0.1:$UP_PORT/v1" \
    --upstream-api-key env:BENCH_PROVIDER_KEY \
    --data-dir "$DATA" >"$TMP/tollgate.out" 2>"$TMP/tollgate.err" &
TG_PID=$!
PIDS+=("$TG_PID")
TG_ADDR="$(wait_listening "$TMP/tollgate.out")"

# 4. Optionally the simulator, measured directly (it is an upstream, not a proxy).
SIM_ADDR=""
if [[ "$SIMULATOR" == 1 ]]; then
    "$TOLLGATE" mock --listen 127.0.0.1:0 >"$TMP/mock.out" 2>"$TMP/mock.err" &
    SIM_PID=$!
    PIDS+=("$SIM_PID")
    SIM_ADDR="$(wait_listening "$TMP/mock.out")"
fi

# 5. Optionally the floor of tollgate's stack: a bare tokio/hyper proxy, thread per core,
#    one upstream connection per client connection, nothing checked or recorded.
FL_ADDR=""
if [[ "$FLOOR" == 1 ]]; then
    "$PROXY_FLOOR" 127.0.0.1:0 "127.0.0.1:$UP_PORT" >"$TMP/floor.out" 2>"$TMP/floor.err" &
    FL_PID=$!
    PIDS+=("$FL_PID")
    FL_ADDR="$(wait_listening "$TMP/floor.out")"
fi

# Smoke test: each target answers the benchmark request with 200.
smoke() { # addr
    local code
    code="$(curl -s -o "$TMP/smoke.json" -w '%{http_code}' -m 5 \
        -H "Authorization: Bearer $GATEWAY_KEY" -H 'Content-Type: application/json' \
        --data-binary @"$TMP/request.json" "http://$1/v1/chat/completions")"
    [[ "$code" == 200 ]] || die "http://$1/v1/chat/completions answered $code: $(head -c 300 "$TMP/smoke.json")"
}
smoke "127.0.0.1:$UP_PORT"
smoke "127.0.0.1:$PX_PORT"
smoke "$TG_ADDR"
[[ -n "$SIM_ADDR" ]] && smoke "$SIM_ADDR"
[[ -n "$FL_ADDR" ]] && smoke "$FL_ADDR"

# ---------------------------------------------------------------- measuring helpers
CLK_TCK="$(getconf CLK_TCK)"

proc_tree() { # pid → the pid and its direct children (nginx master + workers)
    printf '%s\n' "$1"
    pgrep -P "$1" || true
}

cpu_ticks() { # pids… → utime+stime summed, in clock ticks
    local total=0 pid t
    for pid in "$@"; do
        t="$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{ print $12 + $13 }')" || t=0
        total=$((total + ${t:-0}))
    done
    printf '%s\n' "$total"
}

peak_rss_kb() { # pids… → VmHWM summed, in kB
    local total=0 pid v
    for pid in "$@"; do
        v="$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status" 2>/dev/null)" || v=0
        total=$((total + ${v:-0}))
    done
    printf '%s\n' "$total"
}

cat >"$TMP/post.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $GATEWAY_KEY"
wrk.body = '$REQUEST_BODY'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT requests=%d duration_us=%d errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
EOF

# Fixed concurrency: prints "requests duration_us errors p50_us p99_us".
run_concurrency() { # addr seconds
    local url="http://$1/v1/chat/completions" secs="$2"
    if [[ "$LOADGEN" == wrk ]]; then
        timeout $((secs + 30)) wrk -t "$THREADS" -c "$CONNECTIONS" -d "${secs}s" --timeout 10s \
            -s "$TMP/post.lua" "$url" >"$TMP/wrk.out" 2>&1 || die "wrk failed: $(cat "$TMP/wrk.out")"
        sed -n 's/^RESULT //p' "$TMP/wrk.out" |
            sed -E 's/requests=([0-9]+) duration_us=([0-9]+) errors=([0-9]+) p50_us=([0-9]+) p99_us=([0-9]+)/\1 \2 \3 \4 \5/'
    else
        timeout $((secs + 30)) oha --no-tui --output-format json -z "${secs}s" -c "$CONNECTIONS" \
            -m POST -H "Authorization: Bearer $GATEWAY_KEY" -H 'Content-Type: application/json' \
            -D "$TMP/request.json" "$url" >"$TMP/oha.json" 2>"$TMP/oha.err" || die "oha failed: $(cat "$TMP/oha.err")"
        python3 - "$TMP/oha.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
s, p = d["summary"], d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
ok = sum(v for k, v in codes.items() if k.startswith("2"))
total = sum(codes.values()) + sum(d.get("errorDistribution", {}).values())
print(ok, int(s["total"] * 1e6), total - ok, int(p["p50"] * 1e6), int(p["p99"] * 1e6))
PY
    fi
}

# Fixed rate: prints the fixed_rate key=value line.
run_rate() { # addr [seconds warm-up-seconds]
    local secs="${2:-$RATE_DURATION}" warm="${3:-$WARMUP}"
    timeout $((warm + secs + 30)) "$FIXED_RATE" --addr "$1" --path /v1/chat/completions \
        --rate "$RATE" --duration "$secs" --warmup "$warm" --connections 8 \
        --body-file "$TMP/request.json" --header "Authorization: Bearer $GATEWAY_KEY"
}

kv() { # line key → value
    printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"
}

declare -A R # results: R[target,field]

measure() { # name addr server-pid
    local name="$1" addr="$2" pid="$3" pids c0 c1 line
    mapfile -t pids < <(proc_tree "$pid")
    log "$name: warm-up ${WARMUP}s, then ${DURATION}s at $CONNECTIONS connections (load $(load1))"
    line="$(run_concurrency "$addr" "$WARMUP")"
    read -r "R[$name,warm]" _ <<<"$line"
    c0="$(cpu_ticks "${pids[@]}")"
    line="$(run_concurrency "$addr" "$DURATION")"
    read -r "R[$name,req]" "R[$name,dur]" "R[$name,err]" "R[$name,p50]" "R[$name,p99]" <<<"$line"
    [[ -n "${R[$name,p99]:-}" ]] || die "$name: no result from $LOADGEN"
    c1="$(cpu_ticks "${pids[@]}")"
    R[$name,cpu_sat]=$((c1 - c0))
    log "$name: ${RATE} req/s for ${RATE_DURATION}s after ${WARMUP}s warm-up (load $(load1))"
    c0="$(cpu_ticks "${pids[@]}")"
    line="$(run_rate "$addr")"
    [[ "$line" == sent=* ]] || die "$name: no result from fixed_rate"
    c1="$(cpu_ticks "${pids[@]}")"
    R[$name,cpu_rate]=$((c1 - c0))
    R[$name,rate_sent]="$(kv "$line" sent)"
    R[$name,rate_ok]="$(kv "$line" ok)"
    R[$name,rate_err]="$(kv "$line" errors)"
    R[$name,rate]="$(kv "$line" rate)"
    R[$name,rp50]="$(kv "$line" p50_us)"
    R[$name,rp99]="$(kv "$line" p99_us)"
    R[$name,rp999]="$(kv "$line" p999_us)"
    R[$name,rss]="$(peak_rss_kb "${pids[@]}")"
    log "$name: $(( R[$name,req] * 1000000 / R[$name,dur] )) req/s; at ${RATE}/s p50 ${R[$name,rp50]}us p99 ${R[$name,rp99]}us"
}

TARGETS=(direct nginx)
declare -A LABEL=([direct]="upstream direct (nginx return 200)" [nginx]="nginx reverse proxy" [floor]="stack floor (examples/proxy_floor)" [tollgate]="tollgate" [tollgate_limits]="tollgate, limits on (not hit)" [tollgate_off]="tollgate, limits cleared again" [tollgate_redis]="tollgate, limits in Redis (not hit)" [simulator]="simulator direct (tollgate mock)")
measure direct "127.0.0.1:$UP_PORT" "$UP_PID"
measure nginx "127.0.0.1:$PX_PORT" "$PX_PID"
if [[ -n "$FL_ADDR" ]]; then
    measure floor "$FL_ADDR" "$FL_PID"
    TARGETS+=(floor)
    stop_pid "$FL_PID"
fi
measure tollgate "$TG_ADDR" "$TG_PID"
TARGETS+=(tollgate)
# Rounds (see BENCH_PROXY_ROUNDS): the single runs above are one sample each.
PROXY_COUNTED=0
PROXY_ERRORS=0
: >"$TMP/proxy_rounds.txt"
: >"$TMP/rate_rounds.txt"
pair_run() { # name addr pid: 1 s of warm-up, then PAIR_SECONDS at fixed concurrency
    local line n d e p99 c0 c1 pids
    mapfile -t pids < <(proc_tree "$3")
    line="$(run_concurrency "$2" 1)"
    [[ "$1" == tollgate ]] && PROXY_COUNTED=$((PROXY_COUNTED + ${line%% *}))
    c0="$(cpu_ticks "${pids[@]}")"
    line="$(run_concurrency "$2" "$PAIR_SECONDS")"
    c1="$(cpu_ticks "${pids[@]}")"
    read -r n d e _ p99 <<<"$line"
    [[ "$1" == tollgate ]] && PROXY_COUNTED=$((PROXY_COUNTED + n))
    PROXY_ERRORS=$((PROXY_ERRORS + e))
    printf '%s %s %s %s %s\n' "$1" "$n" "$d" "$((c1 - c0))" "$p99" >>"$TMP/proxy_rounds.txt"
}
rate_run() { # name addr: 1 s of warm-up, then RATE_ROUND_SECONDS at the fixed rate
    local line
    line="$(run_rate "$2" "$RATE_ROUND_SECONDS" 1)"
    [[ "$line" == sent=* ]] || die "$1: no result from fixed_rate"
    [[ "$1" == tollgate ]] && PROXY_COUNTED=$((PROXY_COUNTED + $(kv "$line" sent)))
    PROXY_ERRORS=$((PROXY_ERRORS + $(kv "$line" errors)))
    printf '%s %s %s\n' "$1" "$(kv "$line" p50_us)" "$(kv "$line" p99_us)" >>"$TMP/rate_rounds.txt"
}
for round in $(seq 1 "$PROXY_ROUNDS"); do
    log "nginx proxy/tollgate, pair $round of $PROXY_ROUNDS: 2 × ${PAIR_SECONDS}s at $CONNECTIONS connections (load $(load1))"
    if ((round % 2 == 1)); then
        pair_run nginx "127.0.0.1:$PX_PORT" "$PX_PID"
        pair_run tollgate "$TG_ADDR" "$TG_PID"
    else
        pair_run tollgate "$TG_ADDR" "$TG_PID"
        pair_run nginx "127.0.0.1:$PX_PORT" "$PX_PID"
    fi
done
if ((PROXY_ROUNDS > 0)); then
    ROUND_ORDER=(direct nginx tollgate)
    for round in $(seq 1 "$RATE_ROUNDS"); do
        log "upstream/nginx proxy/tollgate at ${RATE} req/s, round $round of $RATE_ROUNDS: 3 × ${RATE_ROUND_SECONDS}s (load $(load1))"
        for i in 0 1 2; do
            t="${ROUND_ORDER[$(( (i + round - 1) % 3 ))]}"
            case "$t" in
                direct) rate_run direct "127.0.0.1:$UP_PORT" ;;
                nginx) rate_run nginx "127.0.0.1:$PX_PORT" ;;
                tollgate) rate_run tollgate "$TG_ADDR" ;;
            esac
        done
    done
fi
if [[ "$LIMITS" == 1 ]]; then
    # The same server, now governed by rules it never hits: every request is admitted
    # against an RPM bucket and a TPM bucket (its input counted with the tokenizer).
    set_rules() { "$TOLLGATE" limits set --project bench --env prod --rpm 1000000000 \
        --tpm 1000000000000 --data-dir "$DATA" >/dev/null; }
    applied_probes=0
    rules_seen() { # on|off: wait (up to 5 s) until the server's answers show the rules or not
        local _ seen
        for _ in $(seq 1 50); do
            applied_probes=$((applied_probes + 1))
            seen=off
            curl -s -D - -o /dev/null -m 5 -H "Authorization: Bearer $GATEWAY_KEY" \
                -H 'Content-Type: application/json' --data-binary @"$TMP/request.json" \
                "http://$TG_ADDR/v1/chat/completions" |
                grep -qi '^x-ratelimit-limit-requests: 1000000000' && seen=on
            [[ "$seen" == "$1" ]] && return 0
            sleep 0.1
        done
        die "the benchmark's rate-limit rules are not $1 after 5 s"
    }
    set_rules
    rules_seen on
    measure tollgate_limits "$TG_ADDR" "$TG_PID"
    TARGETS+=(tollgate_limits)
    # Off again, on the same (now larger) usage table: limits on is compared with the
    # mean of the runs before and after it, so the table's growth and the process's
    # warm-up over the run do not count as the limiter's cost.
    "$TOLLGATE" limits clear --project bench --env prod --data-dir "$DATA" >/dev/null
    rules_seen off
    measure tollgate_off "$TG_ADDR" "$TG_PID"
    TARGETS+=(tollgate_off)
    # Paired runs (the rules are off here), at fixed concurrency only: each pair is
    # compared within itself, and the report gives the median over pairs.
    cpu_split() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12, $13 }'; } # utime stime
    round_run() { # off|on: 1 s of warm-up, then LIMITS_SECONDS measured; appends a row
        local line n d e p99 u0 s0 u1 s1
        line="$(run_concurrency "$TG_ADDR" 1)"
        ROUNDS_COUNTED=$((ROUNDS_COUNTED + ${line%% *}))
        read -r u0 s0 <<<"$(cpu_split "$TG_PID")"
        line="$(run_concurrency "$TG_ADDR" "$LIMITS_SECONDS")"
        read -r u1 s1 <<<"$(cpu_split "$TG_PID")"
        read -r n d e _ p99 <<<"$line"
        ROUNDS_COUNTED=$((ROUNDS_COUNTED + n))
        ROUNDS_ERRORS=$((ROUNDS_ERRORS + e))
        printf '%s %s %s %s %s %s\n' "$1" "$n" "$d" "$((u1 - u0))" "$((s1 - s0))" "$p99" >>"$TMP/rounds.txt"
    }
    ROUNDS_COUNTED=0
    ROUNDS_ERRORS=0
    : >"$TMP/rounds.txt"
    # Odd pairs run off first, even pairs on first (ABBA): whatever drifts over the
    # run by itself (the usage table grows by millions of rows) falls on both sides.
    for round in $(seq 1 "$LIMITS_ROUNDS"); do
        log "limits off/on, pair $round of $LIMITS_ROUNDS: 2 × ${LIMITS_SECONDS}s at $CONNECTIONS connections (load $(load1))"
        if ((round % 2 == 1)); then
            round_run off
        fi
        set_rules
        rules_seen on
        round_run on
        "$TOLLGATE" limits clear --project bench --env prod --data-dir "$DATA" >/dev/null
        rules_seen off
        if ((round % 2 == 0)); then
            round_run off
        fi
    done
    # The Redis tollgate (below) counts the same rules.
    set_rules
fi
RD_COUNTED=0
if [[ "$REDIS" == 1 ]]; then
    # A second tollgate on the same data directory (same key, same rules) whose
    # counters are in Redis: every request is one admission script round trip.
    REDIS_URL="${BENCH_REDIS_URL:-}"
    if [[ -z "$REDIS_URL" ]]; then
        RD_PORT="$(free_port)"
        redis-server --bind 127.0.0.1 --port "$RD_PORT" --save "" --appendonly no \
            --dir "$TMP" >"$TMP/redis.log" 2>&1 &
        PIDS+=("$!")
        REDIS_URL="redis://127.0.0.1:$RD_PORT"
        for _ in $(seq 1 100); do
            [[ "$(redis-cli -p "$RD_PORT" ping 2>/dev/null)" == PONG ]] && break
            sleep 0.1
        done
    fi
    if [[ "${BENCH_REDIS_BUDGET:-0}" == 1 ]]; then
        # Set while the first tollgate's runs are over; the Redis one loads it at start.
        "$TOLLGATE" budgets set --project bench --env prod --daily 1000000 --data-dir "$DATA" >/dev/null
        LABEL[tollgate_redis]="tollgate, limits and a budget in Redis (not hit)"
    fi
    printf '[redis]\nkey_prefix = "tollgate-bench-%s:"\ntimeout_ms = %s\n' "$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')" \
        "${BENCH_REDIS_TIMEOUT_MS:-50}" >"$TMP/redis.toml"
    BENCH_PROVIDER_KEY="$PROVIDER_KEY" "$TOLLGATE" serve \
        --config "$TMP/redis.toml" \
        --listen 127.0.0.1:0 \
        --upstream-url "http://127.0.0.1:$UP_PORT/v1" \
        --upstream-api-key env:BENCH_PROVIDER_KEY \
        --redis-url "$REDIS_URL" \
        --data-dir "$DATA" >"$TMP/tollgate-redis.out" 2>"$TMP/tollgate-redis.err" &
    RD_PID=$!
    PIDS+=("$RD_PID")
    RD_ADDR="$(wait_listening "$TMP/tollgate-redis.out")"
    smoke "$RD_ADDR"
    # A start under load may miss the first PING's deadline: the probe retries every second.
    rd_up=0
    for _ in $(seq 1 50); do
        curl -s "http://$RD_ADDR/metrics" | grep -q '^tollgate_redis_up 1' && { rd_up=1; break; }
        sleep 0.2
    done
    [[ "$rd_up" == 1 ]] || die "the Redis tollgate is not on Redis"
    measure tollgate_redis "$RD_ADDR" "$RD_PID"
    TARGETS+=(tollgate_redis)
    # p50/p99 of the admission round trip over all its runs, interpolated within the
    # histogram's buckets as Prometheus' histogram_quantile does.
    curl -s "http://$RD_ADDR/metrics" >"$TMP/redis-metrics.txt"
    cat >"$TMP/quantiles.py" <<'PY'
import sys
buckets, fallbacks, calls = [], 0, 0
for line in open(sys.argv[1]):
    if line.startswith("tollgate_redis_admission_seconds_bucket"):
        le = line.split('le="')[1].split('"')[0]
        buckets.append((float("inf") if le == "+Inf" else float(le), int(line.split()[-1])))
    elif line.startswith("tollgate_redis_fallbacks_total "):
        fallbacks = int(line.split()[-1])
    elif line.startswith("tollgate_redis_calls_total "):
        calls = int(line.split()[-1])
total = buckets[-1][1] if buckets else 0
def q(p):
    rank, lo, below = p * total, 0.0, 0
    for le, n in buckets:
        if n >= rank and n > below:
            hi = le if le != float("inf") else lo
            return lo + (hi - lo) * (rank - below) / (n - below)
        lo, below = le, n
    return 0.0
print(f"{q(0.5) * 1e6:.0f} {q(0.99) * 1e6:.0f} {total} {fallbacks} {calls}")
PY
    read -r RD_RT_P50 RD_RT_P99 RD_RT_N RD_FALLBACKS RD_CALLS < <(python3 "$TMP/quantiles.py" "$TMP/redis-metrics.txt")
    RD_COUNTED=$(( 1 + R[tollgate_redis,warm] + R[tollgate_redis,req] + R[tollgate_redis,rate_sent] ))
    stop_pid "$RD_PID"
fi
if [[ -n "$SIM_ADDR" ]]; then
    measure simulator "$SIM_ADDR" "$SIM_PID"
    TARGETS+=(simulator)
fi
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

# Usage records: stop tollgate gracefully (it flushes the queue), then count them.
TG_COUNTED=$(( 1 + R[tollgate,warm] + R[tollgate,req] + R[tollgate,rate_sent] ))
if [[ "$LIMITS" == 1 ]]; then
    TG_COUNTED=$(( TG_COUNTED + applied_probes + R[tollgate_limits,warm] + R[tollgate_limits,req] + R[tollgate_limits,rate_sent] ))
    TG_COUNTED=$(( TG_COUNTED + R[tollgate_off,warm] + R[tollgate_off,req] + R[tollgate_off,rate_sent] ))
    TG_COUNTED=$(( TG_COUNTED + ROUNDS_COUNTED ))
fi
TG_COUNTED=$(( TG_COUNTED + RD_COUNTED + PROXY_COUNTED ))
stop_pid "$TG_PID"
USAGE="$("$TOLLGATE" usage --by project --json --data-dir "$DATA" 2>/dev/null | python3 -c '
import json, sys
rows = json.load(sys.stdin)
print(sum(r["requests"] for r in rows), sum(r["errors"] for r in rows))' 2>/dev/null || echo "? ?")"
USAGE_RECORDS="${USAGE% *}"
USAGE_ERRORS="${USAGE#* }"
TG_LOG_LINES="$(wc -l <"$TMP/tollgate.err")"
# Its log lines by level (tracing's compact format: time, level, target, message); any
# WARN or ERROR line is shown in full in the report.
TG_LOG_LEVELS="$(awk '{ n[$2]++ } END { for (l in n) printf "%s%s %d", (c++ ? ", " : ""), l, n[l] }' "$TMP/tollgate.err")"
TG_LOG_PROBLEMS="$(grep -E '^[^ ]+ +(WARN|ERROR) ' "$TMP/tollgate.err" | head -20 || true)"

# ---------------------------------------------------------------- report
f1() { awk -v x="$1" 'BEGIN { printf "%.1f", x }'; }
f2() { awk -v x="$1" 'BEGIN { printf "%.2f", x }'; }
us_ms() { awk -v x="$1" 'BEGIN { printf "%.3f", x / 1000 }'; }
signed_ms() { awk -v x="$1" 'BEGIN { printf "%+.3f", x / 1000 }'; }

rps() { awk -v r="${R[$1,req]}" -v d="${R[$1,dur]}" 'BEGIN { printf "%.0f", r * 1e6 / d }'; }
cpu_per_1k() { # ticks requests → ms of CPU per 1000 requests
    awk -v t="$1" -v n="$2" -v hz="$CLK_TCK" 'BEGIN { if (n > 0) printf "%.1f", t * 1000 / hz / n * 1000; else print "—" }'
}

REPORT="$TMP/report.md"
{
    echo "## tollgate benchmark — $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Machine: $(nproc) CPU ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)), Linux $(uname -r)."
    echo "Load generator and servers share these CPUs. Load average before: $LOAD_BEFORE; after: $LOAD_AFTER."
    echo "Tools: $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), $(if [[ $LOADGEN == wrk ]]; then wrk -v 2>&1 | head -1 | cut -d' ' -f1-2; else oha --version; fi), fixed_rate (bench/fixed_rate.rs, $(rustc --version | cut -d' ' -f1-2)), $("$TOLLGATE" --version 2>/dev/null || echo tollgate)."
    echo
    echo "Fixed concurrency: $CONNECTIONS connections, $THREADS threads, ${DURATION}s after ${WARMUP}s warm-up. Fixed rate: $RATE req/s for ${RATE_DURATION}s after ${WARMUP}s warm-up, 8 connections."
    echo
    if [[ "$UPSTREAM_HEADER_SET" == openai ]]; then
        echo "The upstream's answers carry OpenAI's headers (six x-ratelimit-*, openai-version, openai-processing-ms, x-request-id; BENCH_UPSTREAM_HEADERS=openai)."
    else
        echo "The upstream's answers carry x-request-id only (BENCH_UPSTREAM_HEADERS=none)."
    fi
    echo
    echo "| target | req/s @c$CONNECTIONS | p50 ms | p99 ms | errors | p50 ms @${RATE}/s | p99 ms @${RATE}/s | added p50 ms | added p99 ms | CPU ms/1k req (c$CONNECTIONS) | CPU ms/1k req (${RATE}/s) | peak RSS MB |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for t in "${TARGETS[@]}"; do
        if [[ "$t" == direct || "$t" == simulator ]]; then added50="—"; added99="—"; else
            added50="$(signed_ms $(( R[$t,rp50] - R[direct,rp50] )))"
            added99="$(signed_ms $(( R[$t,rp99] - R[direct,rp99] )))"
        fi
        echo "| ${LABEL[$t]} | $(rps "$t") | $(us_ms "${R[$t,p50]}") | $(us_ms "${R[$t,p99]}") | $(( R[$t,err] + R[$t,rate_err] )) | $(us_ms "${R[$t,rp50]}") | $(us_ms "${R[$t,rp99]}") | $added50 | $added99 | $(cpu_per_1k "${R[$t,cpu_sat]}" "${R[$t,req]}") | $(cpu_per_1k "${R[$t,cpu_rate]}" "${R[$t,rate_sent]}") | $(f1 "$(awk -v k="${R[$t,rss]}" 'BEGIN { print k / 1024 }')") |"
    done
    echo
    ratio="$(awk -v a="$(rps tollgate)" -v b="$(rps nginx)" 'BEGIN { printf "%.2f", a / b }')"
    add99="$(( R[tollgate,rp99] - R[direct,rp99] ))"
    rss_mb="$(awk -v k="${R[tollgate,rss]}" 'BEGIN { printf "%.1f", k / 1024 }')"
    verdict() { if awk "BEGIN { exit !($1) }"; then echo met; else echo MISSED; fi; }
    echo "| target (issue 3) | goal | measured | |"
    echo "|---|---|---|---|"
    echo "| throughput vs nginx proxy | ≥ 0.80× | $ratio× | $(verdict "$ratio >= 0.8") |"
    echo "| added p99 at ${RATE} req/s | ≤ 0.500 ms | $(signed_ms "$add99") ms | $(verdict "$add99 <= 500") |"
    echo "| peak RSS | ≤ 64 MB | $rss_mb MB | $(verdict "$rss_mb <= 64") |"
    if ((PROXY_ROUNDS > 0)); then
        read -r px_ratio px_lo px_hi px_ng_cpu px_tg_cpu px_rounds rt_ng rt_tg rt_ng_lo rt_ng_hi rt_tg_lo rt_tg_hi < <(python3 - "$TMP/proxy_rounds.txt" "$TMP/rate_rounds.txt" "$CLK_TCK" <<'PY'
import statistics, sys
m = statistics.median
hz = int(sys.argv[3])
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
ng = [r for r in rows if r[0] == "nginx"]
tg = [r for r in rows if r[0] == "tollgate"]
rps = lambda r: int(r[1]) * 1e6 / int(r[2])
cpu = lambda r: int(r[3]) / hz * 1e6 / int(r[1])  # CPU µs per request
ratios = [rps(b) / rps(a) for a, b in zip(ng, tg)]
rate = [l.split() for l in open(sys.argv[2]) if l.strip()]
p99 = {n: [int(r[2]) for r in rate if r[0] == n] for n in ("direct", "nginx", "tollgate")}
added = {n: [(b - a) / 1000 for a, b in zip(p99["direct"], p99[n])] for n in ("nginx", "tollgate")}
print(f"{m(ratios):.2f} {min(ratios):.2f} {max(ratios):.2f} {m(cpu(r) for r in ng):.1f} {m(cpu(r) for r in tg):.1f} {len(ratios)} "
      f"{m(added['nginx']):+.3f} {m(added['tollgate']):+.3f} "
      f"{min(added['nginx']):+.3f} {max(added['nginx']):+.3f} {min(added['tollgate']):+.3f} {max(added['tollgate']):+.3f}")
PY
        )
        echo "| throughput vs nginx proxy: median over $px_rounds paired runs (nginx/tollgate, tollgate/nginx, …, ${PAIR_SECONDS}s each, c$CONNECTIONS) | ≥ 0.80× | ${px_ratio}× (pairs ${px_lo}–${px_hi}×; CPU ${px_ng_cpu} vs ${px_tg_cpu} µs per request) | $(verdict "$px_ratio >= 0.8") |"
        echo "| added p99 at ${RATE} req/s: median over $RATE_ROUNDS rounds (upstream, nginx proxy, tollgate, ${RATE_ROUND_SECONDS}s each, order rotating) | ≤ 0.500 ms | ${rt_tg} ms (rounds ${rt_tg_lo} to ${rt_tg_hi}); nginx proxy ${rt_ng} ms (${rt_ng_lo} to ${rt_ng_hi}) | $(verdict "$rt_tg <= 0.5") |"
    fi
    if [[ -n "$FL_ADDR" ]]; then
        fl_nginx="$(awk -v a="$(rps floor)" -v b="$(rps nginx)" 'BEGIN { printf "%.2f", a / b }')"
        fl_tg="$(awk -v a="$(rps tollgate)" -v b="$(rps floor)" 'BEGIN { printf "%.2f", a / b }')"
        fl_cpu="$(cpu_per_1k "${R[floor,cpu_sat]}" "${R[floor,req]}")"
        tg_cpu="$(cpu_per_1k "${R[tollgate,cpu_sat]}" "${R[tollgate,req]}")"
        echo "| (for reading the above) the stack floor vs nginx proxy; tollgate vs the floor | — | ${fl_nginx}×; ${fl_tg}× (CPU ${fl_cpu} vs ${tg_cpu} ms/1k) | — |"
    fi
    if [[ "$LIMITS" == 1 ]]; then
        # Off: the mean of the runs before and after limits on.
        lim_ratio="$(awk -v a="$(rps tollgate_limits)" -v b="$(rps tollgate)" -v c="$(rps tollgate_off)" 'BEGIN { printf "%.3f", a / ((b + c) / 2) }')"
        lim_p99="$(( R[tollgate_limits,rp99] - (R[tollgate,rp99] + R[tollgate_off,rp99]) / 2 ))"
        cpu_on="$(cpu_per_1k "${R[tollgate_limits,cpu_sat]}" "${R[tollgate_limits,req]}")"
        cpu_off="$(awk -v a="$(cpu_per_1k "${R[tollgate,cpu_sat]}" "${R[tollgate,req]}")" -v b="$(cpu_per_1k "${R[tollgate_off,cpu_sat]}" "${R[tollgate_off,req]}")" 'BEGIN { printf "%.1f", (a + b) / 2 }')"
        cpu_pct="$(awk -v a="$cpu_on" -v b="$cpu_off" 'BEGIN { printf "%+.1f", (a / b - 1) * 100 }')"
        echo
        echo "| target (issue 5) | goal | measured | |"
        echo "|---|---|---|---|"
        echo "| throughput, limits on (not hit) vs off (mean of the runs before and after) | within a few % | ${lim_ratio}× | $(verdict "$lim_ratio >= 0.95") (≥ 0.95×) |"
        echo "| CPU per request, limits on vs off (same) | within a few % | ${cpu_on} vs ${cpu_off} ms/1k (${cpu_pct} %) | $(verdict "$cpu_pct <= 5") (≤ +5 %) |"
        echo "| p99 at ${RATE} req/s, limits on vs off (same) | within a few % | $(signed_ms "$lim_p99") ms | — |"
        if ((LIMITS_ROUNDS > 0)); then
            read -r pr_ratio pr_lo pr_hi pr_off pr_on pr_pct pr_user pr_sys pr_p99 pr_p99_off pr_p99_on < <(python3 - "$TMP/rounds.txt" "$CLK_TCK" <<'PY'
import statistics, sys
hz = int(sys.argv[2])
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
off = [r for r in rows if r[0] == "off"]
on = [r for r in rows if r[0] == "on"]
rps = lambda r: int(r[1]) * 1e6 / int(r[2])
us = lambda r, i: int(r[i]) / hz * 1e6 / int(r[1])  # CPU µs per request
ratios = [rps(b) / rps(a) for a, b in zip(off, on)]
cpu = lambda r: us(r, 3) + us(r, 4)
m = statistics.median
off_cpu, on_cpu = m([cpu(r) for r in off]), m([cpu(r) for r in on])
print(f"{m(ratios):.3f} {min(ratios):.3f} {max(ratios):.3f} {off_cpu:.1f} {on_cpu:.1f} "
      f"{(on_cpu / off_cpu - 1) * 100:+.1f} "
      f"{m([us(b, 3) - us(a, 3) for a, b in zip(off, on)]):+.2f} "
      f"{m([us(b, 4) - us(a, 4) for a, b in zip(off, on)]):+.2f} "
      f"{m([int(b[5]) / int(a[5]) for a, b in zip(off, on)]):.3f} "
      f"{m([int(r[5]) for r in off]) / 1000:.3f} {m([int(r[5]) for r in on]) / 1000:.3f}")
PY
            )
            echo "| throughput, limits on vs off: median over $LIMITS_ROUNDS paired runs (off/on, on/off, …, ${LIMITS_SECONDS}s each, c$CONNECTIONS) | within a few % | ${pr_ratio}× (pairs ${pr_lo}–${pr_hi}×; $ROUNDS_ERRORS errors) | $(verdict "$pr_ratio >= 0.95") (≥ 0.95×) |"
            echo "| p99 at c$CONNECTIONS, same pairs: median of the pairs' ratios | within a few % | ${pr_p99}× (median p99 ${pr_p99_on} ms on, ${pr_p99_off} ms off) | $(verdict "$pr_p99 <= 1.05") (≤ 1.05×) |"
            echo "| CPU per request, same pairs (median) | within a few % | ${pr_on} vs ${pr_off} µs (${pr_pct} %); per pair, user space ${pr_user} µs, kernel ${pr_sys} µs (medians) | $(verdict "$pr_pct <= 5") (≤ +5 %) |"
        fi
    fi
    if [[ "$REDIS" == 1 ]]; then
        rd_ratio="$(awk -v a="$(rps tollgate_redis)" -v b="$(rps tollgate_limits)" 'BEGIN { printf "%.3f", a / b }')"
        echo "| throughput, limits in Redis vs in memory | — | ${rd_ratio}× | — |"
        echo "| p99 at ${RATE} req/s, limits in Redis vs in memory | — | $(signed_ms "$(( R[tollgate_redis,rp99] - R[tollgate_limits,rp99] ))") ms | — |"
        echo "| admission round trip to Redis (histogram, all ${RD_RT_N} admissions of its runs) | report p50/p99 | p50 $(us_ms "$RD_RT_P50") ms, p99 $(us_ms "$RD_RT_P99") ms | — |"
        echo
        rd_where="a redis-server started by the run on 127.0.0.1"
        [[ -n "${BENCH_REDIS_URL:-}" ]] && rd_where="the server at BENCH_REDIS_URL"
        echo "Redis: $rd_where; the Redis tollgate fell back to local counters ${RD_FALLBACKS} time(s) (must be 0 for the figures to count) and made ${RD_CALLS:-?} script calls in all (admissions, settlements, budget re-syncs) for ${RD_RT_N} admissions. The round trip is interpolated within the histogram's buckets (50, 100, 150, 200, 300, 400, 500, 750 µs, 1 ms, …)."
    fi
    echo
    ((PROXY_ROUNDS > 0)) && echo "Errors in the rounds (nginx proxy and tollgate, both kinds): $PROXY_ERRORS." && echo
    echo "tollgate usage records after a graceful shutdown: $USAGE_RECORDS ($USAGE_ERRORS with an error status); requests the load tools completed against tollgate (smoke test, warm-ups and measured runs): $TG_COUNTED — records may exceed it by up to $CONNECTIONS per $LOADGEN run (requests in flight when a run stops, recorded as client disconnects). tollgate wrote $TG_LOG_LINES lines to stderr (${TG_LOG_LEVELS:-none})."
    if [[ -n "$TG_LOG_PROBLEMS" ]]; then
        echo
        echo "tollgate's warnings and errors (first 20):"
        echo
        echo '```'
        printf '%s\n' "$TG_LOG_PROBLEMS"
        echo '```'
    fi
    echo
    echo "CPU is the server's own (nginx: master + workers; tollgate: the process), from /proc/PID/stat over the measured run; the load generator's and the upstream's CPU are not included. Peak RSS is VmHWM (summed over nginx's processes)."
} >"$REPORT"

mkdir -p "$OUT_DIR"
cp "$REPORT" "$OUT_DIR/latest.md"
cat "$REPORT"
log "written to $OUT_DIR/latest.md"
