"""`aura-ros bench cameras`, short: the second camera's image tokens are in every step, and the same
budget then holds fewer steps."""
from __future__ import annotations

from aura_ros.bench import cameras


def test_a_second_camera_adds_its_image_tokens_and_the_budget_holds_fewer_steps(tmp_path):
    summary = cameras.run(steps=30, budget_mb=0.5, rounds=1, out=tmp_path, log=lambda *_: None)
    one, two = summary["rows"]
    image_tokens = two["tokens_per_step"] - one["tokens_per_step"]
    assert image_tokens > 0 and one["tokens_per_step"] > image_tokens  # an image block, beside state and action
    assert two["capacity_tokens"] == one["capacity_tokens"]  # the same budget
    assert two["steps_kept"] < one["steps_kept"]
    assert two["full_at_step"] is not None and two["full_at_step"] < one["full_at_step"]
    assert (tmp_path / "cameras_table.md").read_text().count("\n") == 4
