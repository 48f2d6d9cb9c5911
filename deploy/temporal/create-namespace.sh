#!/bin/sh
# Once the server answers: the namespace (with its retention) and the enrollment search
# attributes that the workflows upsert and the Temporal UI filters on. Idempotent.
set -eu
: "${TEMPORAL_ADDRESS:=temporal:7233}" "${NAMESPACE:=default}" "${RETENTION:=30d}"

echo "waiting for Temporal at $TEMPORAL_ADDRESS"
attempt=0
until temporal operator cluster health --address "$TEMPORAL_ADDRESS"; do
  attempt=$((attempt + 1))
  [ "$attempt" -ge 60 ] && { echo "Temporal did not become healthy"; exit 1; }
  sleep 2
done

temporal operator namespace describe -n "$NAMESPACE" --address "$TEMPORAL_ADDRESS" \
  || temporal operator namespace create -n "$NAMESPACE" --retention "$RETENTION" --address "$TEMPORAL_ADDRESS"

# Keep in step with core/contracts.py SEARCH_ATTRIBUTES.
for attribute in EnrollmentEmail:Keyword EnrollmentTrack:Keyword EnrollmentStatus:Keyword \
                 NeedsAttention:Bool FailedTool:KeywordList; do
  name=${attribute%%:*}
  type=${attribute#*:}
  temporal operator search-attribute create --namespace "$NAMESPACE" --address "$TEMPORAL_ADDRESS" \
    --name "$name" --type "$type" --yes \
    || echo "search attribute $name exists"
done
temporal operator search-attribute list --namespace "$NAMESPACE" --address "$TEMPORAL_ADDRESS"
