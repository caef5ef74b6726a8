"""Video indexing benchmark: frames of 1080p video per second, and minutes of video indexed per minute.

    python -m tests.bench.video_bench [--seconds 30] [--shape vit-s14] [--workers N] [--json out.json]

One run measures, on the same generated 1080p H.264 clip (moving gradients, a cut every 7 s):
  decode   the decode worker's work alone (video.decode_video: decode every frame, sample, prepare)
  model    the model alone on as many 224 px inputs as the clip yields frames (the baseline)
  index    `Index.add(video=...)` end to end (workers, model, SQLite, FAISS)
A random-weight ViT-S/14 (the compute of dinov2-small) stands in for the real weights.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def make_clip(path: Path, *, seconds: float, fps: int = 30, size: tuple[int, int] = (1920, 1080)) -> Path:
    """A 1080p H.264 clip whose content moves every frame and cuts to a new palette every 7 s."""
    import av

    w, h = size
    n = int(seconds * fps)
    path.parent.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:h, 0 : w + 8 * 7 * fps].astype(np.float32)  # wide enough to pan 8 px a frame for 7 s
    with av.open(str(path), mode="w", options={"movflags": "+faststart"}) as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "superfast", "crf": "23"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        base = None
        rng = np.random.default_rng(0)
        # Sensor-like noise, so the bitrate is near a phone's (~10-20 Mbit/s), not a synthetic clip's few hundred kbit/s.
        noise = [rng.integers(-4, 5, (h, w, 1), dtype=np.int16) for _ in range(4)]
        for i in range(n):
            scene, step = divmod(i, 7 * fps)
            if step == 0:  # a cut: a new palette, drawn once, then panned
                base = np.stack([127 + 100 * np.sin(x / (50 + 25 * c + 30 * scene) + y / (70 + 20 * c)) for c in range(3)], -1)
                base = base.astype(np.uint8)
            pixels = np.clip(base[:, 8 * step : 8 * step + w].astype(np.int16) + noise[i % 4], 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0, help="length of the clip")
    ap.add_argument("--shape", default="vit-s14", choices=("vit-s14", "tiny"))
    ap.add_argument("--workers", type=int, default=None, help="decode processes [default: CPU count]")
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from dinosearch.api import Index
    from dinosearch.devmodel import save_random_dinov2
    from dinosearch.embed import Dinov2Embedder  # noqa: F401  (loaded through Index)
    from dinosearch.records import VideoOptions
    from dinosearch.video import decode_video

    options = VideoOptions(interval=args.interval, max_frames=10_000)
    with tempfile.TemporaryDirectory(prefix="dinosearch-video-bench-") as tmp:
        tmp_path = Path(tmp)
        t = time.perf_counter()
        clip = make_clip(tmp_path / "clips" / "clip.mp4", seconds=args.seconds)
        mbit = clip.stat().st_size * 8 / 1e6 / args.seconds
        print(f"clip: {args.seconds:g} s of 1080p30 H.264, {clip.stat().st_size / 1e6:.1f} MB ({mbit:.1f} Mbit/s), made in {time.perf_counter() - t:.1f} s")
        model_dir = save_random_dinov2(tmp_path / "model", shape=args.shape)
        source_frames = int(args.seconds * 30)
        res: dict[str, object] = {"seconds_of_video": args.seconds, "source_frames": source_frames, "mbit_s": mbit}

        with Index(tmp_path / "warm", model=str(model_dir), device="cpu") as ix:
            embedder = ix.embedder(record=True)
        decode_s, sampled = [], 0
        for _ in range(args.repeats):
            t = time.perf_counter()
            with open(clip, "rb") as f:
                decoded = decode_video(f, embedder.preprocess, options=options)
            decode_s.append(time.perf_counter() - t)
            sampled = len(decoded.frames)
        pixels = np.stack([fr.pixels for fr in decoded.frames])
        model_s = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            for start in range(0, len(pixels), embedder.batch_size):
                embedder.embed(pixels[start : start + embedder.batch_size])
            model_s.append(time.perf_counter() - t)
        index_s = []
        for r in range(args.repeats):
            with Index(tmp_path / f"index{r}", model=str(model_dir), device="cpu", workers=args.workers) as ix:
                t = time.perf_counter()
                report = ix.add(clip.parent, video=options)
                index_s.append(time.perf_counter() - t)
                assert report.added == 1 and report.failed == 0, report
        d, m, e = statistics.median(decode_s), statistics.median(model_s), statistics.median(index_s)
        res.update(sampled_frames=sampled, decode_seconds=decode_s, model_seconds=model_s, index_seconds=index_s)
        rows = [
            ("frames sampled (interval + scene changes)", f"{sampled}"),
            ("decode alone, one process: source frames/s", f"{source_frames / d:.1f}  ({args.seconds / d:.2f}x real time)"),
            ("model alone (baseline): sampled frames/s", f"{sampled / m:.1f}"),
            ("index end to end: source frames/s of video", f"{source_frames / e:.1f}"),
            ("index end to end: sampled frames embedded/s", f"{sampled / e:.1f}"),
            ("minutes of 1080p video indexed per minute", f"{args.seconds / e:.2f}"),
            ("end to end / model alone (sampled frames/s)", f"{(sampled / e) / (sampled / m):.2f}"),
        ]
        print(f"video indexing, {args.shape}, {os.cpu_count()} CPUs (medians of {args.repeats}):")
        for what, value in rows:
            print(f"  {what:<48} {value}")
        if args.json:
            args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
