"""r2.py under Pulumi's mocks (offline, no account): the resources, their names and
rules, and that they match what landing-backup writes.

    python -m unittest discover -s infra/pulumi      (tests/it/scripts.rs runs it)
"""
import hashlib
import json
import pathlib
import re
import unittest

import pulumi

ACCOUNT = "0123456789abcdef0123456789abcdef"
GROUPS = {
    "Workers R2 Storage Bucket Item Read": "g-item-read",
    "Workers R2 Storage Bucket Item Write": "g-item-write",
    "Workers R2 Storage Write": "g-storage-write",  # account-wide: must not be granted
}


class Mocks(pulumi.runtime.Mocks):
    def __init__(self):
        self.resources = {}

    def new_resource(self, args):
        outputs = dict(args.inputs)
        if args.typ == "cloudflare:index/accountToken:AccountToken":
            outputs["value"] = "token-value"
        self.resources[args.name] = (args.typ, args.inputs)
        return [f"{args.name}-id", outputs]

    def call(self, args):
        if args.token == "cloudflare:index/getAccountApiTokenPermissionGroupsList:getAccountApiTokenPermissionGroupsList":
            results = [{"id": i, "name": n, "category": "developer_platform", "is_selectable": True, "scopes": ["com.cloudflare.edge.r2.bucket"]} for n, i in GROUPS.items()]
            return {"account_id": args.args.get("accountId"), "results": results}
        raise NotImplementedError(args.token)


MOCKS = Mocks()
pulumi.runtime.set_mocks(MOCKS, preview=False)

import r2  # noqa: E402  (after the mocks, as Pulumi's testing guide does)


def landing_backup_constant(name):
    """A `const NAME: &str = "..."` of landing-backup, read from its source."""
    src_dir = pathlib.Path(__file__).resolve().parents[2] / "tools/landing-backup/src"
    src = "\n".join(p.read_text() for p in sorted(src_dir.glob("*.rs")))
    return re.search(rf'const {name}: &str = "([^"]*)";', src).group(1)


class R2(unittest.TestCase):
    @pulumi.runtime.test
    def test_the_bucket_its_rules_and_the_token_match_landing_backup(self):
        res = r2.declare(account_id=ACCOUNT, bucket="materia-backup", snapshot_days=30)
        prefix, state = landing_backup_constant("DEFAULT_PREFIX"), landing_backup_constant("STATE_DIR")
        self.assertEqual((r2.DEFAULT_PREFIX, r2.STATE_DIR), (prefix, state), "r2.py follows landing-backup")

        def check(_):
            typ, bucket = MOCKS.resources["backup"]
            self.assertEqual((typ, bucket["name"], bucket["accountId"]), ("cloudflare:index/r2Bucket:R2Bucket", "materia-backup", ACCOUNT))
            _, lifecycle = MOCKS.resources["backup-lifecycle"]
            rules = {r["id"]: r for r in lifecycle["rules"]}
            expire = rules["expire-state-snapshots"]
            self.assertEqual(expire["conditions"]["prefix"], prefix + state)  # what landing-backup writes
            self.assertEqual(expire["deleteObjectsTransition"]["condition"], {"type": "Age", "maxAge": 30 * 86400})
            self.assertEqual(rules["abort-stale-multipart-uploads"]["conditions"]["prefix"], prefix)
            # Landing files are kept for good; the snapshots, outside the locked prefix, can expire.
            _, lock = MOCKS.resources["backup-lock"]
            [keep] = lock["rules"]
            self.assertEqual((keep["prefix"], keep["condition"]["type"], keep["enabled"]), (prefix + "psd/", "Indefinite", True))
            self.assertFalse((prefix + state).startswith(keep["prefix"]))
            typ, token = MOCKS.resources["landing-backup"]
            self.assertEqual(typ, "cloudflare:index/accountToken:AccountToken")
            [policy] = token["policies"]
            self.assertEqual(policy["effect"], "allow")
            self.assertEqual(sorted(g["id"] for g in policy["permissionGroups"]), ["g-item-read", "g-item-write"])
            self.assertEqual(json.loads(policy["resources"]), {f"com.cloudflare.edge.r2.bucket.{ACCOUNT}_default_materia-backup": "*"})

        return pulumi.Output.all(res["bucket"].name, res["lifecycle"].id, res["lock"].id, res["token"].id).apply(check)

    @pulumi.runtime.test
    def test_the_exported_credentials_are_r2s_s3_form(self):
        res = r2.declare(account_id=ACCOUNT, bucket="other-bucket")

        def check(args):
            token_id, secret = args
            self.assertEqual(token_id, "landing-backup-id")
            self.assertEqual(secret, hashlib.sha256(b"token-value").hexdigest())

        return pulumi.Output.all(res["token"].id, res["token"].value.apply(lambda v: hashlib.sha256(v.encode()).hexdigest())).apply(check)

    def test_a_prefix_without_its_slash_is_refused(self):
        with self.assertRaises(ValueError):
            r2.declare(account_id=ACCOUNT, bucket="b", prefix="backup/materia/landing")


if __name__ == "__main__":
    unittest.main()
