"""Crack look-alikes drawn on patches (`crackloc.data.confusers`): what each draws, where, and on which patches."""

from __future__ import annotations

import pytest
import torch

from crackloc.data.confusers import CONFUSERS, add_confusers
from crackloc.data.synthetic import concrete_texture


def _patches(n: int = 4, size: int = 96) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.stack([concrete_texture(size, size, generator=g) for _ in range(n)]).mul(255).round().byte()


@pytest.mark.parametrize("name", sorted(CONFUSERS))
def test_each_kind_darkens_its_region_and_leaves_the_rest(name):
    base = _patches()
    out, region = CONFUSERS[name](base, torch.Generator().manual_seed(1))
    assert out.shape == base.shape and out.dtype == torch.uint8
    assert region.shape == (4, 1, 96, 96) and region.dtype == torch.bool
    for img, orig, r in zip(out.float(), base.float(), region[:, 0], strict=True):
        assert 0 < int(r.sum()) < r.numel()  # something drawn, not the whole patch
        inside = (img - orig).mean(0)[r]
        assert float(inside.mean()) < -3  # darker where it is drawn (uint8 levels)
        far = ~torch.nn.functional.max_pool2d(r[None, None].float(), 31, stride=1, padding=15)[0, 0].bool()
        if bool(far.any()) and name in ("seam", "joint", "bughole"):  # steps darken a whole side; blotches fade
            assert float((img - orig).abs().mean(0)[far].max()) <= 1.0


def test_the_same_seed_draws_the_same():
    base = _patches()
    a = CONFUSERS["seam"](base, torch.Generator().manual_seed(3))
    b = CONFUSERS["seam"](base, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_add_confusers_changes_crack_free_patches_only():
    base = _patches(8)
    labels = torch.tensor([1.0, 0, 1, 0, 0, 1, 0, 0])
    out, region = add_confusers(base, labels, share=1.0, generator=torch.Generator().manual_seed(0))
    for i in range(8):
        changed = not torch.equal(out[i], base[i])
        assert changed == (labels[i] < 0.5) == bool(region[i].any()), i
    same, none = add_confusers(base, labels, share=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(same, base) and not bool(none.any())
