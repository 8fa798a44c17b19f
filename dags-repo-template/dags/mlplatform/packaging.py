"""Turn a registered MLflow model version into the artifact a SageMaker
endpoint serves: `model.tar.gz` with `MLmodel` at its root (what MLflow's
SageMaker serving container unpacks into /opt/ml/model), at the one S3 key
the promotion PR names (`promotion.model_data_url`).

Safe to retry: a registered version never changes, so an object already at
the key that was packaged from the same version is left as it is; and the
archive is built the same way every time (sorted entries, fixed times and
owners), so a retry after a lost answer writes the same bytes. S3 writes an
object whole or not at all, so nothing half-written is ever served.
"""

import gzip
import hashlib
import io
import os
import tarfile
import tempfile
from pathlib import Path

from mlplatform.promotion import model_data_url

# Object metadata saying what the archive was packaged from.
SOURCE = "mlflow-model-version"
DIGEST = "sha256"


class PackagingError(RuntimeError):
    pass


def archive(model_dir: Path) -> bytes:
    """model_dir's files as a gzipped tar, with MLmodel at the root."""
    if not (model_dir / "MLmodel").is_file():
        raise PackagingError(f"{model_dir} has no MLmodel: not an MLflow model")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in model_dir.rglob("*")):
            rel = path.relative_to(model_dir).as_posix()
            info = tar.gettarinfo(str(path), arcname=rel)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            info.mode = 0o755 if path.is_dir() else 0o644
            if path.is_file():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return gzip.compress(raw.getvalue(), mtime=0)


def package(model_name: str, version: str, bucket: str, s3=None) -> dict:
    """Write version `version` of `model_name` to its S3 key, unless it is
    there already; returns the URL and whether this call wrote it."""
    import boto3
    import mlflow
    from botocore.exceptions import ClientError

    url = model_data_url(bucket, model_name, version)
    key = url.removeprefix(f"s3://{bucket}/")
    source = f"{model_name}/{version}"
    s3 = s3 or boto3.client("s3")
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
        if head.get("Metadata", {}).get(SOURCE) == source:
            return {"model_data": url, "written": False, DIGEST: head["Metadata"].get(DIGEST)}
        # Something else at the key (hand-made, or an older layout): the
        # registered version is the truth, so replace it.
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
            raise PackagingError(f"HeadObject s3://{bucket}/{key}: {e}") from None
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{model_name}/{version}", dst_path=os.path.join(tmp, "model")
        )
        body = archive(Path(local))
    digest = hashlib.sha256(body).hexdigest()
    s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=body,
        ContentType="application/gzip",
        Metadata={SOURCE: source, DIGEST: digest},
    )
    return {"model_data": url, "written": True, DIGEST: digest}
