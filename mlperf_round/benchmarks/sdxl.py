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
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from ..errors import InputError
from ..jsonfile import read_json
from ..kinds import text_to_image
from ..params import CALIBRATION_DEVICE, BenchmarkParams, DatasetParams, HFSource, ModelParams, Strict, URLFile
from .base import Benchmark

NAME = "stable-diffusion-xl"
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
        rows.append(
            {
                "id": rng.randrange(100_000, 600_000),
                "caption": f"{rng.choice(_COUNTS)} {rng.choice(_ADJECTIVES)} {rng.choice(_SUBJECTS)} {verb} "
                f"{rng.choice(_PLACES)}".replace("a a ", "a "),
            }
        )
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
        raise InputError(
            f"{where}: caption id {missing[0]} ({len(missing)} of {len(ids)} ids) is not in {table_name}; "
            "set dataset.captions_url to the captions file the ids come from"
        )
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
        (out / "calibration.json").write_text(
            json.dumps(generate_captions(ds.calibration_size, ds.seed + 1_000_003), indent=1)
        )
    else:  # MLCommons' files as shipped: captions TSV, and the calibration list as caption ids into COCO's captions
        captions = read_captions(sources.fetch_shipped(ds.url, out, ds.sha256))
        (out / "dataset.json").write_text(json.dumps(captions, indent=1))
        shipped = sources.fetch_shipped(ds.calibration_url, out, ds.calibration_sha256)
        ids = read_caption_ids(shipped)
        if ids is None:  # captions themselves
            calibration = read_captions(shipped)
        else:
            table = (
                read_captions(sources.fetch_shipped(ds.captions_url, out, ds.captions_sha256))
                if ds.captions_url
                else captions
            )
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
    return {
        "dataset_samples": len(samples),
        "calibration_samples": len(calib),
        "checkpoint_bytes": checkpoints.checkpoint_bytes(out, "model"),
        "latent_shape": list(latents.shape),
        "evaluation": ev.source,
    }


def _render_real_images(out: Path, bp, samples: list[Sample], size: int) -> np.ndarray:
    """The tiny round's "COCO images": the unoptimized pipeline, other latents, the same captions."""
    from ..diffusion import pipeline

    pipe = pipeline.load_pipeline(out / "model")
    latents = pipeline.make_latents(size, bp.model.tiny.seed + REAL_LATENT_SEED_OFFSET, len(samples))
    gen = bp.generation
    images = [
        pipeline.generate(
            pipe, [s.caption for s in samples[i : i + 8]], latents[i : i + 8], gen.steps, gen.guidance_scale
        )
        for i in range(0, len(samples), 8)
    ]
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


def upper_limits(reference: dict[str, float], size_ratio: float = 1.0) -> dict[str, float]:
    return {k: _bounds(k, reference[k])[1] for k in SCORE_KEYS}


# ---------------------------------------------------------------- params schema (benchmarks.stable-diffusion-xl)
class CaptionDatasetParams(DatasetParams):
    captions_url: str = Field(
        "",
        description="source 'url': the captions table (id, caption; MLCommons' "
        "captions_source.tsv) a caption-id calibration list (coco_cal_captions_list.txt) is "
        "resolved against; empty: against the dataset file itself",
    )
    captions_sha256: str = Field("", description="sha256 of the captions table")

    @model_validator(mode="after")
    def _captions(self) -> CaptionDatasetParams:
        if self.captions_url and not (self.source == "url" and re.fullmatch(r"[0-9a-f]{64}", self.captions_sha256)):
            raise ValueError("captions_url: a captions table needs source 'url' and its captions_sha256")
        return self


class TinySDXL(Strict):
    image_size: int = Field(
        64, ge=32, le=1024, description="image side in pixels (a multiple of 8: the VAE downsamples 8x)"
    )
    unet_channels: list[int] = Field(
        [16, 32], min_length=2, max_length=4, description="UNet block widths, one level each (multiples of 8)"
    )
    layers_per_block: int = Field(1, ge=1, le=3, description="ResBlocks per UNet level (SDXL: 2)")
    text_hidden: int = Field(16, ge=8, le=256, description="hidden size of both text encoders (even)")
    text_layers: int = Field(2, ge=1, le=4, description="layers of each text encoder")
    seed: int = Field(0, description="seed of the weights")

    @model_validator(mode="after")
    def _shape(self) -> TinySDXL:
        if self.image_size % 8:
            raise ValueError(f"image_size: {self.image_size} is not a multiple of 8")
        if any(c % 8 for c in self.unet_channels):
            raise ValueError(
                f"unet_channels: {self.unet_channels} must all be multiples of 8 (the group norms' groups)"
            )
        if self.text_hidden % 2:
            raise ValueError(f"text_hidden: {self.text_hidden} must be even (two attention heads)")
        if self.image_size // 8 < 2 ** (len(self.unet_channels) - 1):
            raise ValueError(f"image_size: {self.image_size} px is too small for {len(self.unet_channels)} UNet levels")
        return self


