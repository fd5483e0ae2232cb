"""Stable Diffusion XL on COCO 2014 captions: everything the stages need to know about this benchmark.

The smoke round builds a tiny SDXL pipeline from configs with fixed seeds (`diffusion/
pipeline.py`), one fixed initial latent as MLPerf fixes it, and captions in the shape of
MLPerf's COCO caption set (id, caption). FID and CLIP score use small seeded networks and
FID statistics of images the unoptimized pipeline renders from other latents, so tiny scores
compare entries within a round, not with MLPerf's. The real path fetches the SDXL base
checkpoint at a pinned revision, MLPerf's latents and captions, the FID Inception, the COCO
statistics and the CLIP model, each verified by sha256.
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..jsonfile import read_json

NAME = "stable-diffusion-xl"
LOADGEN_MODEL = "stable-diffusion-xl"  # the model name mlperf.conf knows
KIND = "text-to-image"
REPORT_FIRST_TOKEN = False
COMPLIANCE_TESTS = ("TEST01", "TEST04")
RESPONSE_DTYPE = "uint8"  # responses are HWC RGB images
SCORE_KEYS = ("FID_SCORE", "CLIP_SCORE")
# MLPerf's accepted ranges (submission checker): the reference's FID +-2%, CLIP +-0.2%
RANGES = {"FID_SCORE": (23.01085758, 23.95007626), "CLIP_SCORE": (31.68631873, 31.81331801)}
PUBLISHED_SCORES = {k: (lo + hi) / 2 for k, (lo, hi) in RANGES.items()}
PUBLISHED_SAMPLES = 5000
METRICS_DIR = "metrics"
REAL_LATENT_SEED_OFFSET = 7_919  # the tiny "real images" come from latents the benchmark never uses

_SUBJECTS = "cat dog horse man woman child bus train plane boat bird bear giraffe zebra pizza cake clock vase".split()
_COUNTS = "a one two three several a a a".split()
_ADJECTIVES = "red small large old young white black wooden busy empty sunny snowy".split()
_ACTIONS = ("sitting on", "standing near", "walking along", "lying in", "parked by", "flying over", "looking at")
_PLACES = "a table|a bench|the street|a field|a kitchen|the beach|a river|a building|the grass|a bed".split("|")


# ---------------------------------------------------------------- data
@dataclass(frozen=True)
class Sample:
    id: int
    caption: str  # no reference answer: FID compares the set of images with the real images' statistics


def generate_captions(size: int, seed: int) -> list[dict]:
    """Captions shaped like MLPerf's COCO 2014 set: id and one caption each."""
    rng = random.Random(seed)
    rows = []
    for i in range(size):
        verb = rng.choice(_ACTIONS)
        rows.append({"id": rng.randrange(100_000, 600_000),
                     "caption": f"{rng.choice(_COUNTS)} {rng.choice(_ADJECTIVES)} {rng.choice(_SUBJECTS)} {verb} "
                                f"{rng.choice(_PLACES)}".replace("a a ", "a ")})
    return rows


def load_samples(path: Path) -> list[Sample]:
    """JSON records (id, caption), or MLPerf's tab-separated captions file with those columns."""
    raw = path.read_bytes() if path.exists() else None
    if raw is None:
        raise InputError(f"{path}: missing")
    if raw.lstrip()[:1] == b"[":
        rows = read_json(path)
    else:
        rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8", errors="replace")), delimiter="\t"))
    if not isinstance(rows, list) or not rows:
        raise InputError(f"{path}: no captions (want JSON records or a TSV with columns id and caption)")
    samples = []
    for n, row in enumerate(rows):
        if not isinstance(row, dict) or not str(row.get("caption") or "").strip() or row.get("id") in (None, ""):
            raise InputError(f"{path}: record {n} has no id or an empty caption")
        try:
            samples.append(Sample(int(row["id"]), str(row["caption"]).strip()))
        except (TypeError, ValueError):
            raise InputError(f"{path}: record {n}: id {row['id']!r} is not an integer") from None
    return samples


