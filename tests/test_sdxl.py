"""Text-to-image on the tiny SDXL pipeline: real diffusers, modelopt and the FID / CLIP code.

The round-level checks (LoadGen accuracy, performance, TEST01 / TEST04, DVC re-runs) are in
test_round.py; these pin the recipe's parts each on its own.
"""

from __future__ import annotations

import copy
import fnmatch
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mlperf_round.benchmarks.sdxl import TinySDXL
from mlperf_round.diffusion import pipeline
from mlperf_round.diffusion.deepcache import DeepCache
from mlperf_round.diffusion.quantize import TARGETS, calibrate, quantize_unet
from mlperf_round.errors import InputError, ParamsError
from mlperf_round.harness.compliance import verify_performance, verify_test01_accuracy
from mlperf_round.metrics import clip_score, fid

CAPTIONS = ["a red cat sitting on a table", "two old dogs walking along the street"]
STEPS, COLLECTED = 20, 8


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    out = tmp_path_factory.mktemp("sdxl") / "pipeline"
    pipeline.build_tiny_pipeline(TinySDXL(), out)
    return pipeline.load_pipeline(out), pipeline.make_latents(TinySDXL().image_size, 0)


def _step_maxima(pipe, latents) -> dict[str, list[float]]:
    """Independent of modelopt: max |input| of every Linear / Conv2d, per denoising step, by hooks."""
    state = {"step": 0}
    maxima: dict[str, list[float]] = {}

    def hook(name):
        def record(module, args):
            per_step = maxima.setdefault(name, [0.0] * STEPS)
            per_step[state["step"]] = max(per_step[state["step"]], float(args[0].abs().max()))

        return record

    handles = [
        m.register_forward_pre_hook(hook(n))
        for n, m in pipe.unet.named_modules()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
    ]

    def on_step_end(p, i, t, kwargs):
        state["step"] = min(i + 1, STEPS - 1)
        return kwargs

    pipeline.generate(pipe, CAPTIONS, latents, STEPS, 8.0, on_step_end=on_step_end, output="latent")
    for h in handles:
        h.remove()
    return maxima


def test_the_negative_prompt_steers_the_unconditional_branch(pipe):
    """MLPerf's reference SUT guides every image away from a fixed negative prompt; without one, the pipeline guides
    against zero embeddings. The same latent and caption give a different image, so the prompt reaches the UNet."""
    from mlperf_round.benchmarks.sdxl import DiffusionGeneration

    p, latents = pipe
    negative = DiffusionGeneration().negative_prompt
    assert negative == "normal quality, low quality, worst quality, low res, blurry, nsfw, nude"
    with_it = pipeline.generate(p, CAPTIONS[:1], latents, 4, 8.0, output="latent", negative_prompt=negative)
    without = pipeline.generate(p, CAPTIONS[:1], latents, 4, 8.0, output="latent")
    again = pipeline.generate(p, CAPTIONS[:1], latents, 4, 8.0, output="latent", negative_prompt=negative)
    assert torch.equal(with_it, again) and not torch.allclose(with_it, without)


def test_calibration_collects_the_first_8_of_20_steps(pipe):
    base, latents = pipe
    fresh = copy.copy(base)
    fresh.unet = copy.deepcopy(base.unet)
    maxima = _step_maxima(fresh, latents)
    stats, record = calibrate(fresh, CAPTIONS, latents, COLLECTED, STEPS, 8.0, batch_size=2)
    assert record["steps_collected"] == list(range(COLLECTED))
    assert record["steps_run"] == STEPS  # the whole sampling loop ran; only the window was observed
    assert record["unet_calls_collected"] == COLLECTED  # one UNet call per step (CFG batches both halves)
    assert record["samples"] == len(CAPTIONS)
    later_wider = 0
    for name, amax in stats.items():
        window = max(maxima[name][:COLLECTED])
        assert float(amax.max()) == pytest.approx(window, rel=1e-5), name
        later_wider += max(maxima[name]) > window * (1 + 1e-4)
    assert later_wider > 0  # the window matters: some layers see wider inputs after step 7


