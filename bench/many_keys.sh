#!/usr/bin/env bash
# Two tollgate binaries side by side under load spread over many keys: what a usage
# record costs the store when a deployment has many keys (bench/run.sh uses one).
#
#   bench/many_keys.sh OLD_BINARY NEW_BINARY
#
# Each binary serves with a fresh data directory and BENCH_KEYS keys (default 100) of
# one project, in front of one nginx upstream that answers a fixed Chat Completions
# body with OpenAI's headers. `wrk -t2 -c32` calls both in BENCH_ROUNDS rounds (default
# 3) of A B B A, BENCH_SECONDS each (default 6), every request with the next key in
# turn. Per run it prints requests/s, CPU per request (user and kernel, from
# /proc/PID/stat) and the CPU per request of the SQLite worker threads (the usage
# records' writes). Everything runs on 127.0.0.1 on ports chosen at run time; every
# process started is stopped on exit. Needs nginx and wrk (Debian: nginx-light, wrk).
set -euo pipefail

OLD="${1:?usage: bench/many_keys.sh OLD_BINARY NEW_BINARY}"
NEW="${2:?usage: bench/many_keys.sh OLD_BINARY NEW_BINARY}"
KEYS="${BENCH_KEYS:-100}"
ROUNDS="${BENCH_ROUNDS:-3}"
SECONDS_EACH="${BENCH_SECONDS:-6}"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
[[ -x "$NGINX" ]] && command -v wrk >/dev/null || { echo "needs nginx and wrk" >&2; exit 1; }

TMP="$(mktemp -d)"
chmod 755 "$TMP"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

UP_PORT="$(free_port)"
USER_LINE=""
[[ "$(id -u)" -eq 0 ]] && USER_LINE="user nobody nogroup;"
mkdir -p "$TMP/nginx"
cat >"$TMP/nginx/nginx.conf" <<EOF
$USER_LINE
worker_processes auto;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/cb; proxy_temp_path $TMP/nginx/px;
    fastcgi_temp_path $TMP/nginx/fc; uwsgi_temp_path $TMP/nginx/uw; scgi_temp_path $TMP/nginx/sc;
    keepalive_requests 1000000; keepalive_timeout 75s;
    server {
        listen 127.0.0.1:$UP_PORT;
        location = /v1/chat/completions {
            default_type application/json;
            add_header x-request-id req_upstream_bench;
            add_header openai-version 2020-10-01; add_header openai-processing-ms 81;
            add_header x-ratelimit-limit-requests 30000; add_header x-ratelimit-limit-tokens 150000000;
            add_header x-ratelimit-remaining-requests 29999; add_header x-ratelimit-remaining-tokens 149999979;
            add_header x-ratelimit-reset-requests 2ms; add_header x-ratelimit-reset-tokens 0s;
            return 200 '{"id":"chatcmpl-bench000000000000000000001","object":"chat.completion","created":1735689600,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":21,"completion_tokens":9,"total_tokens":30},"service_tier":"default","system_fingerprint":"fp_bench00001"}';
        }
    }
}
EOF
"$NGINX" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -g 'daemon off;' 2>>"$TMP/nginx/error.log" &
PIDS+=($!)

# start NAME BINARY: a tollgate with KEYS keys; sets PORT_<NAME>, PID_<NAME>.
start() {
    local name="$1" bin="$2" dir="$TMP/$1" port i
    mkdir -p "$dir/data"
    : >"$dir/keys"
    for i in $(seq "$KEYS"); do
        "$bin" keys create --project bench --env prod --name "k$i" --json --data-dir "$dir/data" |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])' >>"$dir/keys"
    done
    port="$(free_port)"
    BENCH_PROVIDER_KEY="sk-bench-provider" "$bin" serve --listen "127.0.0.1:$port" \
        --upstream-url "http://127.0.0.1:$UP_PORT/v1" --upstream-api-key env:BENCH_PROVIDER_KEY \
        --data-dir "$dir/data" >"$dir/out" 2>"$dir/err" &
    PIDS+=($!)
    printf -v "PID_$name" '%s' "$!"
    printf -v "PORT_$name" '%s' "$port"
    for i in $(seq 200); do grep -q '^listening on' "$dir/out" 2>/dev/null && return 0; sleep 0.1; done
    echo "$name did not start: $(cat "$dir/err")" >&2
    exit 1
}
start old "$OLD"
start new "$NEW"

cat >"$TMP/keys.lua" <<'EOF'
local keys = {}
for line in io.lines(os.getenv("KEYFILE")) do keys[#keys + 1] = line end
local i = 0
local body = '{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello in five words."}],"max_tokens":64}'
request = function()
  i = i + 1
  return wrk.format("POST", "/v1/chat/completions",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. keys[(i % #keys) + 1]}, body)
end
EOF

tick="$(getconf CLK_TCK)"
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
split() { awk '{print $14, $15}' "/proc/$1/stat"; }
sqlite_cpu() { # pid → ticks of its SQLite worker threads
    local t total=0
    for t in /proc/"$1"/task/*; do
        if grep -q '^sqlx-sqlite' "$t/comm" 2>/dev/null; then
            total=$((total + $(awk '{print $14 + $15}' "$t/stat")))
        fi
    done
    echo "$total"
}

measure() { # name
    local name="$1" pid port out n rps u0 s0 u1 s1 q0 q1
    pid="PID_$name"; pid="${!pid}"
    port="PORT_$name"; port="${!port}"
    read -r u0 s0 <<<"$(split "$pid")"
    q0="$(sqlite_cpu "$pid")"
    out="$(KEYFILE="$TMP/$name/keys" wrk -t2 -c32 -d"${SECONDS_EACH}s" -s "$TMP/keys.lua" \
        "http://127.0.0.1:$port/v1/chat/completions")"
    read -r u1 s1 <<<"$(split "$pid")"
    q1="$(sqlite_cpu "$pid")"
    if grep -qi 'non-2xx' <<<"$out"; then echo "$name: errors: $out" >&2; exit 1; fi
    n="$(awk '/requests in/ {print $1}' <<<"$out")"
    rps="$(awk '/Requests\/sec/ {print $2}' <<<"$out")"
    awk -v name="$name" -v n="$n" -v r="$rps" -v u=$((u1 - u0)) -v s=$((s1 - s0)) \
        -v q=$((q1 - q0)) -v t="$tick" 'BEGIN {
        printf "%-4s %10.0f req/s  CPU %6.1f us/request (user %5.1f, kernel %5.1f)  SQLite worker %5.2f us/request\n",
            name, r, (u + s) / t * 1e6 / n, u / t * 1e6 / n, s / t * 1e6 / n, q / t * 1e6 / n }'
}

echo "$KEYS keys, $ROUNDS rounds of A B B A, ${SECONDS_EACH}s each; old: $OLD, new: $NEW"
for round in $(seq "$ROUNDS"); do
    for name in old new new old; do measure "$name"; done
done
