#!/usr/bin/env python3
"""Exit 1 unless two lakehouses hold the same rows in every model table.

usage: compare_lakehouses.py A.duckdb B.duckdb

Compares as multisets (EXCEPT ALL both ways), leaving out what a run stamps (_run_id,
_loaded_at, serving.releases.loaded_at) and the engine's own _materia schema. Sums of
doubles (serving.world_balance) may differ in their last bits between two builds
(DuckDB's parallel sums are not ordered): compared to 1e-9 relative.
"""
import sys

import duckdb

STAMPS = {"_run_id", "_loaded_at", "loaded_at"}
SUMMED = {"serving.world_balance"}


def main():
    c = duckdb.connect(sys.argv[1], read_only=True)
    path = sys.argv[2].replace("'", "''")
    c.execute(f"ATTACH '{path}' AS b (READ_ONLY)")
    a_db = c.execute("SELECT current_database()").fetchone()[0]
    tables = c.execute("""SELECT schema_name, table_name FROM duckdb_tables()
                          WHERE database_name = ? AND schema_name <> '_materia' ORDER BY ALL""", [a_db]).fetchall()
    bad = 0
    for schema, table in tables:
        name = f"{schema}.{table}"
        cols = c.execute("""SELECT column_name, data_type FROM duckdb_columns()
                            WHERE database_name = ? AND schema_name = ? AND table_name = ? ORDER BY column_index""",
                         [a_db, schema, table]).fetchall()
        kept = [(col, typ) for col, typ in cols if col not in STAMPS]
        if name in SUMMED:
            # Joined on the other columns; each double within 1e-9 of the other's.
            keys = " AND ".join(f"a.{col} IS NOT DISTINCT FROM b.{col}" for col, typ in kept if typ != "DOUBLE")
            close = " AND ".join(f"(a.{col} IS NOT DISTINCT FROM b.{col} OR abs(a.{col} - b.{col}) <= 1e-9 * abs(a.{col}))"
                                 for col, typ in kept if typ == "DOUBLE")
            n_a, n_b, matched = c.execute(f"""SELECT
                (SELECT count(*) FROM {a_db}.{name}), (SELECT count(*) FROM b.{name}),
                (SELECT count(*) FROM {a_db}.{name} a JOIN b.{name} b ON {keys} WHERE {close})""").fetchone()
            diff = (n_a - matched, n_b - matched, n_a)
        else:
            sel = ", ".join(col for col, _ in kept)
            diff = c.execute(f"""SELECT
                (SELECT count(*) FROM (SELECT {sel} FROM {a_db}.{name} EXCEPT ALL SELECT {sel} FROM b.{name})),
                (SELECT count(*) FROM (SELECT {sel} FROM b.{name} EXCEPT ALL SELECT {sel} FROM {a_db}.{name})),
                (SELECT count(*) FROM {a_db}.{name})""").fetchone()
        status = "same" if diff[:2] == (0, 0) else f"DIFFERENT: {diff[0]} rows only in A, {diff[1]} only in B"
        bad += status != "same"
        print(f"{name}: {diff[2]} rows, {status}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
