#!/usr/bin/env python3
"""Query analytics.duckdb the way the web app must (the reader contract) and report
query latency while another process keeps replacing the file.

usage: reader_latency.py ANALYTICS.duckdb SECONDS

The contract: one connection per thread, opened read-only; before each query, stat
the path and, when the inode changed, close the old connection and open the new file.
"""
import os
import sys
import time

import duckdb


class Reader:
    def __init__(self, path):
        self.path, self.conn, self.inode, self.opens = path, None, None, 0

    def connection(self):
        st = os.stat(self.path)
        inode = (st.st_dev, st.st_ino)
        if inode != self.inode:
            if self.conn is not None:
                self.conn.close()  # an open handle keeps serving the old file
            self.conn = duckdb.connect(self.path, read_only=True)
            self.inode, self.opens = inode, self.opens + 1
        return self.conn


def main():
    path, seconds = sys.argv[1], float(sys.argv[2])
    reader, lat, errors = Reader(path), [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.perf_counter()
        try:
            reader.connection().execute(
                "SELECT count(*), (SELECT export_id FROM _meta) FROM serving.commodity_balance").fetchall()
        except duckdb.Error:
            errors += 1
        lat.append(time.perf_counter() - t)
        time.sleep(0.002)
    lat.sort()
    pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000
    print(f"{len(lat)} queries, {reader.opens} opens, {errors} errors; "
          f"latency p50 {pct(0.5):.2f} ms, p99 {pct(0.99):.2f} ms, max {lat[-1] * 1000:.2f} ms")


if __name__ == "__main__":
    main()
