"""FID as MLPerf's text_to_image/tools/accuracy_coco.py computes it.

Features come from a network called as `net(uint8 NCHW, return_features=True)`: a TorchScript
FID Inception-v3 (it resizes to 299 px itself); pytorch-fid's own Inception with MLPerf's
`pt_inception-2015-12-05` weights (a state dict, read with weights_only; the `evaluation` extra
installs pytorch-fid); or a small seeded convolutional network the tiny round builds. The
generated images' mean and covariance are compared with the real images' statistics (an npz
with `mu` and `sigma`) by the Frechet distance, with the same retry and imaginary-part rules as
MLPerf's fid_score.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import InputError

FEATURE_NET = "fid_features.pt"
STATISTICS = "fid_statistics.npz"


def load_feature_net(path: Path):
    """A TorchScript feature network, or pytorch-fid's Inception around a state dict of its weights."""
    if not _torchscript(path):
        return _pytorch_fid(path)
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, ValueError, OSError) as err:
        raise InputError(f"{path}: not a TorchScript FID feature network ({str(err).splitlines()[0][:160]})") from None


def _torchscript(path: Path) -> bool:
    """A TorchScript archive holds its code (`<name>/code/...`); a torch.save state dict holds data only."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return True  # not an archive at all: let TorchScript's loader name what is wrong


class _PytorchFID(torch.nn.Module):
    """pytorch-fid's InceptionV3 (pool3, 2048 features) behind the feature-network call: uint8 in, as MLPerf's
    fid_score.py feeds it images scaled to [0, 1]; the network resizes to 299 px and maps to [-1, 1] itself."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, img: torch.Tensor, return_features: bool = True) -> torch.Tensor:
        return self.net(img.float() / 255.0)[0].flatten(1)


def _pytorch_fid(path: Path):
    try:
        from pytorch_fid import inception
    except ImportError:
        raise InputError(
            f"{path}: pytorch-fid's Inception weights (a state dict, not TorchScript) need pytorch-fid and "
            "torchvision: pip install torch==2.14.1 torchvision==0.29.1 'mlperf-round[evaluation]'"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, ValueError, OSError, EOFError) as err:
        raise InputError(f"{path}: not pytorch-fid's Inception weights ({str(err).splitlines()[0][:160]})") from None
    fetch = inception.load_state_dict_from_url  # pytorch-fid asks GitHub for these weights: give it the pinned file
    inception.load_state_dict_from_url = lambda *args, **kwargs: state
    try:
        net = inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    except RuntimeError as err:  # keys or shapes that are not the FID Inception's
        raise InputError(f"{path}: not pytorch-fid's Inception weights ({str(err).splitlines()[0][:160]})") from None
    finally:
        inception.load_state_dict_from_url = fetch
    return _PytorchFID(net).eval()


@torch.no_grad()
def features(net, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """(N, D) float64 features of uint8 HWC images."""
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch])).permute(0, 3, 1, 2).contiguous()
        out.append(net(x, return_features=True).double().cpu().numpy())
    return np.concatenate(out).reshape(len(images), -1)


def statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def save_statistics(path: Path, mu: np.ndarray, sigma: np.ndarray) -> None:
    np.savez_compressed(path, mu=mu, sigma=sigma)


def load_statistics(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path) as f:
            return f["mu"], f["sigma"]
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"{path}: not FID statistics (an npz with mu and sigma: {err})") from None


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise InputError(
            f"FID: generated features ({mu1.shape[0]}) and real statistics ({mu2.shape[0]}) differ in size"
        )
    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(sigma1.dot(sigma2), disp=False)
    if not np.isfinite(covmean).all():  # singular product: offset both diagonals
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


class TinyFeatures(torch.nn.Module):
    """Three seeded convolutions and a global pool: the tiny round's stand-in for Inception-v3."""

    def __init__(self, dim: int, size: int):
        super().__init__()
        self.size = size
        self.convs = torch.nn.ModuleList(
            [torch.nn.Conv2d(3, 16, 3, 2, 1), torch.nn.Conv2d(16, 32, 3, 2, 1), torch.nn.Conv2d(32, dim, 3, 2, 1)]
        )
        for conv in self.convs:  # He init: PyTorch's default gives near-constant features and FID ~ 0 for any sets
            torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")

    def forward(self, img: torch.Tensor, return_features: bool = True) -> torch.Tensor:
        x = img.float() / 127.5 - 1.0  # MLPerf's Inception input scaling, 2x-1
        x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        for conv in self.convs:
            x = torch.relu(conv(x))
        return x.mean(dim=(2, 3))


def build_tiny_feature_net(path: Path, dim: int, size: int, seed: int) -> None:
    torch.manual_seed(seed)
    torch.jit.save(torch.jit.script(TinyFeatures(dim, size).eval()), str(path))
