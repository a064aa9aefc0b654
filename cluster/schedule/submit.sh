#!/usr/bin/env bash
# Scheduled reranking with plain cron: submit one rerank run of this checkout
# over a growing input prefix. Each run reranks only the shards that are new
# (or changed) since the last: the output's ledger remembers what is done.
#
#   RAY_ADDRESS=http://HEAD:8265 MMR5_INPUT=s3://bucket/candidates/ MMR5_OUTPUT=s3://bucket/reranked/ \
#       cluster/schedule/submit.sh
#
# Optional: MMR5_CONFIG (default cluster/job.yaml), MMR5_ARGS (more rerank flags),
# MMR5_LOCK (default /tmp/mmr5-batch.lock), MMR5_SUBMIT_WAIT (default 300: seconds
# to keep retrying a head that answers "try again later", e.g. just restarted).
# Token authentication (on by default for clusters Ray starts): the head's token
# in RAY_AUTH_TOKEN, in the file RAY_AUTH_TOKEN_PATH names, or in ~/.ray/auth_token
# (copy the head's); RAY_AUTH_MODE=token is then set here unless already set.
# Exit status: 0 the job succeeded, 1 it failed (its last log line says why) or
# the head never accepted it; 75 an earlier run still holds the lock, so this
# slot did nothing. The crontab line beside this file runs it every hour.
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

if [ -z "${RAY_AUTH_MODE:-}" ] && { [ -n "${RAY_AUTH_TOKEN:-}" ] || [ -n "${RAY_AUTH_TOKEN_PATH:-}" ] || [ -f "$HOME/.ray/auth_token" ]; }; then
    export RAY_AUTH_MODE=token
fi

# Submit without waiting, retrying while the head says it cannot take a job yet
# (its job agent registers a while after the dashboard answers), then follow it.
id="mmr5-rerank-$(date -u +%Y%m%dT%H%M%SZ)-$$"
deadline=$(($(date +%s) + ${MMR5_SUBMIT_WAIT:-300}))
pause=2
while true; do
    # shellcheck disable=SC2086 # MMR5_ARGS holds several flags
    if answer=$(ray job submit --address "$RAY_ADDRESS" --submission-id "$id" --no-wait \
        --working-dir . --runtime-env cluster/runtime_env.yaml \
        -- python jobs/rerank.py --config "${MMR5_CONFIG:-cluster/job.yaml}" \
        --input "$MMR5_INPUT" --output "$MMR5_OUTPUT" ${MMR5_ARGS:-} 2>&1); then
        echo "$answer"
        break
    fi
    if ! grep -qiE "try again later|no available agent" <<<"$answer" || [ "$(date +%s)" -ge "$deadline" ]; then
        echo "$answer" >&2
        echo "mmr5-batch: the Ray head at $RAY_ADDRESS did not accept the job (see above)" >&2
        exit 1
    fi
    echo "mmr5-batch: the head cannot take a job yet; retrying in ${pause}s" >&2
    sleep "$pause"
    pause=$((pause < 30 ? pause * 2 : 30))
done
ray job logs --address "$RAY_ADDRESS" --follow "$id"
status=$(ray job status --address "$RAY_ADDRESS" "$id" 2>&1)
echo "$status"
# `ray job status` says "Job 'ID' succeeded" (older releases: "Status for job 'ID': SUCCEEDED").
grep -qiE "'$id':? succeeded" <<<"$status"