def read_captions(path: Path) -> list[dict]:
    """Captions as the round keeps them (id, caption), from JSON records or MLCommons' TSV (`captions_source.tsv`,
    `captions.tsv`: id, image_id, caption, ...)."""
    return [{"id": s.id, "caption": s.caption} for s in load_samples(path)]


def read_caption_ids(path: Path) -> list[int] | None:
    """MLCommons' SDXL calibration list (`coco_cal_captions_list.txt`): one COCO caption id per line. None when the
    file is not such a list."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return [int(line) for line in lines] if lines and all(line.isdigit() for line in lines) else None


def resolve_caption_ids(ids: list[int], table: list[dict], where: str, table_name: str) -> list[dict]:
    """Each calibration caption id looked up in a captions table; an id it lacks is an error naming both files."""
    by_id = {int(row["id"]): row["caption"] for row in table}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise InputError(f"{where}: caption id {missing[0]} ({len(missing)} of {len(ids)} ids) is not in {table_name}; "
                         "set dataset.captions_url to the captions file the ids come from")
    return [{"id": i, "caption": by_id[i]} for i in ids]


# ---------------------------------------------------------------- download
def download(bp, out: Path) -> dict:
    """Pipeline, latents, captions and the FID / CLIP networks, built (tiny) or fetched and verified."""
    from .. import checkpoints, sources
    from ..diffusion import pipeline
    from ..metrics import clip_score, fid

    metrics_dir = out / METRICS_DIR
    metrics_dir.mkdir(parents=True)
    if bp.model.source == "tiny":
        pipeline.build_tiny_pipeline(bp.model.tiny, out / "model")
        import torch

        torch.save(pipeline.make_latents(bp.model.tiny.image_size, bp.model.tiny.seed), out / pipeline.LATENTS_FILE)
    else:
        checkpoints.publish(bp.model, out, "model", f"benchmarks.{NAME}.model")
        sources.fetch(bp.model.latents.url, out / pipeline.LATENTS_FILE, bp.model.latents.sha256)
    latents = pipeline.load_latents(out / pipeline.LATENTS_FILE)
    ds = bp.dataset
    if ds.source == "generated":
        (out / "dataset.json").write_text(json.dumps(generate_captions(ds.size, ds.seed), indent=1))
        (out / "calibration.json").write_text(json.dumps(generate_captions(ds.calibration_size, ds.seed + 1_000_003), indent=1))
    else:  # MLCommons' files as shipped: captions TSV, and the calibration list as caption ids into COCO's captions
        captions = read_captions(sources.fetch_shipped(ds.url, out, ds.sha256))
        (out / "dataset.json").write_text(json.dumps(captions, indent=1))
        shipped = sources.fetch_shipped(ds.calibration_url, out, ds.calibration_sha256)
        ids = read_caption_ids(shipped)
        if ids is None:  # captions themselves
            calibration = read_captions(shipped)
        else:
            table = read_captions(sources.fetch_shipped(ds.captions_url, out, ds.captions_sha256)) if ds.captions_url \
                else captions
            calibration = resolve_caption_ids(ids, table, ds.calibration_url, ds.captions_url or ds.url)
        (out / "calibration.json").write_text(json.dumps(calibration, indent=1))
        sources.drop_shipped(out)
    samples = load_samples(out / "dataset.json")
    calib = load_samples(out / "calibration.json")
    ev = bp.evaluation
    if ev.source == "tiny":
        size = latents.shape[-1] * pipeline.VAE_SCALE
        fid.build_tiny_feature_net(metrics_dir / fid.FEATURE_NET, ev.tiny.feature_dim, size, ev.tiny.seed)
        clip_score.build_tiny_clip(metrics_dir / clip_score.MODEL_DIR, ev.tiny.seed)
        real = _render_real_images(out, bp, samples, size)
        mu, sigma = fid.statistics(fid.features(fid.load_feature_net(metrics_dir / fid.FEATURE_NET), real))
        fid.save_statistics(metrics_dir / fid.STATISTICS, mu, sigma)
    else:
        sources.fetch(ev.inception.url, metrics_dir / fid.FEATURE_NET, ev.inception.sha256)
        fid.load_feature_net(metrics_dir / fid.FEATURE_NET)  # a format or package problem fails here, not at accuracy
        sources.fetch(ev.statistics.url, metrics_dir / fid.STATISTICS, ev.statistics.sha256)
        checkpoints.publish(ev.clip, metrics_dir, clip_score.MODEL_DIR, f"benchmarks.{NAME}.evaluation.clip")
    fid.load_statistics(metrics_dir / fid.STATISTICS)  # bad input fails here, not at the first accuracy run
    return {"dataset_samples": len(samples), "calibration_samples": len(calib),
            "checkpoint_bytes": checkpoints.checkpoint_bytes(out, "model"),
            "latent_shape": list(latents.shape), "evaluation": ev.source}


def _render_real_images(out: Path, bp, samples: list[Sample], size: int) -> np.ndarray:
    """The tiny round's "COCO images": the unoptimized pipeline, other latents, the same captions."""
    from ..diffusion import pipeline

    pipe = pipeline.load_pipeline(out / "model")
    latents = pipeline.make_latents(size, bp.model.tiny.seed + REAL_LATENT_SEED_OFFSET, len(samples))
    gen = bp.generation
    images = [pipeline.generate(pipe, [s.caption for s in samples[i:i + 8]], latents[i:i + 8], gen.steps,
                                gen.guidance_scale) for i in range(0, len(samples), 8)]
    return np.concatenate(images)