class SDXLModelParams(ModelParams):
    tiny: TinySDXL = Field(default_factory=TinySDXL, description="config of the locally built SDXL pipeline")
    latents: URLFile = Field(
        default_factory=URLFile, description="MLPerf's fixed initial latents (latents.pt), for source 'hf'"
    )

    @model_validator(mode="after")
    def _latents(self) -> SDXLModelParams:
        if self.source != "tiny" and not self.latents.url:
            raise ValueError(f"latents: source {self.source!r} needs MLPerf's latents.pt (url and sha256)")
        return self


class TinyEvaluation(Strict):
    feature_dim: int = Field(32, ge=4, le=2048, description="features of the tiny FID network")
    seed: int = Field(0, description="seed of the tiny FID and CLIP networks")


class EvaluationParams(Strict):
    """The networks FID and CLIP score are measured with, and the real images' FID statistics."""

    source: Literal["tiny", "url"] = Field(
        "tiny",
        description="tiny: small seeded networks and statistics of images the unoptimized pipeline renders from "
        "other latents (scores comparable within a round only); url: MLPerf's Inception, CLIP and COCO statistics",
    )
    tiny: TinyEvaluation = Field(default_factory=TinyEvaluation, description="the tiny networks")
    inception: URLFile = Field(
        default_factory=URLFile,
        description="FID Inception-v3: TorchScript (forward(uint8 NCHW, "
        "return_features=True)), or MLPerf's pytorch-fid weights pt_inception-2015-12-05-6726825d.pth "
        "(needs the evaluation extra)",
    )
    statistics: URLFile = Field(
        default_factory=URLFile, description="FID statistics of the real images (npz with mu and sigma)"
    )
    clip: HFSource = Field(
        default_factory=HFSource, description="CLIP model in transformers format (MLPerf: ViT-bigG-14, laion2b)"
    )

    @model_validator(mode="after")
    def _complete(self) -> EvaluationParams:
        if self.source == "url":
            for name in ("inception", "statistics"):
                if not getattr(self, name).url:
                    raise ValueError(f"{name}: source 'url' needs url and sha256")
            if not self.clip.complete:
                raise ValueError("clip: source 'url' needs repo, revision and files with their sha256")
        return self


class DiffusionCalibration(Strict):
    batch_size: int = Field(4, ge=1, description="calibration captions per pipeline call")
    device: Literal["auto", "cpu", "cuda"] = CALIBRATION_DEVICE
    steps_collected: int = Field(
        8, ge=1, description="denoising steps whose UNet activations are collected (v4.0 recipe: the first 8)"
    )
    total_steps: int = Field(20, ge=1, description="steps each calibration caption is run for (v4.0 recipe: 20)")

    @model_validator(mode="after")
    def _window(self) -> DiffusionCalibration:
        if self.steps_collected > self.total_steps:
            raise ValueError(f"steps_collected: {self.steps_collected} is more than total_steps {self.total_steps}")
        return self


class DiffusionGeneration(Strict):
    steps: int = Field(20, ge=1, le=200, description="denoising steps (MLPerf: 20)")
    guidance_scale: float = Field(8.0, ge=0, description="classifier-free guidance (MLPerf: 8.0)")
    max_input_tokens: int = Field(77, ge=8, le=77, description="caption tokens the text encoders read (CLIP: 77)")
    negative_prompt: str = Field(
        "normal quality, low quality, worst quality, low res, blurry, nsfw, nude",
        description="the unconditional branch's prompt, as MLPerf's reference SUT passes it (text_to_image/"
        "backend_pytorch.py); empty: none, and the pipeline then guides against zeros",
    )


class SDXLBenchmark(BenchmarkParams):
    model: SDXLModelParams = Field(default_factory=SDXLModelParams, description="where the pipeline comes from")
    dataset: CaptionDatasetParams = Field(
        default_factory=lambda: CaptionDatasetParams(size=32, calibration_size=8),
        description="captions (id, caption) and the calibration caption list",
    )
    calibration: DiffusionCalibration = Field(
        default_factory=DiffusionCalibration, description="the calibration window"
    )
    generation: DiffusionGeneration = Field(default_factory=DiffusionGeneration, description="MLPerf's sampling rules")
    evaluation: EvaluationParams = Field(default_factory=EvaluationParams, description="FID and CLIP networks")


BENCHMARK = Benchmark(
    key=NAME,
    ids={"range": "stable-diffusion-xl"},
    loadgen_model="stable-diffusion-xl",
    kind=text_to_image,
    schema=SDXLBenchmark,
    module=sys.modules[__name__],
    score_keys=SCORE_KEYS,
    published_scores=PUBLISHED_SCORES,
    published_samples=PUBLISHED_SAMPLES,
    precisions=("fp32", "fp16", "int8_sq"),
    lower_scores=("FID_SCORE",),
)
