"""Throughput of the LAION reading path per DataLoader worker, against bare PIL in the same run.

Both sides read the same webdataset shards of real photos (skimage, re-encoded as JPEG with
random crops so sizes vary) in one process — what one worker does:

* bare PIL:    tarfile iteration + ``Image.open`` + ``convert("RGB")`` + bicubic resize to size x size;
* bare + prep: the same loop, but the tokenizer's ``ImagePreprocessor`` instead of the resize (pad to
               square, resize, crop, normalise to a float32 tensor): the image work the reader must do;
* reader:      ``LaionShards`` (tar grouping, caption from .txt, cleaning, shape test, shuffle
               buffer, skip accounting) + the same ``ImagePreprocessor``, with and without JPEG
               draft decoding (the decoder downscales by 1/2..1/8 while decoding: faster, slightly
               different pixels, so off by default).

    python -m perf.dataloader [--samples 400] [--size 336] [--repeats 3]    # from the repo root

Prints samples/s and ratios against both baselines (goal >= 0.9 against bare PIL).
"""

from __future__ import annotations

import argparse
import io
import random
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import skimage.data
import webdataset as wds
from PIL import Image

from libra.data.laion import LaionShards
from libra.tokenizer.image_processing import ImagePreprocessor

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def write_shards(folder: Path, samples: int, per_shard: int = 100) -> str:
    rng = random.Random(0)
    photos = [Image.fromarray(np.asarray(getattr(skimage.data, n)())).convert("RGB") for n in PHOTOS]
    sink = None
    for index in range(samples):
        if index % per_shard == 0:
            if sink:
                sink.close()
            sink = wds.TarWriter(str(folder / f"{index // per_shard:05d}.tar"))
        photo = photos[index % len(photos)]
        w, h = photo.size
        cw, ch = rng.randint(w * 3 // 4, w), rng.randint(h * 3 // 4, h)
        left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
        buffer = io.BytesIO()
        photo.crop((left, top, left + cw, top + ch)).save(buffer, format="JPEG", quality=90)
        sink.write({"__key__": f"{index:09d}", "jpg": buffer.getvalue(), "txt": f"A photo number {index}"})
    sink.close()
    return str(folder / f"{{00000..{(samples - 1) // per_shard:05d}}}.tar")


def bare_pil(shards: list[str], size: int, preprocess: bool) -> int:
    transform = ImagePreprocessor(size=size)
    count = 0
    for shard in shards:
        with tarfile.open(shard, mode="r|") as tar:
            for info in tar:
                if info.name.endswith(".jpg"):
                    image = Image.open(io.BytesIO(tar.extractfile(info).read())).convert("RGB")
                    if preprocess:
                        transform(image)
                    else:
                        image.resize((size, size), Image.BICUBIC)
                    count += 1
    return count


def reader(urls: str, size: int, draft: bool) -> int:
    transform = ImagePreprocessor(size=size)
    dataset = LaionShards(urls, image_transform=transform, decode_draft_size=size if draft else None)
    return sum(1 for item in dataset if not hasattr(item.item, "reason"))


def rate(run) -> float:
    start = time.perf_counter()
    count = run()
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--size", type=int, default=336)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        urls = write_shards(Path(folder), args.samples)
        shards = wds.shardlists.expand_urls(urls)
        # interleaved repeats, so a load change on the machine hits every variant alike
        rates = {"bare": [], "prep": [], "reader": [], "draft": []}
        for _ in range(args.repeats):
            rates["bare"].append(rate(lambda: bare_pil(shards, args.size, preprocess=False)))
            rates["prep"].append(rate(lambda: bare_pil(shards, args.size, preprocess=True)))
            rates["reader"].append(rate(lambda: reader(urls, args.size, draft=False)))
            rates["draft"].append(rate(lambda: reader(urls, args.size, draft=True)))
    bare, prep, full, draft = (max(rates[k]) for k in ("bare", "prep", "reader", "draft"))
    print(
        f"{args.samples} JPEG photos (crops of 300-640 px) -> {args.size}px, one process, "
        f"best of {args.repeats}"
    )
    print(f"bare PIL decode + resize              {bare:7.1f} samples/s")
    print(f"bare PIL decode + ImagePreprocessor   {prep:7.1f} samples/s  {prep / bare:5.2f}x bare")
    for label, value in (
        ("LaionShards + ImagePreprocessor", full),
        ("  ... with JPEG draft decoding", draft),
    ):
        print(
            f"{label:<37} {value:7.1f} samples/s  {value / bare:5.2f}x bare  {value / prep:5.2f}x bare+prep"
        )


if __name__ == "__main__":
    main()
