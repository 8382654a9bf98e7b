"""Splits each vector's per-question A/B slopes (report.json, in test_ab.csv's order) by
the matching letter, to tell behaviour from letter bias (docs/results/personas-mwe).
Usage: letters.py REPORT_DIR TEST_AB_CSV  (prints a markdown table)"""
import csv
import json
import os
import sys

report = json.load(open(os.path.join(sys.argv[1], "report.json"), encoding="utf-8"))
items = list(csv.DictReader(open(sys.argv[2], encoding="utf-8")))
print("| vector | matching = A: median slope (share > 0) [n] | matching = B |")
print("|---|---|---|")
for v in report["vectors"]:
    st = v.get("steerability_ab")
    if not st:
        continue
    slopes = st["slopes"]
    assert len(slopes) == len(items), "slopes and questions differ in number"
    cells = []
    for letter in "AB":
        s = sorted(x for x, it in zip(slopes, items) if it["matching"] == letter)
        med = s[len(s) // 2] if s else float("nan")
        cells.append(f"{med:+.2f} ({sum(x > 0 for x in s) / max(len(s), 1):.0%}) [{len(s)}]")
    print(f"| {v['name']} | " + " | ".join(cells) + " |")
