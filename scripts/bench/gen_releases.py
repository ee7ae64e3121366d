#!/usr/bin/env python3
"""Make N synthetic PSD releases from a real one, landed as psd-extract lands them.

usage: gen_releases.py REAL.zip LANDING_DIR FIRST_INDEX COUNT

Release i (FIRST_INDEX <= i < FIRST_INDEX + COUNT) is the real CSV with every 50th
value revised by i percent, landed as LANDING_DIR/psd/{yyyy}/{mm}/synthetic-{i}.csv.gzip
with months counting from 2010-01. Streams; a few MB of memory.
"""
import gzip
import io
import os
import sys
import zipfile


def main():
    real, landing, first, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    with zipfile.ZipFile(real) as z:
        name = z.namelist()[0]
        lines = z.read(name).decode("utf-8").splitlines(keepends=True)
    for i in range(first, first + count):
        year, month = 2010 + i // 12, i % 12 + 1
        out_dir = os.path.join(landing, "psd", f"{year:04d}", f"{month:02d}")
        os.makedirs(out_dir, exist_ok=True)
        buf = io.StringIO()
        buf.write(lines[0])
        for n, line in enumerate(lines[1:]):
            if n % 50 == i % 50 and i > 0:
                head, _, value = line.rstrip("\r\n").rpartition(",")
                line = f"{head},{float(value) * (1 + i / 100):.4f}\r\n"
            buf.write(line)
        path = os.path.join(out_dir, f"synthetic-{i}.csv.gzip")
        with gzip.open(path + ".tmp", "wt", compresslevel=1, newline="") as f:
            f.write(buf.getvalue())
        os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