def test_int8_layers_are_the_v4_recipe_set(pipe):
    base, latents = pipe
    unet = copy.deepcopy(base.unet)
    scratch = copy.copy(base)
    scratch.unet = copy.deepcopy(base.unet)
    stats, _ = calibrate(scratch, CAPTIONS[:1], latents, COLLECTED, STEPS, 8.0, batch_size=1)
    candidates = {n for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    unet, layers = quantize_unet(unet, stats, alpha=0.8)
    quantized = {q["layer"] for q in layers["quantized_layers"]}
    expected = {n for n in candidates if any(fnmatch.fnmatch(n, p) for p, _ in TARGETS)}
    assert quantized == expected and quantized
    assert set(layers["skipped_layers"]) == candidates - expected
    assert any(n.endswith("conv_in") for n in layers["skipped_layers"])  # outside the recipe stays high precision
    for q in layers["quantized_layers"]:
        assert q["smoothquant"] == (q["kind"] == "Linear")  # SmoothQuant on the linears only
        assert q["kind"] == ("Conv2d" if ".resnets." in q["layer"] else "Linear")
    # the quantized UNet still denoises close to the original
    ref = pipeline.generate(base, CAPTIONS, latents, STEPS, 8.0).astype(int)
    int8 = copy.copy(base)
    int8.unet = unet
    got = pipeline.generate(int8, CAPTIONS, latents, STEPS, 8.0).astype(int)
    assert 0 < np.abs(ref - got).max() < 64


def test_deepcache_runs_fewer_full_unet_evaluations_than_steps(pipe):
    base, latents = pipe
    deep_runs = {"n": 0}
    # an inner module: hooks on a cached block itself still fire when its patched forward returns the cache
    handle = base.unet.mid_block.resnets[0].register_forward_pre_hook(
        lambda m, a: deep_runs.__setitem__("n", deep_runs["n"] + 1)
    )
    plain = pipeline.generate(base, CAPTIONS, latents, STEPS, 8.0)
    assert deep_runs["n"] == STEPS
    cache = DeepCache(base.unet, interval=3, branch=0).enable()
    deep_runs["n"] = 0
    try:
        cached = pipeline.generate(base, CAPTIONS, latents, STEPS, 8.0)
        assert (cache.full_steps, cache.shallow_steps) == (7, 13)
        assert deep_runs["n"] == 7  # the deep blocks really ran only on full steps
        assert 0 < np.abs(plain.astype(int) - cached).max() < 64
    finally:
        cache.disable()
        handle.remove()
    assert np.array_equal(pipeline.generate(base, CAPTIONS, latents, STEPS, 8.0), plain)  # disable restores
    with pytest.raises(ParamsError, match="branch"):
        DeepCache(base.unet, interval=3, branch=1)


def test_frechet_distance_and_clip_score(tmp_path):
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    s1, s2 = np.diag(rng.uniform(0.5, 2, 4)), np.diag(rng.uniform(0.5, 2, 4))
    closed_form = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.sqrt(s1 @ s2)))
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(closed_form, rel=1e-9)
    fid.build_tiny_feature_net(tmp_path / "f.pt", 16, 32, seed=0)
    net = fid.load_feature_net(tmp_path / "f.pt")
    images = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    mu, sigma = fid.statistics(fid.features(net, images))
    assert fid.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6)
    darker = fid.statistics(fid.features(net, images // 2))
    assert fid.frechet_distance(mu, sigma, *darker) > 0.01
    fid.save_statistics(tmp_path / "s.npz", mu, sigma)
    assert np.array_equal(fid.load_statistics(tmp_path / "s.npz")[0], mu)
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(InputError, match="bad.npz"):
        fid.load_statistics(tmp_path / "bad.npz")

    clip_score.build_tiny_clip(tmp_path / "clip", seed=0)
    model, tok = clip_score.load_clip(tmp_path / "clip")
    from PIL import Image

    large = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    scores = clip_score.clip_scores(model, tok, large, CAPTIONS)
    with torch.no_grad():  # by hand: open_clip's transform (PIL bicubic to 32 px), then 100 x cosine
        x = torch.from_numpy(
            np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.BICUBIC)) for im in large])
        )
        x = x.permute(0, 3, 1, 2).float() / 255
        x = (x - torch.tensor(clip_score.MEAN).view(1, 3, 1, 1)) / torch.tensor(clip_score.STD).view(1, 3, 1, 1)
        img = clip_score._pooled(model.get_image_features(pixel_values=x))
        t = tok(CAPTIONS, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
        txt = clip_score._pooled(model.get_text_features(**t))
        manual = 100 * torch.nn.functional.cosine_similarity(img, txt).numpy()
    np.testing.assert_allclose(scores, manual, rtol=1e-5)
    # a non-square image: the shorter side to 32 (the longer one 64 x 32 / 48 = 42, truncated), then a center crop
    tall = rng.integers(0, 256, (1, 64, 48, 3), dtype=np.uint8)
    resized = np.asarray(Image.fromarray(tall[0]).resize((32, 42), Image.BICUBIC), dtype=np.float32)[5:37] / 255
    expected = (
        torch.from_numpy(resized).permute(2, 0, 1)[None] - torch.tensor(clip_score.MEAN).view(1, 3, 1, 1)
    ) / torch.tensor(clip_score.STD).view(1, 3, 1, 1)
    assert torch.equal(clip_score.preprocess(tall, 32), expected)


def _log(path: Path, rows: dict[int, bytes]) -> Path:
    path.write_text(json.dumps([{"seq_id": i, "qsl_idx": k, "data": v.hex()} for i, (k, v) in enumerate(rows.items())]))
    return path


def test_test01_compares_logged_images_with_the_accuracy_run(tmp_path):
    acc = _log(tmp_path / "acc.json", {0: b"\x10\x11", 1: b"\x20\x21", 2: b"\x30\x31"})
    same = verify_test01_accuracy(acc, _log(tmp_path / "a.json", {1: b"\x20\x21", 2: b"\x30\x99"}), "uint8")
    assert same["passed"] and same["matched"] == 2 and same["identical"] == 1  # first byte decides, as MLCommons'
    wrong = verify_test01_accuracy(acc, _log(tmp_path / "b.json", {1: b"\x21\x21"}), "uint8")
    assert not wrong["passed"] and "sample 1" in wrong["failures"][0]
    unmatched = verify_test01_accuracy(acc, _log(tmp_path / "c.json", {7: b"\x20"}), "uint8")
    assert not unmatched["passed"]
    empty = _log(tmp_path / "e.json", {4: b""})  # two empty answers agree, as in MLCommons' verify_accuracy.py
    assert verify_test01_accuracy(empty, _log(tmp_path / "f.json", {4: b""}), "uint8")["passed"]
    assert not verify_test01_accuracy(empty, _log(tmp_path / "g.json", {4: b"\x01"}), "uint8")["passed"]


def _summary(run_dir: Path, scenario: str, score: float, valid: str = "VALID") -> Path:
    key = "Samples per second" if scenario == "Offline" else "Completed samples per second"
    run_dir.mkdir()
    (run_dir / "mlperf_log_summary.txt").write_text(
        f"Scenario : {scenario}\n{key} : {score}\nResult is : {valid}\n\nNo errors encountered during test.\n"
    )
    return run_dir


@pytest.mark.parametrize(
    "test, score, passed",
    [
        ("TEST04", 10.5, True),
        ("TEST04", 11.5, False),
        ("TEST04", 5.0, True),
        ("TEST01", 9.5, True),
        ("TEST01", 8.5, False),
        ("TEST01", 11.5, False),
    ],
)
def test_performance_verification(tmp_path, test, score, passed):
    """v5.0's summary-reading verify_performance.py (later versions: tests/test_mlcommons_verification.py)."""
    ref = _summary(tmp_path / "ref", "Offline", 10.0)
    result = verify_performance(ref, _summary(tmp_path / "t", "Offline", score), "Offline", test, "v5.0")
    assert result["passed"] is passed
    server = verify_performance(
        _summary(tmp_path / "r2", "Server", 10.0), _summary(tmp_path / "t2", "Server", 10.2), "Server", test, "v5.0"
    )
    assert server["passed"]
    invalid = verify_performance(ref, _summary(tmp_path / "t3", "Offline", 10.0, "INVALID"), "Offline", test, "v5.0")
    assert not invalid["passed"] and invalid["reason"] == "Test results are invalid"


def _fid_inception_state(path: Path) -> dict:
    """Seeded weights in the layout of pytorch-fid's pt_inception-2015-12-05 file: torchvision's Inception-v3 with
    1,008 classes and no auxiliary head has the same names and shapes (pytorch-fid changes pooling, not weights)."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    state = torchvision.models.inception_v3(
        num_classes=1008, aux_logits=False, init_weights=True, weights=None
    ).state_dict()
    torch.save(state, path)
    return state


def test_pytorch_fid_weights_give_pytorch_fids_own_features(tmp_path):
    """MLPerf's FID network as pytorch-fid builds it, from the pinned weights file (weights_only), never fetched."""
    inception = pytest.importorskip("pytorch_fid.inception")
    state = _fid_inception_state(tmp_path / "pt_inception.pth")
    net = fid.load_feature_net(tmp_path / "pt_inception.pth")
    fetch = inception.load_state_dict_from_url
    inception.load_state_dict_from_url = lambda *args, **kwargs: state
    try:
        theirs = inception.InceptionV3([3]).eval()
    finally:
        inception.load_state_dict_from_url = fetch
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    with torch.no_grad():
        batch = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().float() / 255  # the layout features() feeds
        expected = theirs(batch)[0].flatten(1).double().numpy()
    ours = fid.features(net, images)
    assert ours.shape == (2, 2048)
    np.testing.assert_array_equal(ours, expected)


def test_pytorch_fid_weights_without_the_extra_are_one_line(tmp_path):
    try:
        import pytorch_fid  # noqa: F401

        pytest.skip("pytorch-fid is installed here")
    except ImportError:
        pass
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3)}, tmp_path / "pt_inception.pth")
    with pytest.raises(InputError, match=r"pt_inception\.pth: pytorch-fid's Inception weights .* need pytorch-fid"):
        fid.load_feature_net(tmp_path / "pt_inception.pth")


def test_clip_images_are_prepared_as_open_clip_prepares_them():
    """MLPerf's accuracy_coco.py scores CLIP with open_clip's own eval transform; ours gives the same tensors."""
    open_clip = pytest.importorskip("open_clip")
    from PIL import Image

    transform = open_clip.image_transform(224, is_train=False, mean=clip_score.MEAN, std=clip_score.STD)
    rng = np.random.default_rng(1)
    for shape in ((1024, 1024, 3), (300, 500, 3), (500, 301, 3)):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        assert torch.equal(clip_score.preprocess(image[None], 224)[0], transform(Image.fromarray(image))), shape
