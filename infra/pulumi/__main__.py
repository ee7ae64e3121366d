"""Materia's R2 resources (`pulumi up` from infra/pulumi; see README, "R2 as code")."""
import pulumi

import r2

cfg = pulumi.Config()
r2.declare(
    account_id=cfg.require("accountId"),
    bucket=cfg.get("bucket") or "materia-backup",
    prefix=cfg.get("prefix") or r2.DEFAULT_PREFIX,
    snapshot_days=cfg.get_int("snapshotDays") or 30,
)
