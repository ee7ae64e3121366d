#!/usr/bin/env python3
"""Write the SQLMesh project equivalent to lake-transform's models.

usage: sqlmesh_project.py MODELS_DIR OUT_DIR LANDING_DIR DB_FILE

The model files are SQLMesh syntax already; the only differences are lake-transform's
own: LANDING_INGEST and INCREMENTAL_BY_PARTITION (a merge of only the rows a run
loaded) become FULL, as a SQLMesh user would write them (re-reading every file on each
build) and lake-transform's session_properties (a DuckDB setting for its merges) and
partitions_from are dropped; @landing_files becomes a glob of every landed file, @run_id
0, @is_incremental FALSE (raw.psd's list of the files becomes glob()'s, with no landing order), and @this_model (read only by the merge branch, dead in a
build) an empty relation of the model's declared columns.
"""
import os
import re
import shutil
import sys


def main():
    models, out, landing, db = sys.argv[1:5]
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.join(out, "models"))
    os.makedirs(os.path.join(out, "audits"))
    glob = os.path.join(os.path.abspath(landing), "psd/*/*/*.csv.gzip")
    for name in sorted(os.listdir(models)):
        if not name.endswith(".sql"):
            continue
        sql = open(os.path.join(models, name)).read()
        sql = re.sub(r"kind LANDING_INGEST \(pattern '[^']*'\)", "kind FULL", sql)
        sql = sql.replace("kind INCREMENTAL_BY_PARTITION", "kind FULL")
        sql = re.sub(r"\n\s*partitioned_by (\([^)]*\)|\w+),", "", sql)
        sql = re.sub(r"(\n\s*--[^\n]*)*\n\s*partitions_from [\w.]+,", "", sql)
        cols = re.search(r"\n\s*columns \(([^)]*)\)", sql)
        if cols:
            typed = [c.split() for c in cols.group(1).split(",")]
            empty = ", ".join(f"CAST(NULL AS {t}) AS {n}" for n, t in typed)
            sql = sql.replace("@this_model", f"(SELECT {empty} WHERE FALSE)")
        sql = re.sub(r",(\n\s*--[^\n]*)*\n\s*session_properties \([^)]*\)", "", sql)
        # raw.psd lists the files it reads (per-file columns); a glob's listing here.
        # (The landing order is psd-extract's state DB's; the bench's files are one a month.)
        sql = sql.replace(
            "(SELECT unnest(@landing_files) AS path, unnest(@landing_order) AS landed_order)",
            f"(SELECT file AS path, NULL::BIGINT AS landed_order FROM glob('{glob}'))",
        )
        sql = sql.replace("@landing_files", f"'{glob}'").replace("@run_id", "0").replace("@is_incremental", "FALSE")
        open(os.path.join(out, "models", name), "w").write(sql)
    for name in sorted(os.listdir(os.path.join(models, "audits"))):
        shutil.copy(os.path.join(models, "audits", name), os.path.join(out, "audits", name))
    with open(os.path.join(out, "config.yaml"), "w") as f:
        f.write(
            "gateways:\n"
            "  local:\n"
            "    connection:\n"
            "      type: duckdb\n"
            f"      database: {os.path.abspath(db)}\n"
            "default_gateway: local\n"
            "model_defaults:\n"
            "  dialect: duckdb\n"
            "  start: 2024-01-01\n"
        )


if __name__ == "__main__":
    main()
