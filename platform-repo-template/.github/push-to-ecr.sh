#!/usr/bin/env bash
# Pushes local image $1 to ECR repository $2 as tag $3 with the images role
# ($IMAGES_ROLE_ARN, terraform's output images_role_arn), exchanging this
# job's GitHub OIDC token for its credentials (the job needs `permissions:
# id-token: write`; only curl, jq, the AWS CLI and docker of GitHub's
# runners). ECR tags are immutable: a tag already there is left alone.
set -euo pipefail
image=${1:?local image} repository=${2:?ECR repository} tag=${3:?tag}
token=$(curl -sfS -H "Authorization: bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN" \
  "$ACTIONS_ID_TOKEN_REQUEST_URL&audience=sts.amazonaws.com" | jq -r .value)
read -r AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN < <(
  aws sts assume-role-with-web-identity --role-arn "$IMAGES_ROLE_ARN" \
    --role-session-name "images-${GITHUB_RUN_ID}" --web-identity-token "$token" \
    --query 'Credentials.[AccessKeyId,SecretAccessKey,SessionToken]' --output text)
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN
registry="$(aws sts get-caller-identity --query Account --output text).dkr.ecr.${AWS_REGION}.amazonaws.com"
if aws ecr describe-images --repository-name "$repository" --image-ids "imageTag=$tag" >/dev/null 2>&1; then
  echo "$repository:$tag is in ECR already (tags are immutable)"
  exit 0
fi
aws ecr get-login-password | docker login --username AWS --password-stdin "$registry"
docker tag "$image" "$registry/$repository:$tag"
docker push "$registry/$repository:$tag"
