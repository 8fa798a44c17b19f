#!/usr/bin/env bash
# Exchanges this job's GitHub OIDC token for credentials of role $1 and
# appends them to $GITHUB_ENV (masked), for the steps after this one. Needs
# `permissions: id-token: write` on the job; uses only curl, jq and the AWS
# CLI of GitHub's runners (no third-party action).
set -euo pipefail
role=${1:?role ARN}
token=$(curl -sfS -H "Authorization: bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN" \
  "$ACTIONS_ID_TOKEN_REQUEST_URL&audience=sts.amazonaws.com" | jq -r .value)
read -r key secret session < <(
  aws sts assume-role-with-web-identity --role-arn "$role" \
    --role-session-name "terraform-${GITHUB_RUN_ID}" --web-identity-token "$token" \
    --query 'Credentials.[AccessKeyId,SecretAccessKey,SessionToken]' --output text)
for value in "$key" "$secret" "$session"; do echo "::add-mask::$value"; done
{
  echo "AWS_ACCESS_KEY_ID=$key"
  echo "AWS_SECRET_ACCESS_KEY=$secret"
  echo "AWS_SESSION_TOKEN=$session"
} >> "$GITHUB_ENV"
