"""DeepCache: full UNet steps refresh a feature cache; shallow steps between them reuse it.

The v4.0 open-division recipe. A UNet's deep blocks change slowly across denoising steps, so
a shallow step runs only the outer levels (conv_in, down levels 0..branch, the matching up
levels, conv_out) and takes the rest (what feeds up level -(branch+1)) from the last full
step. diffusers' UNet does the skip-connection bookkeeping in its own forward, so only
block forwards are replaced, never the UNet's.
"""

from __future__ import annotations

from ..errors import ParamsError


class DeepCache:
    def __init__(self, unet, interval: int, branch: int = 0, where: str = "recipe.deepcache"):
        levels = len(unet.down_blocks)
        if branch > levels - 2:
            raise ParamsError(
                f"{where}.branch: {branch} leaves nothing to cache in a UNet of {levels} levels (at most {levels - 2})"
            )
        self.unet, self.interval, self.branch = unet, interval, branch
        deep_up = len(unet.up_blocks) - (branch + 1)
        self.skippable = list(unet.down_blocks[branch + 1 :]) + [unet.mid_block] + list(unet.up_blocks[:deep_up])
        self.cache: dict[int, object] = {}
        self.original: dict[int, object] = {}
        self.calls = 0
        self.full_steps = 0
        self.shallow_steps = 0
        self.shallow = False
        self.hook = None

    def _wrap(self, i: int, block) -> None:
        original = block.forward

        def forward(*args, **kwargs):
            if self.shallow and i in self.cache:
                return self.cache[i]
            out = original(*args, **kwargs)
            self.cache[i] = out
            return out

        self.original[i] = original
        block.forward = forward

    def _before_unet(self, module, args, kwargs):
        self.shallow = self.calls % self.interval != 0 and bool(self.cache)
        self.calls += 1
        if self.shallow:
            self.shallow_steps += 1
        else:
            self.full_steps += 1

    @property
    def active(self) -> bool:
        return self.hook is not None

    def enable(self) -> DeepCache:
        for i, block in enumerate(self.skippable):
            self._wrap(i, block)
        self.hook = self.unet.register_forward_pre_hook(self._before_unet, with_kwargs=True)
        return self

    def reset(self) -> None:
        """Before each image (batch): a new trajectory starts with a full step."""
        self.calls, self.cache = 0, {}

    def disable(self) -> None:
        if self.hook is not None:
            self.hook.remove()
            self.hook = None
        for i, block in enumerate(self.skippable):
            block.forward = self.original[i]
        self.original.clear()
        self.reset()
