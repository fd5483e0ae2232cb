"""The torch backend for text-to-image: an engine directory and the batcher that serves it.

An engine directory holds the entry's UNet (fake-quantized INT8 or not), names the pipeline
whose other components it runs with (`source.json`: they are read where they were verified),
and holds MLPerf's fixed initial latents and `engine.json`: sampling rules, batch limit, the
DeepCache schedule and package versions. Requests are captions; answers are HWC uint8
images, the bytes MLPerf's reference SUT returns.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..checkpoints import link_source, link_tree, linked_source
from ..errors import InputError
from . import torch_llm
from .torch_llm import ENGINE_FILE, open_spec, package_versions, place_kernels  # noqa: F401  (versions: the build's interface)

UNET_DIR = "unet"


@dataclass(frozen=True)
class DiffusionSpec:
    backend: str
    benchmark: str
    precision: str
    dtype: str
    max_batch_size: int
    steps: int
    guidance_scale: float
    image_size: int
    max_input_len: int
    deepcache_interval: int
    deepcache_branch: int
    threads: int
    versions: dict
    device: str = "auto"
    kind: str = "text-to-image"
    kernels: str = "emulated"  # auto | emulated | native (INT8 linears on torch._int_mm)
    compile: str = "off"  # torch.compile mode of the UNet (whole, or per block under DeepCache) and the VAE decoder
    channels_last: bool = False
    kernel_choice: dict | None = None  # auto: kernel_choice.KernelChoice as measured when the engine was built
    negative_prompt: str = ""  # the unconditional branch's prompt (MLPerf's reference SUT: a fixed one)

    def kernel_rows(self) -> int:
        """Rows of the UNet's attention and feed-forward GEMMs at its first attention level (half the latent side),
        for a full batch with its unconditional twin; capped, as timing only needs the regime, not every row."""
        latent = self.image_size // 16
        return min(4096, 2 * self.max_batch_size * latent * latent)


def build(pipeline: Path, unet_dir: Path, latents: Path, spec: DiffusionSpec, out: Path) -> None:
    """The entry's UNet (linked, not copied) and the pipeline it replaces the UNet of, named, not copied: its text
    encoders and VAE are read where the download stage verified them."""
    link_tree(unet_dir, out / UNET_DIR)
    link_source(out, pipeline)
    shutil.copy2(latents, out / "latents.pt")
    (out / ENGINE_FILE).write_text(json.dumps(asdict(spec), indent=1, sort_keys=True))


def read_spec(engine_dir: Path) -> DiffusionSpec:
    return torch_llm.read_spec(engine_dir, DiffusionSpec)


class TorchSDXL:
    """The engine: the pipeline as built; `generate` renders captions, `scheduler()` serves LoadGen."""

    def __init__(self, engine_dir: Path):
        from ..diffusion.pipeline import load_latents, load_pipeline
        from ..diffusion.quantize import load_unet

        self.spec = read_spec(engine_dir)
        self.device = open_spec(self.spec, engine_dir)
        unet = load_unet(engine_dir / UNET_DIR, self.spec.dtype)
        self.pipe = load_pipeline(linked_source(engine_dir), self.spec.dtype, unet=unet, device=str(self.device))
        self.kernels, self.kernel_record = place_kernels(self.pipe.unet, self.spec, self.device, str(engine_dir))
        self.latents = load_latents(engine_dir / "latents.pt")
        self.deepcache = None
        if self.spec.deepcache_interval > 1:
            from ..diffusion.deepcache import DeepCache

            self.deepcache = DeepCache(
                self.pipe.unet, self.spec.deepcache_interval, self.spec.deepcache_branch
            ).enable()
        self.compiled = optimize_graphs(self.pipe, self.spec, per_block=self.deepcache is not None)
        self.unet_calls = {"full": 0, "shallow": 0}  # UNet steps, summed over images
        self.images = 0

    def sample_ids(self, sample) -> str:
        """What a request carries: the caption (the pipeline tokenizes it)."""
        return sample.caption

    def generate(self, captions: list[str]) -> np.ndarray:
        """uint8 (N, H, W, 3) images, each from the fixed initial latent."""
        from ..diffusion.pipeline import generate

        s = self.spec
        cached = self.deepcache is not None and self.deepcache.active
        if cached:
            self.deepcache.reset()
            before = (self.deepcache.full_steps, self.deepcache.shallow_steps)
        n = len(captions)  # every image of a batch takes the same steps
        padded = n if s.compile == "off" else bucket(n, s.max_batch_size)  # compiled graphs: a few batch sizes only
        images = generate(
            self.pipe,
            captions + captions[-1:] * (padded - n),
            self.latents,
            s.steps,
            s.guidance_scale,
            negative_prompt=s.negative_prompt,
        )[:n]
        if cached:
            self.unet_calls["full"] += n * (self.deepcache.full_steps - before[0])
            self.unet_calls["shallow"] += n * (self.deepcache.shallow_steps - before[1])
        else:
            self.unet_calls["full"] += n * s.steps
        self.images += n
        return images

    def warmup(self) -> None:
        """Every batch size the engine will see, uncounted: first calls pay for allocations, kernel selection and
        compilation (one graph per bucket when compiled)."""
        sizes = [self.spec.max_batch_size] if self.spec.compile == "off" else buckets(self.spec.max_batch_size)
        for n in sizes:
            self.generate(["warm-up"] * n)
        self.unet_calls, self.images = {"full": 0, "shallow": 0}, 0

    def scheduler(self, policy: str | None = None):
        return ImageBatcher(self)

    def stats(self) -> dict:
        return {"images": self.images, "unet_calls": self.unet_calls}


def bucket(n: int, limit: int) -> int:
    """The batch size a compiled engine runs n images at: the next power of two, at most `limit`."""
    return min(1 << max(n - 1, 0).bit_length(), limit)


def buckets(limit: int) -> list[int]:
    return sorted({bucket(n, limit) for n in range(1, limit + 1)})


def optimize_graphs(pipe, spec: DiffusionSpec, per_block: bool) -> dict:
    """Channels-last and torch.compile, as the spec says; what was done, for the build's record.

    DeepCache decides per step in Python which blocks run, so under it the UNet is compiled per
    ResNet and transformer block (regional compilation), below DeepCache's block boundaries; without
    it, whole. Inductor's graph cache (TORCHINDUCTOR_CACHE_DIR) makes a second build's compile cheap.
    """
    import torch

    done = {"channels_last": spec.channels_last, "compile": spec.compile, "compiled_modules": 0}
    if spec.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if spec.compile == "off":
        return done
    import torch._dynamo

    # per-block compilation: one entry per distinct block shape, more than dynamo's default 8 per code object
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
    # dynamic=None: the first batch size compiles static, the second recompiles with a dynamic batch dimension that
    # every later bucket reuses (CUDA graphs are still recorded per bucket, which is cheap)
    kwargs = {"mode": None if spec.compile == "default" else spec.compile, "dynamic": None}
    if per_block:
        from diffusers.models.resnet import ResnetBlock2D
        from diffusers.models.transformers.transformer_2d import Transformer2DModel

        targets = [m for m in pipe.unet.modules() if isinstance(m, (ResnetBlock2D, Transformer2DModel))]
    else:
        targets = [pipe.unet]
    for module in targets + [pipe.vae.decoder]:
        module.compile(**kwargs)
    done["compiled_modules"] = len(targets) + 1
    done["compile_scope"] = "blocks" if per_block else "unet"
    return done


class ImageBatcher(torch_llm.StaticBatcher):
    """Whatever has arrived, up to max_batch_size captions, in one pipeline call; one "done" event
    per image, its bytes as the payload."""

    def submit(self, rid: int, caption: str) -> None:
        self.waiting.append((rid, caption))

    def _events(self, rid: int, image: np.ndarray) -> list:
        from .engine import Event

        return [Event(rid, "done", np.ascontiguousarray(image).reshape(-1))]


def decode_image(data: np.ndarray, image_size: int) -> np.ndarray:
    """A logged response back to its HWC image, as MLPerf's accuracy_coco.py reshapes it."""
    expected = image_size * image_size * 3
    if data.size != expected:
        raise InputError(
            f"response of {data.size} bytes is not a {image_size}x{image_size} RGB image ({expected} bytes)"
        )
    return data.reshape(image_size, image_size, 3)
