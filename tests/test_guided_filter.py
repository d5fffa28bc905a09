"""The guided filter: a loop-by-loop numpy re-derivation, what it keeps and what it restores, and its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stain_transforms.functional.guided import box_mean, guided_filter


def numpy_guided_filter(guide: np.ndarray, image: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s filter written out per window: (H, W, 3) arrays, edges replicated, ridge regression by lstsq."""
    height, width, _ = guide.shape
    side = 2 * radius + 1
    padded_guide = np.pad(guide, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    padded_image = np.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    slopes = np.empty((height, width, 3, 3))  # per window: image = guide @ slope + offset
    offsets = np.empty((height, width, 3))
    for y in range(height):
        for x in range(width):
            g = padded_guide[y : y + side, x : x + side].reshape(-1, 3)
            p = padded_image[y : y + side, x : x + side].reshape(-1, 3)
            centred_g, centred_p = g - g.mean(0), p - p.mean(0)
            # Ridge regression as an augmented least-squares problem: rows sqrt(n * eps) * I penalise the slope.
            design = np.vstack([centred_g, np.sqrt(len(g) * eps) * np.eye(3)])
            response = np.vstack([centred_p, np.zeros((3, 3))])
            slopes[y, x] = np.linalg.lstsq(design, response, rcond=None)[0]
            offsets[y, x] = p.mean(0) - g.mean(0) @ slopes[y, x]
    fits = np.concatenate([slopes.reshape(height, width, 9), offsets], axis=2)
    padded_fits = np.pad(fits, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    mean_fits = np.stack([
        [padded_fits[y : y + side, x : x + side].reshape(-1, 12).mean(0) for x in range(width)] for y in range(height)
    ])
    mean_slopes, mean_offsets = mean_fits[..., :9].reshape(height, width, 3, 3), mean_fits[..., 9:]
    return np.einsum("hwi,hwij->hwj", guide, mean_slopes) + mean_offsets


def as_batch(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def step_edge(size: int = 32) -> np.ndarray:
    """A pink region meeting a purple one along a vertical edge, with mild noise: (size, size, 3) in [0, 1]."""
    rng = np.random.default_rng(0)
    image = np.where(np.arange(size)[None, :, None] < size // 2, [0.9, 0.6, 0.8], [0.4, 0.2, 0.6])
    return np.clip(np.broadcast_to(image, (size, size, 3)) + rng.normal(0, 0.01, (size, size, 3)), 0, 1)


@pytest.mark.parametrize(("radius", "eps"), [(1, 1e-3), (2, 1e-2), (3, 1e-4)])
def test_matches_the_window_by_window_derivation(radius, eps):
    rng = np.random.default_rng(radius)
    guide, image = rng.random((11, 9, 3)), rng.random((11, 9, 3))
    expected = numpy_guided_filter(guide, image, radius, eps)
    got = guided_filter(as_batch(guide), as_batch(image), radius, eps)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-10)


def test_box_mean_is_the_window_mean_with_replicated_edges():
    rng = np.random.default_rng(1)
    x = rng.random((7, 5))
    padded = np.pad(x, 2, mode="edge")
    expected = np.array([[padded[y : y + 5, c : c + 5].mean() for c in range(5)] for y in range(7)])
    np.testing.assert_allclose(box_mean(torch.from_numpy(x)[None, None], 2)[0, 0].numpy(), expected, atol=1e-12)


def test_a_recolouring_of_the_guide_is_kept():
    guide = step_edge()
    recoloured = guide @ np.array([[0.8, 0.1, 0.0], [0.0, 0.7, 0.1], [0.1, 0.0, 0.9]]) + 0.05
    out = guided_filter(as_batch(guide), as_batch(recoloured), 4, 1e-8)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(out, recoloured, atol=1e-4)


def test_a_blurred_edge_is_sharpened_back_to_the_guides():
    """A generator that recolours and blurs: the filter brings the step back and keeps the colours."""
    guide = step_edge()
    recoloured = as_batch(guide[..., ::-1] * 0.9)
    blurred = box_mean(recoloured, 3)
    out = guided_filter(as_batch(guide), blurred, 4, 1e-4)

    def steepest_step(image: torch.Tensor) -> float:
        return image.diff(dim=-1).abs().amax(dim=-1).mean().item()  # per row and channel, then averaged

    assert steepest_step(blurred) < 0.25 * steepest_step(recoloured)
    assert steepest_step(out) > 0.5 * steepest_step(recoloured)  # about 0.57: the window means still mix the sides
    # Far from the edge, where the blur changed only the noise, the colours are the generator's.
    far = (..., slice(None), slice(0, 6))
    torch.testing.assert_close(out[far].mean((-2, -1)), blurred[far].mean((-2, -1)), atol=1e-3, rtol=0)


def test_works_on_the_batch_and_in_float32():
    rng = np.random.default_rng(2)
    guide, image = torch.from_numpy(rng.random((2, 3, 20, 24))), torch.from_numpy(rng.random((2, 3, 20, 24)))
    both = guided_filter(guide.float(), image.float(), 3, 1e-3)
    for i in range(2):
        alone = guided_filter(guide[i : i + 1], image[i : i + 1], 3, 1e-3)
        torch.testing.assert_close(both[i : i + 1].double(), alone, atol=1e-4, rtol=0)
    assert torch.isfinite(both).all()


def test_flat_guide_gives_the_local_mean_of_the_image():
    """No structure to follow: the ridge takes the slopes to zero, the output is the twice box-filtered image."""
    guide = torch.full((1, 3, 16, 16), 0.5, dtype=torch.float64)
    image = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    out = guided_filter(guide, image, 2, 1e-3)
    torch.testing.assert_close(out, box_mean(box_mean(image, 2), 2))


@pytest.mark.parametrize(
    ("guide", "image", "radius", "eps", "message"),
    [
        (torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9), 2, 1e-3, "same shape"),
        (torch.rand(3, 8, 8), torch.rand(3, 8, 8), 2, 1e-3, r"\(B, 3, H, W\)"),
        (torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), 2, 1e-3, r"\(B, 3, H, W\)"),
        (torch.randint(0, 255, (1, 3, 8, 8)), torch.rand(1, 3, 8, 8), 2, 1e-3, "float"),
        (torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), 0, 1e-3, "radius"),
        (torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), 2.5, 1e-3, "radius"),
        (torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), 2, 0.0, "eps"),
        (torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), 2, float("nan"), "eps"),
    ],
)
def test_bad_arguments_are_named(guide, image, radius, eps, message):
    with pytest.raises(ValueError, match=message):
        guided_filter(guide, image, radius, eps)
