#!/usr/bin/env bash
# Start Triton on the longdoc model repository, locked down for production.
#
#   * the model set is fixed at start-up (--model-control-mode none): nobody can load,
#     unload or swap a model through the API of a running server;
#   * the admin APIs (model-repository, shared-memory, logging, trace) need the header
#     `admin-key: <key>` (HTTP) or `triton-grpc-protocol-admin-key: <key>` (gRPC metadata);
#   * the key comes from LONGDOC_ADMIN_KEY or from a file named by LONGDOC_ADMIN_KEY_FILE
#     (a mounted secret). There is no default: without a key the container does not start.
#
# Environment (all optional except the key):
#   LONGDOC_ADMIN_KEY / LONGDOC_ADMIN_KEY_FILE  the admin key, >= 16 chars of [A-Za-z0-9._~+/=-]
#   LONGDOC_MODEL_REPOSITORY     model repository (default /models)
#   LONGDOC_HTTP_PORT, LONGDOC_GRPC_PORT, LONGDOC_METRICS_PORT   (default 8000, 8001, 8002)
#   LONGDOC_RESPONSE_CACHE_MB    size of Triton's local response cache in MiB (default 0: off;
#                                models must also say `response_cache { enable: true }`)
#   LONGDOC_EXTRA_RESTRICTED_APIS  more APIs behind the key, e.g. "model-config,statistics"
#   LONGDOC_LOG_VERBOSE          Triton's --log-verbose level (default 0)
#   LONGDOC_EXIT_TIMEOUT_S       seconds Triton waits for in-flight requests on SIGTERM (30)
#   LONGDOC_ALLOCATOR            auto (default: jemalloc when the image has it), jemalloc, glibc.
#                                glibc keeps the high-water mark of huge requests (gRPC
#                                buffers, tokenizer heap); jemalloc gives it back (RELIABILITY.md)
#   LONGDOC_JEMALLOC             path to libjemalloc.so when not in /usr/lib/<arch>-linux-gnu
# Extra arguments are passed on to tritonserver, except those that would undo the lock-down.
set -euo pipefail

die() {
    echo "longdoc-entrypoint: $*" >&2
    exit 64
}

# --- the admin key ----------------------------------------------------------------------
key="${LONGDOC_ADMIN_KEY:-}"
if [[ -n "${LONGDOC_ADMIN_KEY_FILE:-}" ]]; then
    [[ -z "$key" ]] || die "set LONGDOC_ADMIN_KEY or LONGDOC_ADMIN_KEY_FILE, not both"
    [[ -f "$LONGDOC_ADMIN_KEY_FILE" && -r "$LONGDOC_ADMIN_KEY_FILE" ]] \
        || die "LONGDOC_ADMIN_KEY_FILE=$LONGDOC_ADMIN_KEY_FILE is not a readable file"
    key="$(<"$LONGDOC_ADMIN_KEY_FILE")"   # $(<...) drops trailing newlines
fi
if [[ -z "$key" ]]; then
    die "no admin key: set LONGDOC_ADMIN_KEY or mount a secret and set LONGDOC_ADMIN_KEY_FILE" \
        "(e.g. openssl rand -hex 32). Refusing to start a server with open admin APIs."
