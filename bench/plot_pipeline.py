"""The pipelined run's timeline as an SVG (no dependencies): bench/pipeline.sh
samples, every quarter second, the profiles extract has written, the rows of
customers.csv and the customers Voucherify holds (the sandbox's count); this
draws each as a share of its final count over time. In: the TSV (t,
profiles, rows, held) and a title; out: the picture."""
import csv
import sys

from svg import frame, grid

rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
title, out_path = sys.argv[2], sys.argv[3]
W, H, L, R, T, B = 640, 360, 60, 190, 40, 50
tmax = max(float(r["t"]) for r in rows) or 1.0
series = [("profiles", "extract: profiles written", "#1f77b4"),
          ("rows", "transform: rows of customers.csv", "#2ca02c"),
          ("held", "load: customers Voucherify holds", "#d62728")]
X = lambda t: L + (W - L - R) * t / tmax
Y = lambda v: H - B - (H - T - B) * v
out = frame(W, H, title, size=14)
grid(out, L, W - R, [(Y(p / 100), f"{p}%") for p in range(0, 101, 25)])
step = max(5, int(tmax / 8) // 5 * 5)
for s in range(0, int(tmax) + 1, step):
    out.append(f'<text x="{X(s)}" y="{H-B+18}" text-anchor="middle">{s} s</text>')
out.append(f'<text x="{(L+W-R)/2}" y="{H-12}" text-anchor="middle">seconds since run started</text>')
for i, (key, label, color) in enumerate(series):
    final = max(float(r[key]) for r in rows)
    if final <= 0:
        continue
    path = " ".join(f"{X(float(r['t'])):.1f},{Y(float(r[key]) / final):.1f}" for r in rows)
    out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2.5"/>')
    out.append(f'<rect x="{W-R+8}" y="{T+30+i*22}" width="14" height="4" fill="{color}"/>')
    out.append(f'<text x="{W-R+28}" y="{T+36+i*22}">{label}</text>')
out.append("</svg>")
open(out_path, "w").write("\n".join(out) + "\n")
