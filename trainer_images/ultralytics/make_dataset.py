"""Small synthetic datasets for the Ultralytics trainer: standard library only, so the demo,
the tests and the trainer image can all make one.

Two classes: `rectangle` (filled, warm colours) and `ellipse` (filled, cool colours) on a
plain background.

- Detection (`make_detection`): YOLO layout, `images/{train,val}/*.png`,
  `labels/{train,val}/*.txt` (`class cx cy w h`, normalised), and a `data.yaml` whose
  `path` is the dataset directory. Each image holds 1-3 shapes.
- Classification (`make_classification`): `train/<class>/*.png`, `val/<class>/*.png`, one
  centred shape per image (the directory itself is the `DATA`).

    python trainer_images/ultralytics/make_dataset.py OUT_DIR [--task detect|classify]
        [--train 16] [--val 8] [--imgsz 128] [--seed 0] [--zip]

prints what to pass as `DATA` (the data.yaml, the directory, or with `--zip` a zip file).
"""

from __future__ import annotations

import argparse
import random
import shutil
import struct
import zlib
from pathlib import Path

CLASSES = ("rectangle", "ellipse")
WARM = ((220, 40, 40), (230, 120, 20), (200, 30, 120), (240, 200, 30))
COOL = ((30, 80, 220), (20, 170, 170), (60, 180, 60), (110, 50, 200))


class Canvas:
    def __init__(self, size: int, background: tuple[int, int, int]) -> None:
        self.size = size
        row = bytes(background) * size
        self.rows = [bytearray(row) for _ in range(size)]

    def rectangle(self, x0: int, y0: int, x1: int, y1: int, colour: tuple[int, int, int]) -> None:
        span = bytes(colour) * (x1 - x0)
        for y in range(y0, y1):
            self.rows[y][3 * x0:3 * x1] = span

    def ellipse(self, x0: int, y0: int, x1: int, y1: int, colour: tuple[int, int, int]) -> None:
        cx, cy = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2
        rx, ry = max((x1 - x0) / 2, 0.5), max((y1 - y0) / 2, 0.5)
        for y in range(y0, y1):
            dy = (y - cy) / ry
            if abs(dy) > 1:
                continue
            half = rx * (1 - dy * dy) ** 0.5
            a, b = max(x0, round(cx - half)), min(x1, round(cx + half) + 1)
            if b > a:
                self.rows[y][3 * a:3 * b] = bytes(colour) * (b - a)

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(row) for row in self.rows)

        def chunk(kind: bytes, data: bytes) -> bytes:
            return (struct.pack(">I", len(data)) + kind + data
                    + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

        header = struct.pack(">IIBBBBB", self.size, self.size, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def _background(rng: random.Random) -> tuple[int, int, int]:
    grey = rng.randint(150, 235)
    return tuple(max(0, min(255, grey + rng.randint(-12, 12))) for _ in range(3))


def _draw(canvas: Canvas, cls: int, box: tuple[int, int, int, int], rng: random.Random) -> None:
    colour = rng.choice(WARM if cls == 0 else COOL)
    (canvas.rectangle if cls == 0 else canvas.ellipse)(*box, colour)


def _box(rng: random.Random, size: int, lo: float, hi: float) -> tuple[int, int, int, int]:
    w = rng.randint(int(size * lo), int(size * hi))
    h = rng.randint(int(size * lo), int(size * hi))
    x0, y0 = rng.randint(0, size - w), rng.randint(0, size - h)
    return x0, y0, x0 + w, y0 + h


def _overlaps(a, b) -> bool:
    return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])


def make_detection(root: str | Path, n_train: int = 16, n_val: int = 8, imgsz: int = 128,
                   seed: int = 0) -> Path:
    """Write a YOLO detection dataset under `root`; returns its data.yaml."""
    root = Path(root).resolve()
    rng = random.Random(seed)
    for split, count in (("train", n_train), ("val", n_val)):
        images, labels = root / "images" / split, root / "labels" / split
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            canvas = Canvas(imgsz, _background(rng))
            boxes: list[tuple[int, tuple[int, int, int, int]]] = []
            wanted = rng.randint(1, 3)
            for _ in range(wanted * 10):
                if len(boxes) == wanted:
                    break
                box = _box(rng, imgsz, 0.18, 0.45)
                if any(_overlaps(box, other) for _, other in boxes):
                    continue
                cls = (index + len(boxes)) % 2 if len(boxes) < 2 else rng.randint(0, 1)
                boxes.append((cls, box))
                _draw(canvas, cls, box, rng)
            name = f"{split}_{index:04d}"
            (images / f"{name}.png").write_bytes(canvas.png())
            (labels / f"{name}.txt").write_text("".join(
                f"{cls} {(x0 + x1) / 2 / imgsz:.6f} {(y0 + y1) / 2 / imgsz:.6f} "
                f"{(x1 - x0) / imgsz:.6f} {(y1 - y0) / imgsz:.6f}\n"
                for cls, (x0, y0, x1, y1) in boxes))
    data_yaml = root / "data.yaml"
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(CLASSES))
    data_yaml.write_text(f"path: {root}\ntrain: images/train\nval: images/val\n"
                         f"names:\n{names}")
    return data_yaml


def make_classification(root: str | Path, n_train: int = 16, n_val: int = 8,
                        imgsz: int = 64, seed: int = 0) -> Path:
    """Write an image-folder classification dataset under `root`; returns `root`."""
    root = Path(root).resolve()
    rng = random.Random(seed)
    for split, count in (("train", n_train), ("val", n_val)):
        for index in range(count):
            cls = index % len(CLASSES)
            folder = root / split / CLASSES[cls]
            folder.mkdir(parents=True, exist_ok=True)
            canvas = Canvas(imgsz, _background(rng))
            _draw(canvas, cls, _box(rng, imgsz, 0.4, 0.8), rng)
            (folder / f"{split}_{index:04d}.png").write_bytes(canvas.png())
    return root


def make_zip(directory: str | Path) -> Path:
    """Zip a dataset directory (contents at the archive's top level); returns the zip."""
    directory = Path(directory)
    return Path(shutil.make_archive(str(directory), "zip", root_dir=directory))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--task", choices=("detect", "classify"), default="detect")
    parser.add_argument("--train", type=int, default=16)
    parser.add_argument("--val", type=int, default=8)
    parser.add_argument("--imgsz", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--zip", action="store_true", help="also zip it; print the zip path")
    args = parser.parse_args(argv)
    if args.task == "detect":
        made = make_detection(args.out, args.train, args.val, args.imgsz or 128, args.seed)
    else:
        made = make_classification(args.out, args.train, args.val, args.imgsz or 64, args.seed)
    print(make_zip(args.out) if args.zip else made)


if __name__ == "__main__":
    main()