# ---------------------------------------------------------------- accuracy
def evaluate(outputs: dict[int, np.ndarray], samples: list[Sample], engine_dir: Path, source: Path) -> dict[str, float]:
    """FID against the real images' statistics and mean CLIP score against each caption."""
    from ..backends.torch_sdxl import decode_image, read_spec
    from ..metrics import clip_score, fid

    size = read_spec(engine_dir).image_size
    images = np.stack([decode_image(outputs[i], size) for i in range(len(samples))])
    metrics_dir = source / METRICS_DIR
    mu, sigma = fid.statistics(fid.features(fid.load_feature_net(metrics_dir / fid.FEATURE_NET), images))
    fid_score = fid.frechet_distance(mu, sigma, *fid.load_statistics(metrics_dir / fid.STATISTICS))
    from .. import checkpoints

    model, tokenizer = clip_score.load_clip(checkpoints.resolve(metrics_dir, clip_score.MODEL_DIR))
    clip = float(np.mean(clip_score.clip_scores(model, tokenizer, images, [s.caption for s in samples])))
    return {"FID_SCORE": fid_score, "CLIP_SCORE": clip}


# How MLPerf's ranges carry over to another reference (the tiny one): FID's magnitude depends
# on the feature network, so its range keeps its relative width (+-2%); CLIP score is
# 100 x cosine whatever the model, so its range keeps its absolute width (+-0.0635). Around
# MLPerf's own reference both give MLPerf's ranges exactly.
_RELATIVE_WIDTH = {"FID_SCORE": True, "CLIP_SCORE": False}


def _bounds(key: str, reference: float) -> tuple[float, float]:
    lo, hi = RANGES[key]
    centre = PUBLISHED_SCORES[key]
    if _RELATIVE_WIDTH[key]:
        return reference * lo / centre, reference * hi / centre
    return reference + lo - centre, reference + hi - centre


def targets(reference: dict[str, float], fraction: object = "range", size_ratio: float = 1.0) -> dict[str, float]:
    """Lower bounds: MLPerf's range around the reference (MLPerf's for real runs, the tiny one's for tiny)."""
    return {k: _bounds(k, reference[k])[0] for k in SCORE_KEYS}


def upper_limits(reference: dict[str, float]) -> dict[str, float]:
    return {k: _bounds(k, reference[k])[1] for k in SCORE_KEYS}
