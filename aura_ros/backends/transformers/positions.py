"""Position ids for one chunk appended to the cache: 1-D RoPE, or Qwen2-VL's 3-D mrope.

Qwen2-VL gives text tokens the same position in t, h and w, and an image's tokens t = start,
h = start + row, w = start + column on the merged patch grid; the text after the image resumes
at start + max(rows, columns). Continuing a cache with a new image needs these ids explicitly,
offset by the running position, or the model silently gives image tokens text positions. The
rule is written here rather than calling ``get_rope_index``, whose signature differs between
transformers 5.17 and 5.23 (``mm_token_type_ids``); a test checks both agree.
"""
from __future__ import annotations

import torch


def rope_positions(start: int, n: int, device=None) -> torch.Tensor:
    """[1, n] positions start .. start + n - 1."""
    return torch.arange(start, start + n, device=device)[None]


def mrope_positions(input_ids: torch.Tensor, start: int, image_token_id: int | None = None,
                    image_grid_thw: torch.Tensor | None = None,
                    spatial_merge_size: int = 1) -> tuple[torch.Tensor, int]:
    """3-D positions [3, 1, n] for a chunk of one sequence, and the span it advances.

    input_ids: [1, n]; image_grid_thw: [num_images, 3] (t, h, w in patches, before merging).
    """
    ids = input_ids[0]
    n = ids.shape[0]
    pos = torch.empty(3, n, dtype=torch.long)
    grids = iter(image_grid_thw.tolist()) if image_grid_thw is not None else iter(())
    cur, i = start, 0
    is_image = (ids == image_token_id) if image_token_id is not None else torch.zeros(n, dtype=torch.bool)
    while i < n:
        if not bool(is_image[i]):
            pos[:, i] = cur
            cur += 1
            i += 1
            continue
        t, h, w = next(grids)
        h, w = h // spatial_merge_size, w // spatial_merge_size
        count = t * h * w
        tt = torch.arange(t).repeat_interleave(h * w)
        hh = torch.arange(h).repeat_interleave(w).repeat(t)
        ww = torch.arange(w).repeat(t * h)
        pos[0, i: i + count] = cur + tt
        pos[1, i: i + count] = cur + hh
        pos[2, i: i + count] = cur + ww
        cur += max(t, h, w)
        i += count
    return pos[:, None, :], cur - start
