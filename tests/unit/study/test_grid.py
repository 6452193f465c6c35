import copy

import pytest

from qlbench.study import config as study, grid
from qlbench.errors import QlbenchError


def load(config, name, **changes):
    config = copy.deepcopy(config)
    config["studies"][name].update(changes)
    return study.load(config, name)


def expected(st, model="tiny-gpt2"):
    quantized = [b for b in st.bits if b < 16]
    per = len(quantized) * len(st.masks[model]) + (1 if 16 in st.bits else 0)
    return len(st.models) * len(st.ranks) * len(st.seeds) * len(st.n_train) * per


def test_demo_grid_count_and_16_bit_once(repo_config):
    st = study.load(repo_config, "demo")
    cells = grid.cells(st)
    assert len(cells) == expected(st) == 20
    sixteen = [c for c in cells if c.bits == 16]
    assert len(sixteen) == len(st.ranks) * len(st.seeds) and all(c.mask == "none" for c in sixteen)


def test_masks_multiply_quantized_cells_only(repo_config):
    st = load(repo_config, "demo", masks=["all", "attn", {"each": "block"}])
    assert len(st.masks["tiny-gpt2"]) == 6
    assert len(grid.cells(st)) == expected(st) == 2 * 2 * (4 * 6 + 1)


def test_n_train_axis_adds_a_path_level(repo_config):
    st = load(repo_config, "demo", n_train=[100, 400], bits=[16, 4])
    cells = grid.cells(st)
    assert len(cells) == 2 * expected(load(repo_config, "demo", bits=[16, 4]))
    assert {c.n_train for c in cells} == {100, 400}
    assert cells[0].path.startswith("tiny-gpt2/n100/b16/")


def test_paths_round_trip(repo_config):
    st = load(repo_config, "sensitivity")
    for cell in grid.cells(st) + grid.cells(load(repo_config, "demo", n_train=[7])):
        assert grid.parse(cell.path) == cell
    with pytest.raises(QlbenchError, match="is not a cell path"):
        grid.parse("tiny-gpt2/b4/all/s0")


def test_grid_is_the_same_every_time(repo_config):
    a = [c.path for c in grid.cells(study.load(repo_config, "sensitivity"))]
    b = [c.path for c in grid.cells(study.load(copy.deepcopy(repo_config), "sensitivity"))]
    assert a == b and len(a) == len(set(a))
