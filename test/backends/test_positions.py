"""Our mrope position rule equals Qwen2-VL's own get_rope_index, offset by the running position."""
from __future__ import annotations

import inspect

import torch
from cache_models import qwen2_vl

from aura_ros.backends.transformers.positions import mrope_positions, rope_positions


def test_rope_positions():
    assert rope_positions(7, 3).tolist() == [[7, 8, 9]]


def test_mrope_matches_get_rope_index():
    model = qwen2_vl()
    cfg = model.config
    merge = cfg.vision_config.spatial_merge_size
    grid = torch.tensor([[1, 4, 6]])  # t, h, w patches -> 2 x 3 merged tokens
    n_img = int(grid.prod()) // merge**2
    ids = torch.tensor([[5, 6, cfg.vision_start_token_id] + [cfg.image_token_id] * n_img + [7, 8, 9]])
    kwargs = {"image_grid_thw": grid}
    if "mm_token_type_ids" in inspect.signature(model.model.get_rope_index).parameters:
        kwargs["mm_token_type_ids"] = (ids == cfg.image_token_id).int()
    ref, _ = model.model.get_rope_index(ids, **kwargs)
    for start in (0, 37):
        ours, span = mrope_positions(ids, start, cfg.image_token_id, grid, merge)
        assert torch.equal(ours, ref + start)
        assert span == int(ref.max()) + 1
