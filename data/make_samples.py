"""Draw the demo catalogue: simple product shots (bags, mugs, shoes, lamps) on a white background.

Run `python data/make_samples.py` to regenerate data/samples/ and data/products.csv. The images are
drawn by this script and are dedicated to the public domain (CC0 1.0), see data/LICENSE.
"""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).parent
SIZE = (480, 480)
COLOURS = {"red": (200, 40, 40), "blue": (40, 70, 190), "green": (40, 150, 70), "tan": (190, 150, 100)}


def bag(d: ImageDraw.ImageDraw, c: tuple[int, int, int], rnd: random.Random) -> None:
    w = rnd.randint(200, 260)
    x0, y0 = (SIZE[0] - w) // 2, 200
    d.polygon([(x0 + 20, y0), (x0 + w - 20, y0), (x0 + w, y0 + 200), (x0, y0 + 200)], fill=c)
    d.arc([x0 + 50, y0 - 110, x0 + w - 50, y0 + 60], 180, 360, fill=tuple(v // 2 for v in c), width=14)
    d.rectangle([x0 + w // 2 - 15, y0 + 40, x0 + w // 2 + 15, y0 + 60], fill=(230, 200, 60))


def mug(d: ImageDraw.ImageDraw, c: tuple[int, int, int], rnd: random.Random) -> None:
    h = rnd.randint(180, 230)
    d.rectangle([140, 380 - h, 300, 380], fill=c)
    d.ellipse([280, 380 - h + 40, 370, 380 - 40], outline=c, width=18)
    d.ellipse([140, 380 - h - 15, 300, 380 - h + 15], fill=tuple(min(255, v + 40) for v in c))


def shoe(d: ImageDraw.ImageDraw, c: tuple[int, int, int], rnd: random.Random) -> None:
    t = rnd.randint(0, 30)
    d.polygon([(80, 330), (120, 230 - t), (220, 240), (330, 300), (400, 320), (400, 360), (80, 360)], fill=c)
    d.rectangle([80, 360, 400, 380], fill=(40, 40, 40))
    for i in range(4):
        d.line([(150 + 20 * i, 250), (170 + 20 * i, 280)], fill=(250, 250, 250), width=5)


def lamp(d: ImageDraw.ImageDraw, c: tuple[int, int, int], rnd: random.Random) -> None:
    a = math.radians(rnd.randint(-15, 15))
    top = (240 + 120 * math.sin(a), 380 - 240 * math.cos(a))
    d.line([(240, 380), top], fill=(60, 60, 60), width=10)
    d.polygon([(top[0] - 70, top[1] + 40), (top[0] + 70, top[1] + 40), (top[0] + 35, top[1] - 40), (top[0] - 35, top[1] - 40)], fill=c)
    d.ellipse([170, 370, 310, 400], fill=(60, 60, 60))


SHAPES = {"bag": bag, "mug": mug, "shoe": shoe, "lamp": lamp}
PRICES = {"bag": 49.0, "mug": 9.5, "shoe": 79.0, "lamp": 35.0}


def main() -> None:
    out = HERE / "samples"
    out.mkdir(exist_ok=True)
    rows = []
    for kind, draw in SHAPES.items():
        for colour, rgb in COLOURS.items():
            rnd = random.Random(f"{kind}-{colour}")
            im = Image.new("RGB", SIZE, (250, 250, 248))
            d = ImageDraw.Draw(im)
            d.ellipse([110, 385, 370, 415], fill=(225, 225, 222))  # a soft shadow
            draw(d, rgb, rnd)
            im = im.filter(ImageFilter.GaussianBlur(0.8))
            name = f"{kind}-{colour}.jpg"
            im.save(out / name, quality=85)
            rows.append({"path": name, "title": f"{colour.title()} {kind}", "price": f"{PRICES[kind] + rnd.randint(0, 20):.2f}",
                         "category": kind, "colour": colour, "link": f"https://shop.example/{kind}-{colour}"})
    with open(HERE / "products.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
