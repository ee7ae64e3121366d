#!/usr/bin/env python3
"""The floor of loading a release: DuckDB reading a landed gzip CSV into a table.

usage: floor_read_csv.py NEW.duckdb FILE.csv.gzip

The raw model's read_csv (the same pinned dialect, the types sniffed), into a table of
a new database file, committed: what any loader of that file must at least do. Prints
the seconds from opening the database to closing it (Python's start-up and import
left out: what the benchmarks that time this whole process include, for a 2M-row
release, is ~0.2 s of it).
"""
import sys
import time

import duckdb

start = time.monotonic()
c = duckdb.connect(sys.argv[1])
c.execute("""CREATE TABLE t AS SELECT * FROM read_csv(?, header = true, compression = 'gzip',
             delim = ',', quote = '"', escape = '"')""", [sys.argv[2]])
c.close()
print(f"{time.monotonic() - start:.3f}")
