#!/usr/bin/env python3
"""The floor of loading a release: DuckDB reading a landed gzip CSV into a table.

usage: floor_read_csv.py NEW.duckdb FILE.csv.gzip

The raw model's read_csv (the same pinned dialect, the types sniffed), into a table of
a new database file, committed: what any loader of that file must at least do.
"""
import sys

import duckdb

c = duckdb.connect(sys.argv[1])
c.execute("""CREATE TABLE t AS SELECT * FROM read_csv(?, header = true, compression = 'gzip',
             delim = ',', quote = '"', escape = '"')""", [sys.argv[2]])
c.close()
