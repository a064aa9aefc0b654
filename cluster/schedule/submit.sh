#!/usr/bin/env bash
# Scheduled reranking with plain cron: submit one rerank run of this checkout
# over a growing input prefix. Each run reranks only the shards that are new
# (or changed) since the last: the output's ledger remembers what is done.
#
#   RAY_ADDRESS=http://HEAD:8265 MMR5_INPUT=s3://bucket/candidates/ MMR5_OUTPUT=s3://bucket/reranked/ \
#       cluster/schedule/submit.sh
#
# Optional: MMR5_CONFIG (default cluster/job.yaml), MMR5_ARGS (more rerank flags),
# MMR5_LOCK (default /tmp/mmr5-batch.lock). Exit status: the job's (`ray job
# submit` waits for it): 0 done, 1 the job failed (its last log line says
# why); 75 an earlier run still holds the lock, so this slot did nothing.
# The crontab line beside this file runs it every hour.
set -euo pipefail
: "${RAY_ADDRESS:?set RAY_ADDRESS to the Ray dashboard, e.g. http://HEAD:8265}"
: "${MMR5_INPUT:?set MMR5_INPUT to the input prefix}"
: "${MMR5_OUTPUT:?set MMR5_OUTPUT to the output prefix}"
cd "$(dirname "$0")/../.."

# Runs into one output never overlap (concurrent runs into one prefix are unsupported).
exec 9>"${MMR5_LOCK:-/tmp/mmr5-batch.lock}"
if ! flock -n 9; then
    echo "mmr5-batch: an earlier run still holds ${MMR5_LOCK:-/tmp/mmr5-batch.lock}; this slot skips" >&2
    exit 75
fi

# shellcheck disable=SC2086 # MMR5_ARGS holds several flags
ray job submit --address "$RAY_ADDRESS" \
    --submission-id "mmr5-rerank-$(date -u +%Y%m%dT%H%M%SZ)-$$" \
    --working-dir . --runtime-env cluster/runtime_env.yaml \
    -- python jobs/rerank.py --config "${MMR5_CONFIG:-cluster/job.yaml}" \
    --input "$MMR5_INPUT" --output "$MMR5_OUTPUT" ${MMR5_ARGS:-}
