"""Throughput of the LAION image path per DataLoader worker, against bare PIL in the same run.

Every row reads the same webdataset shards of real photos (skimage, re-encoded as JPEG with random
crops so sizes and shapes vary) in one process, which is what one worker does:

* bare PIL (the baseline): tarfile iteration + ``Image.open`` + ``convert("RGB")`` + one bicubic
  resize straight to size x size (no padding, no crop, no tensor);
* bare + pad + resize: the same loop, padding to square first: the pixels of ``to_uint8`` in
  plain PIL. Resampling the padded square costs more than the bare resize: the padding rows
  (wide photos) or columns (tall ones) are resampled too, 1.5x the reads of one pass for 3:2;
* reader, before: ``LaionShards`` (tar grouping, caption from .txt, cleaning, shape test, shuffle
  buffer, skip accounting) + the preprocessing as it was before the uint8 split (EXIF copy, pad
  canvas, one resize, rescale/normalise in float64 then float32, float32 tensor) — kept below as
  ``legacy_preprocess``;
* reader + to_uint8: the worker path now (what ``LibraCollator`` does to a decoded image); the
  normalisation runs on the device, batched (``ImagePreprocessor.normalize``);
* reader + __call__: the float output in the worker (table lookup instead of float64 arithmetic);
* reader + to_uint8, JPEG draft: the decoder downscales by 1/2..1/8 while decoding (faster,
  slightly different pixels, so off by default).

    python -m perf.dataloader [--samples 400] [--size 336] [--repeats 5]    # from the repo root

Prints samples per CPU-second of the process (the machine is shared: wall time would mostly
measure the other jobs), median over repeats interleaved shard by shard, and each row's ratio to
bare PIL (goal for the worker path: >= 0.9); then what the normalisation moved to the device
costs on this CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import random
import statistics
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import skimage.data
import torch
import webdataset as wds
from PIL import Image, ImageOps

from libra.data.laion import LaionShards
from libra.tokenizer.image_processing import ImagePreprocessor, pad_to_square, to_rgb

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")  # square, wide, wide, tall


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


def legacy_preprocess(pre: ImagePreprocessor) -> Callable[[Image.Image], torch.Tensor]:
    """The preprocessing before the uint8 split, for the 'before' row (same pixels, more work)."""

    def run(image: Image.Image) -> torch.Tensor:
        with contextlib.suppress(Exception):
            image = ImageOps.exif_transpose(image)  # copies every image without an orientation tag
        image = pad_to_square(to_rgb(image), pre.pad_colour)
        w, h = image.size
        new_long = int(pre.size * max(w, h) / min(w, h))
        new_size = (pre.size, new_long) if w <= h else (new_long, pre.size)
        if new_size != (w, h):
            image = image.resize(new_size, resample=Image.BICUBIC)
        pixels = np.asarray(image, dtype=np.uint8)
        top, left = (pixels.shape[0] - pre.size) // 2, (pixels.shape[1] - pre.size) // 2
        pixels = pixels[top : top + pre.size, left : left + pre.size]
        scaled = (pixels.astype(np.float64) * (1 / 255)).astype(np.float32)
        normalised = (scaled - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))

    return run


def bare_pil(shard: str, size: int, transform: Callable | None = None) -> int:
    count = 0
    with tarfile.open(shard, mode="r|") as tar:
        for info in tar:
            if info.name.endswith(".jpg"):
                image = Image.open(io.BytesIO(tar.extractfile(info).read())).convert("RGB")
                if transform is None:
                    image.resize((size, size), Image.BICUBIC)
                else:
                    transform(image)
                count += 1
    return count


def reader(shard: str, transform: Callable, draft_size: int | None = None) -> int:
    dataset = LaionShards([shard], image_transform=transform, decode_draft_size=draft_size)
    return sum(1 for item in dataset if not hasattr(item.item, "reason"))


def cpu_seconds(run: Callable[[], int]) -> tuple[int, float]:
    """(samples, CPU seconds of this process): on a shared machine the wall clock mostly measures
    the other jobs; one worker is one thread, so its CPU time is what it would take on its own core."""
    start = time.process_time()
    count = run()
    return count, time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--size", type=int, default=336)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one DataLoader worker is one thread of work
    size = args.size
    pre = ImagePreprocessor(size=size)

    def pad_and_resize(image: Image.Image) -> Image.Image:
        return pad_to_square(image, pre.pad_colour).resize((size, size), Image.BICUBIC)

    rows: dict[str, Callable[[str], int]] = {
        "bare PIL decode + resize (baseline)": lambda shard: bare_pil(shard, size),
        "bare PIL decode + pad + resize": lambda shard: bare_pil(shard, size, pad_and_resize),
        "LaionShards + float preprocess, before": lambda shard: reader(shard, legacy_preprocess(pre)),
        "LaionShards + to_uint8 (worker path)": lambda shard: reader(shard, pre.to_uint8),
        "LaionShards + __call__ (float32 out)": lambda shard: reader(shard, pre),
        "LaionShards + to_uint8, JPEG draft": lambda shard: reader(shard, pre.to_uint8, size),
    }
    rates: dict[str, list[float]] = {name: [] for name in rows}
    with tempfile.TemporaryDirectory() as folder:
        urls = write_shards(Path(folder), args.samples)
        shards = wds.shardlists.expand_urls(urls)
        # the rows compare equal work: before and after give the same pixels on these very files
        for item in itertools.islice(LaionShards(urls, shuffle=False), 8):
            image = item.item.image
            assert torch.equal(pre.normalize(pre.to_uint8(image)), legacy_preprocess(pre)(image))
        for _ in range(args.repeats):
            totals = {name: [0, 0.0] for name in rows}
            # interleaved shard by shard (~100 files), so a change of load hits every row alike
            for shard in shards:
                for name, run in rows.items():
                    count, seconds = cpu_seconds(lambda run=run, shard=shard: run(shard))
                    totals[name][0] += count
                    totals[name][1] += seconds
            for name, (count, seconds) in totals.items():
                rates[name].append(count / seconds)
    median = {name: statistics.median(values) for name, values in rates.items()}
    bare = median["bare PIL decode + resize (baseline)"]
    padded = median["bare PIL decode + pad + resize"]
    print(
        f"{args.samples} JPEG photos (crops of 300-640 px, wide, tall and square) -> {size} px, one process;"
        f" samples per CPU-second, median (range) of {args.repeats} repeats"
    )
    for name, value in median.items():
        spread = f"{min(rates[name]):6.1f}-{max(rates[name]):6.1f}"
        print(
            f"{name:<40} {value:7.1f} samples/s ({spread})  {value / bare:5.2f}x bare"
            f"  {value / padded:5.2f}x pad + resize"
        )

    # the work moved out of the workers: normalising a batch of uint8 pixels (here on this CPU)
    batch = torch.randint(0, 256, (64, 3, size, size), dtype=torch.uint8)
    times = [cpu_seconds(lambda: pre.normalize(batch).shape[0])[1] / len(batch) for _ in range(args.repeats)]
    print(
        f"normalize, batched on the CPU: {statistics.median(times) * 1e3:.2f} ms/image;"
        f" a worker ships {3 * size * size // 1024} KiB/image as uint8 instead of"
        f" {12 * size * size // 1024} KiB as float32"
    )


if __name__ == "__main__":
    main()
