#!/usr/bin/env python3
"""Write a synthetic PSD-shaped release: a zip holding one CSV with the PSD header.

usage: gen_psd.py ROWS OUT.zip [SEED]

Rows cycle through commodities x countries x market years x attributes like the
all-commodities file (psd_alldata_csv.zip, about 2M rows), unique on that grain (made-up
commodity codes past the six real ones); SEED changes the values so several releases
differ (every value: the worst case of a release series; gen_series.py makes realistic
ones). Streams, so memory stays small for any ROWS.
"""
import random
import sys
import zipfile

HEADER = ("Commodity_Code,Commodity_Description,Country_Code,Country_Name,Market_Year,"
          "Calendar_Year,Month,Attribute_ID,Attribute_Description,Unit_ID,Unit_Description,Value")
COMMODITIES = [("0711100", "Coffee, Green"), ("0410000", "Wheat"), ("0440000", "Corn"),
               ("2222000", "Oilseed, Soybean"), ("0422110", "Rice, Milled"), ("0612000", "Sugar, Centrifugal")]
ATTRIBUTES = [("020", "Beginning Stocks"), ("028", "Production"), ("057", "Imports"),
              ("088", "Exports"), ("125", "Domestic Consumption"), ("176", "Ending Stocks"),
              ("086", "Total Supply"), ("178", "Total Distribution"), ("058", "\"Rst,Ground Dom. Consum\"")]


def rows(count, rnd):
    """The first `count` rows, each (line without its value, value), in file order."""
    countries = [(f"{i:02d}" if i < 100 else f"X{i}", f"Country {i}") for i in range(250)]
    n, cycle = 0, 0
    while n < count:
        # Past the real commodities, more with made-up codes: every row stays unique
        # on the PSD grain (commodity, country, market year, attribute), as USDA's are.
        for i, (code, desc) in enumerate(COMMODITIES):
            if cycle:
                code, desc = f"9{cycle:03d}{i:03d}", f"{desc} {cycle}"
            for ccode, cname in countries:
                for year in range(1960, 2025):
                    for aid, adesc in ATTRIBUTES:
                        if n >= count:
                            return
                        yield (f'{code},"{desc}",{ccode},{cname},{year},2024,12,{aid},{adesc},02,"(1000 MT)",',
                               rnd.random() * 100000)
                        n += 1
        cycle += 1


def main():
    count, out = int(sys.argv[1]), sys.argv[2]
    rnd = random.Random(sys.argv[3] if len(sys.argv) > 3 else "materia")
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open(out.rsplit("/", 1)[-1].replace("_csv.zip", ".csv").replace(".zip", ".csv"), "w",
                    force_zip64=True) as f:
            f.write((HEADER + "\r\n").encode())
            buf = []
            for head, value in rows(count, rnd):
                buf.append(f"{head}{value:.4f}\r\n")
                if len(buf) >= 10000:
                    f.write("".join(buf).encode())
                    buf.clear()
            f.write("".join(buf).encode())


if __name__ == "__main__":
    main()
