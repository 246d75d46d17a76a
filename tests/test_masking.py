import pytest
import torch

from domainmae.models.masking import (
    STRATEGIES,
    masking_from_scores,
    num_keep,
    sample_masking,
)

GRID = (8, 8)


def _draw(strategy, channels=3, ratio=0.75, batch=4, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return sample_masking(strategy, batch, channels, GRID, ratio, generator=g, **kw)


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "sensor"])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_strategy_keeps_exactly_round_L_times_1_minus_r(strategy, channels):
    if strategy == "channel" and channels == 1:
        with pytest.raises(ValueError, match="cannot hide 1 whole group"):  # the only channel > budget
            _draw(strategy, channels)
        return
    m = _draw(strategy, channels)
    length = channels * 64
    keep = round(length * 0.25)
    assert m.ids_keep.shape == (4, keep)
    assert m.mask.shape == (4, length)
    assert torch.all(m.mask.sum(1) == length - keep)
    # ids_restore inverts the shuffle: the first K of argsort(ids_restore) are the kept ids ...
    torch.testing.assert_close(torch.argsort(m.ids_restore, dim=1)[:, :keep], m.ids_keep)
    # ... and every kept id is unmasked.
    assert torch.all(torch.gather(m.mask, 1, m.ids_keep) == 0)


@pytest.mark.parametrize("ratio", [0.5, 0.6, 0.9])
def test_random_honours_odd_ratios(ratio):
    m = _draw("random", channels=5, ratio=ratio)
    assert torch.all(m.mask.sum(1) == 320 - round(320 * (1 - ratio)))


def test_masking_from_scores_is_the_reference_argsort_scheme():
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3]])
    m = masking_from_scores(noise, 2)
    assert m.ids_keep.tolist() == [[1, 3]]
    assert m.mask.tolist() == [[1, 0, 1, 0]]


def test_grid_keeps_one_cell_of_every_2x2_in_every_channel():
    m = _draw("grid", channels=2)
    keep = (1 - m.mask).reshape(4, 2, 4, 2, 4, 2)  # b, c, cell rows, in-cell row, cell cols, in-cell col
    assert torch.all(keep.sum(dim=(3, 5)) == 1)
    # one phase per sample, shared by all cells and channels
    pattern = keep.sum(dim=(2, 4))
    assert torch.all((pattern == 16) | (pattern == 0))
    with pytest.raises(ValueError, match="1 - 1/s"):
        _draw("grid", ratio=0.6)


def _mixed_edges(cells: torch.Tensor) -> int:
    return int((cells[:, 1:] != cells[:, :-1]).sum() + (cells[1:] != cells[:-1]).sum())


def test_block_masks_are_rectangular_clusters_tied_across_channels():
    m = _draw("block", channels=2, ratio=0.5, batch=8)
    masks = m.mask.reshape(8, 2, *GRID)
    assert torch.equal(masks[:, 0], masks[:, 1])
    # Random 50% masking of an 8x8 grid has ~56 masked/visible borders; blocks have far fewer.
    random_edges = sum(_mixed_edges(x) for x in _draw("random", channels=1, ratio=0.5, batch=8).mask.reshape(8, *GRID))
    block_edges = sum(_mixed_edges(x) for x in masks[:, 0])
    assert block_edges < 0.6 * random_edges


def test_tied_keeps_the_same_cells_in_every_channel():
    m = _draw("tied", channels=4)  # 64 of 256 kept = 16 whole cells
    masks = m.mask.reshape(4, 4, 64)
    assert torch.all(masks == masks[:, :1])


def test_tied_with_a_partial_cell_differs_in_at_most_one_cell():
    m = _draw("tied", channels=3, ratio=0.7)  # round(192 * 0.3) = 58 is not a multiple of 3
    masks = m.mask.reshape(4, 3, 64)
    differing = (masks != masks[:, :1]).any(dim=1).sum(dim=1)
    assert torch.all(differing <= 1)


def test_independent_splits_the_budget_evenly_over_channels():
    m = _draw("independent", channels=3, ratio=0.7)
    kept = (1 - m.mask).reshape(4, 3, 64).sum(-1)
    assert torch.all(kept.max(1).values - kept.min(1).values <= 1)
    # but the channels' patterns differ
    masks = m.mask.reshape(4, 3, 64)
    assert not torch.equal(masks[:, 0], masks[:, 1])


def test_channel_masking_hides_whole_channels():
    m = _draw("channel", channels=5, num_drop=2)
    fully_masked = (m.mask.reshape(4, 5, 64).sum(-1) == 64).sum(1)
    assert torch.all(fully_masked >= 2)
    with pytest.raises(ValueError, match="cannot hide 4 whole group"):
        _draw("channel", channels=5, num_drop=4)  # 256 tokens > 240 budget


def test_sensor_masking_hides_a_whole_sensor_that_fits_the_budget():
    groups = [0] * 6 + [1] * 2  # e.g. 6 S2 bands + VV/VH
    m = _draw("sensor", channels=8, ratio=0.8, batch=16, groups=groups)
    per_channel = m.mask.reshape(16, 8, 64).sum(-1) == 64
    s2_hidden, s1_hidden = per_channel[:, :6].all(1), per_channel[:, 6:].all(1)
    assert torch.all(s2_hidden | s1_hidden)
    assert s2_hidden.any() and s1_hidden.any()  # both sensors fit 0.8 * 512 = 410 tokens
    m = _draw("sensor", channels=8, ratio=0.5, batch=16, groups=groups)  # only S1 (128) fits 256
    assert torch.all((m.mask.reshape(16, 8, 64)[:, 6:].sum((1, 2))) == 128)
    with pytest.raises(ValueError, match="needs groups"):
        _draw("sensor", channels=8)


def test_generator_makes_masks_reproducible():
    for strategy in ("random", "block", "grid", "tied"):
        assert torch.equal(_draw(strategy, seed=3).mask, _draw(strategy, seed=3).mask)
        assert not torch.equal(_draw(strategy, seed=3).mask, _draw(strategy, seed=4).mask)


def test_bad_ratios_and_names_are_rejected():
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        num_keep(10, 1.0)
    with pytest.raises(ValueError, match="unknown masking strategy 'rand'"):
        _draw("rand")
