"""Requests/s against answer time, one line per strategy, as an SVG (no
dependencies): bench/concurrency.sh's TSV in, the picture out."""
import csv
import sys

from svg import frame, grid

rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
W, H, L, R, T, B = 640, 400, 70, 170, 40, 60
xs = sorted({int(r["median_ms"]) for r in rows})
xmax, ymax = max(xs) * 1.1, 110.0
X = lambda v: L + (W - L - R) * v / xmax
Y = lambda v: H - B - (H - T - B) * v / ymax
colors = {"fixed-16": "#c0504d", "adaptive": "#1f77b4"}
out = frame(W, H, "extract at Segment's 100 requests/s: requests/s against answer time")
grid(out, L, W - R, [(Y(v), v) for v in range(0, 101, 20)])
out.append(f'<line x1="{L}" x2="{W-R}" y1="{Y(100)}" y2="{Y(100)}" stroke="#888" stroke-dasharray="4 3"/>')
out.append(f'<text x="{W-R+6}" y="{Y(100)+4}" fill="#888">the limit, 100/s</text>')
for x in xs:
    out.append(f'<text x="{X(x)}" y="{H-B+18}" text-anchor="middle">{x} ms</text>')
out.append(f'<text x="{(L+W-R)/2}" y="{H-15}" text-anchor="middle">median answer time (1% of answers 5x slower)</text>')
out.append(f'<text x="18" y="{(T+H-B)/2}" transform="rotate(-90 18 {(T+H-B)/2})" text-anchor="middle">requests/s</text>')
for i, (name, color) in enumerate(colors.items()):
    pts = sorted((int(r["median_ms"]), float(r["requests_per_s"])) for r in rows if r["strategy"] == name)
    path = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in pts)
    out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2.5"/>')
    for x, y in pts:
        out.append(f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="4" fill="{color}"/>')
        out.append(f'<text x="{X(x)+6:.1f}" y="{Y(y)-6:.1f}" fill="{color}">{y:.0f}</text>')
    out.append(f'<rect x="{W-R+6}" y="{T+40+i*22}" width="14" height="4" fill="{color}"/>')
    out.append(f'<text x="{W-R+26}" y="{T+46+i*22}">{"adaptive" if name == "adaptive" else "fixed 16 in flight"}</text>')
out.append("</svg>")
open(sys.argv[2], "w").write("\n".join(out) + "\n")
