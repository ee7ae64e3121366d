"""The backup bucket on Cloudflare R2, as landing-backup uses it.

landing-backup copies `landing/` to PREFIX (default `backup/materia/landing/`) and,
once a day, a state DB snapshot to `PREFIX.state/`; it never deletes nor overwrites. So
the bucket carries the rules it relies on:

- a lifecycle rule that expires the state snapshots after `snapshot_days`, and one that
  aborts multipart uploads a killed run left open;
- a lock rule that keeps every landing file (`PREFIX psd/…`) for good: nobody, the
  token included, can delete or overwrite one;
- an account token for landing-backup, scoped to this bucket's objects (read and write:
  R2 has no write-without-delete permission; the lock is what refuses deletes). Its
  S3 credentials are exported: the access key id is the token's id, the secret the
  SHA-256 of its value; put them in .env.prod.sops (scripts/secrets.sh edit prod).
"""
import hashlib
import json

import pulumi
import pulumi_cloudflare as cloudflare

# landing-backup's constants (tools/landing-backup/src: DEFAULT_PREFIX, STATE_DIR);
# test_r2.py checks they still match.
DEFAULT_PREFIX = "backup/materia/landing/"
STATE_DIR = ".state/"
# The landing files under the prefix (landing/psd/… as psd-extract lands them).
LANDING_DIR = "psd/"
# What landing-backup does with objects: list, head, get, put (multipart included).
TOKEN_PERMISSIONS = ["Workers R2 Storage Bucket Item Read", "Workers R2 Storage Bucket Item Write"]
DAY = 86_400


def declare(account_id: str, bucket: str, prefix: str = DEFAULT_PREFIX, snapshot_days: int = 30) -> dict:
    """Declare the resources; returns them by role."""
    if not prefix.endswith("/"):
        raise ValueError(f"prefix {prefix!r} must end with '/' as landing-backup's does")
    backup = cloudflare.R2Bucket("backup", account_id=account_id, name=bucket)
    lifecycle = cloudflare.R2BucketLifecycle(
        "backup-lifecycle",
        account_id=account_id,
        bucket_name=backup.name,
        rules=[
            {
                "id": "expire-state-snapshots",
                "enabled": True,
                "conditions": {"prefix": prefix + STATE_DIR},
                "delete_objects_transition": {"condition": {"type": "Age", "max_age": snapshot_days * DAY}},
            },
            {
                "id": "abort-stale-multipart-uploads",
                "enabled": True,
                "conditions": {"prefix": prefix},
                "abort_multipart_uploads_transition": {"condition": {"type": "Age", "max_age": 7 * DAY}},
            },
        ],
    )
    lock = cloudflare.R2BucketLock(
        "backup-lock",
        account_id=account_id,
        bucket_name=backup.name,
        rules=[{"id": "landing-files-kept", "enabled": True, "prefix": prefix + LANDING_DIR, "condition": {"type": "Indefinite"}}],
    )
    groups = cloudflare.get_account_api_token_permission_groups_list(account_id=account_id).results
    ids = {g.name: g.id for g in groups}
    missing = [p for p in TOKEN_PERMISSIONS if p not in ids]
    if missing:
        raise ValueError(f"the account has no permission group {missing}")
    token = cloudflare.AccountToken(
        "landing-backup",
        account_id=account_id,
        name=f"materia landing-backup ({bucket})",
        policies=[
            {
                "effect": "allow",
                "permission_groups": [{"id": ids[p]} for p in TOKEN_PERMISSIONS],
                "resources": json.dumps({f"com.cloudflare.edge.r2.bucket.{account_id}_default_{bucket}": "*"}),
            }
        ],
    )
    pulumi.export("bucket", backup.name)
    pulumi.export("R2_ENDPOINT", f"https://{account_id}.r2.cloudflarestorage.com")
    pulumi.export("BACKUP_TARGET", backup.name.apply(lambda n: f"s3://{n}/{prefix}"))
    pulumi.export("R2_ACCESS_KEY_ID", token.id)
    pulumi.export("R2_SECRET_ACCESS_KEY", pulumi.Output.secret(token.value.apply(lambda v: hashlib.sha256(v.encode()).hexdigest())))
    return {"bucket": backup, "lifecycle": lifecycle, "lock": lock, "token": token}