fi
if ((${#key} < 16)); then
    die "the admin key is too short (${#key} characters, need at least 16)"
fi
if [[ ! "$key" =~ ^[A-Za-z0-9._~+/=-]+$ ]]; then
    die "the admin key may contain only A-Z a-z 0-9 and . _ ~ + / = - (a hex or base64 token)"
fi
# The Python-backend stubs inherit this environment: keep the key out of it.
unset LONGDOC_ADMIN_KEY LONGDOC_ADMIN_KEY_FILE

# --- settings ---------------------------------------------------------------------------
repo="${LONGDOC_MODEL_REPOSITORY:-/models}"
http_port="${LONGDOC_HTTP_PORT:-8000}"
grpc_port="${LONGDOC_GRPC_PORT:-8001}"
metrics_port="${LONGDOC_METRICS_PORT:-8002}"
cache_mb="${LONGDOC_RESPONSE_CACHE_MB:-0}"
log_verbose="${LONGDOC_LOG_VERBOSE:-0}"
exit_timeout="${LONGDOC_EXIT_TIMEOUT_S:-30}"

for var in http_port grpc_port metrics_port cache_mb log_verbose exit_timeout; do
    [[ "${!var}" =~ ^[0-9]{1,9}$ ]] || die "$var must be a non-negative integer, got '${!var}'"
    printf -v "$var" '%d' "$((10#${!var}))"   # "08" is eight, not a bad octal number
done
[[ -d "$repo" ]] || die "model repository $repo does not exist (mount it or build the" \
    "serve-bundled target)"

# --- allocator: jemalloc gives memory back after huge requests (Triton's release notes
# recommend it; NGC's tritonserver images ship it). The stubs inherit LD_PRELOAD.
allocator="${LONGDOC_ALLOCATOR:-auto}"
case "$allocator" in
    auto | jemalloc | glibc) ;;
    *) die "LONGDOC_ALLOCATOR must be auto, jemalloc or glibc, got '$allocator'" ;;
esac
if [[ "$allocator" != glibc ]]; then
    jemalloc=""
    arch="$(uname -m)"
    for lib in "${LONGDOC_JEMALLOC:-}" "/usr/lib/$arch-linux-gnu/libjemalloc.so.2" \
        "/usr/lib/$arch-linux-gnu/libjemalloc.so" /usr/lib64/libjemalloc.so.2 \
        /usr/local/lib/libjemalloc.so.2; do
        if [[ -n "$lib" && -f "$lib" ]]; then
            jemalloc="$lib"
            break
        fi
    done
    if [[ -n "$jemalloc" ]]; then
        export LD_PRELOAD="$jemalloc${LD_PRELOAD:+:$LD_PRELOAD}"
        export MALLOC_CONF="${MALLOC_CONF:-background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0}"
        allocator=jemalloc
    elif [[ "$allocator" == jemalloc ]]; then
        die "LONGDOC_ALLOCATOR=jemalloc but no libjemalloc found (set LONGDOC_JEMALLOC)"
    else
        allocator=glibc
    fi
fi

restricted="model-repository,shared-memory,logging,trace"
if [[ -n "${LONGDOC_EXTRA_RESTRICTED_APIS:-}" ]]; then
    [[ "$LONGDOC_EXTRA_RESTRICTED_APIS" =~ ^[a-z-]+(,[a-z-]+)*$ ]] \
        || die "LONGDOC_EXTRA_RESTRICTED_APIS must be a comma-separated list of API names"
    restricted="$restricted,$LONGDOC_EXTRA_RESTRICTED_APIS"
fi

# --- refuse arguments that would undo the lock-down -------------------------------------
for arg in "$@"; do
    case "$arg" in
        --model-control-mode* | --load-model* | --repository-poll-secs* | \
            --http-restricted-api* | --grpc-restricted-protocol* | \
            --model-repository* | --model-store*)
            die "argument '${arg%%=*}' is fixed by this image and cannot be overridden"
            ;;
    esac
done

args=(
    "--model-repository=$repo"
    --model-control-mode=none
    --strict-readiness=true
    --exit-on-error=true
    "--exit-timeout-secs=$exit_timeout"
    --http-address=0.0.0.0 "--http-port=$http_port"
    --grpc-address=0.0.0.0 "--grpc-port=$grpc_port"
    --metrics-address=0.0.0.0 "--metrics-port=$metrics_port"
    --allow-metrics=true --allow-gpu-metrics=true --allow-cpu-metrics=true
    "--log-verbose=$log_verbose"
    # gRPC request objects are pooled for reuse with the capacity of the largest message
    # they held (8 x a 50 MB document stayed allocated); per-request objects cost nothing
    # next to a document (RELIABILITY.md)
    --grpc-infer-allocation-pool-size=0
)
if ((cache_mb > 0)); then
    args+=("--cache-config=local,size=$((cache_mb * 1024 * 1024))")
fi
# Logged before the key is added, so the key never reaches the logs.
echo "longdoc-entrypoint: tritonserver ${args[*]} $* (restricted: $restricted;" \
    "malloc: $allocator)" >&2
args+=(
    "--http-restricted-api=$restricted:admin-key=$key"
    "--grpc-restricted-protocol=$restricted:admin-key=$key"
)

# The NGC image's own entrypoint checks the driver and enables CUDA forward compatibility
# where needed, then execs its arguments; keep it in the chain when it is there.
if [[ -x /opt/nvidia/nvidia_entrypoint.sh ]]; then
    exec /opt/nvidia/nvidia_entrypoint.sh tritonserver "${args[@]}" "$@"
fi
exec tritonserver "${args[@]}" "$@"
