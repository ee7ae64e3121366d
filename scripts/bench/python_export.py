#!/usr/bin/env python3
"""The original system's export, as the peer of serve-export in the benchmark.

usage: python_export.py LAKEHOUSE.duckdb ANALYTICS.duckdb

What the original's ~50-line Python export did: attach the lakehouse read-only, copy
every table of its serving schema into a new file, close it, rename it over the
published one. No verification, no fsync, no record of the run.
"""
import os
import sys

import duckdb


def main():
    src, dst = sys.argv[1], sys.argv[2]
    tmp = dst + ".tmp"
    if os.path.exists(tmp):
        os.remove(tmp)
    c = duckdb.connect(tmp)
    quoted = src.replace("'", "''")
    c.execute(f"ATTACH '{quoted}' AS lh (READ_ONLY)")
    c.execute("CREATE SCHEMA serving")
    tables = c.execute("""SELECT table_name FROM duckdb_tables()
                          WHERE database_name = 'lh' AND schema_name = 'serving' ORDER BY 1""").fetchall()
    for (table,) in tables:
        c.execute(f"CREATE TABLE serving.{table} AS SELECT * FROM lh.serving.{table}")
    c.close()
    os.rename(tmp, dst)


if __name__ == "__main__":
    main()
