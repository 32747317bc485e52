#!/bin/sh
# The train image's entry point: a stack on MLFLOW_TRACKING_URI when it is set,
# else the local one under /app/.qaforge, then one pipeline run of $CONFIG.
set -eu
if [ -n "${MLFLOW_TRACKING_URI:-}" ]; then
  qaforge setup -c "$CONFIG" --tracking-uri "$MLFLOW_TRACKING_URI"
else
  qaforge setup -c "$CONFIG"
fi
exec zenml pipeline run pipelines.domain_qa.domain_qa_pipeline -c "$CONFIG"
