"""What the bench's pictures share (no dependencies): an SVG's opening with
its title, and the horizontal grid lines with their labels."""


def frame(width, height, title, size=15):
    """The opening elements of a picture: the root, a white ground, the title."""
    return [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
            f'<rect width="{width}" height="{height}" fill="white"/>',
            f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="{size}">{title}</text>']


def grid(out, left, right, ys):
    """A light line and a label at each (y, label) of ys, from left to right."""
    for y, label in ys:
        out.append(f'<line x1="{left}" x2="{right}" y1="{y}" y2="{y}" stroke="#eee"/>')
        out.append(f'<text x="{left - 8}" y="{y + 4}" text-anchor="end">{label}</text>')
