#!/usr/bin/env python3
"""Write a realistic series of PSD releases, landed as psd-extract lands them.

usage: gen_series.py ROWS LANDING_DIR COUNT [REVISED_SHARE] [ADDED_ROWS] [FIRST_MONTH]

Release 0 is gen_psd.py's release of ROWS rows. Each later release revises
REVISED_SHARE of the values (default 0.02: USDA's monthly releases revise a small share)
and adds ADDED_ROWS rows (default 1000: a new market year's first figures), as USDA's
monthly releases do; release i lands as LANDING_DIR/psd/{yyyy}/{mm}/series-{i}.csv.gzip,
months counting from FIRST_MONTH (default 2006-01), gzip level 6 as psd-extract writes.
Deterministic: the same arguments make the same files. gen_psd.py with a new seed per
release (every value revised) stays the worst case.
"""
import gzip
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_psd  # noqa: E402


def main():
    count, landing, releases = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    share = float(sys.argv[4]) if len(sys.argv) > 4 else 0.02
    added = int(sys.argv[5]) if len(sys.argv) > 5 else 1000
    first = sys.argv[6] if len(sys.argv) > 6 else "2006-01"
    year0, month0 = (int(x) for x in first.split("-"))
    rnd = random.Random("materia-series")
    heads, values = [], []
    for head, value in gen_psd.rows(count, rnd):
        heads.append(head)
        values.append(value)
    # The rows of the last market year (2024), one per commodity, country and attribute:
    # a release's new rows are some of them in the next market year.
    last_year = [h for h in heads if ",2024,2024,12," in h]
    for i in range(releases):
        if i > 0:
            for _ in range(int(len(values) * share)):
                k = rnd.randrange(len(values))
                values[k] *= 1 + (rnd.random() - 0.5) / 10
            for h in last_year[:added]:
                heads.append(h.replace(",2024,2024,12,", f",{2024 + i},2024,12,", 1))
                values.append(rnd.random() * 100000)
        months = month0 - 1 + i
        year, month = year0 + months // 12, months % 12 + 1
        out_dir = os.path.join(landing, "psd", f"{year:04d}", f"{month:02d}")
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, f"series-{i}.csv.gzip")
        with gzip.open(path + ".tmp", "wt", compresslevel=6, newline="") as f:
            f.write(gen_psd.HEADER + "\r\n")
            for start in range(0, len(heads), 10000):
                f.write("".join(f"{h}{v:.4f}\r\n" for h, v in zip(heads[start:start + 10000], values[start:start + 10000])))
        os.replace(path + ".tmp", path)
        print(path)


if __name__ == "__main__":
    main()
