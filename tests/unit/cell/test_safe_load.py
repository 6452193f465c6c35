"""What a cell reads back from disk is data, never code: a checkpoint or a prepared-data file with a pickled object in
it (here one whose `__reduce__` would write a marker file) is refused in one line, and the object never runs."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch

from qlbench import registry
from qlbench.cell import loop, sequential
from qlbench.data import prepared
from qlbench.data.example import Example
from qlbench.errors import QlbenchError
from qlbench.study.settings import tree
from qlbench.tasks import Batch, extractive_qa


class Planted:
    """Unpickled by a full unpickler, this calls `open(marker, "w")`, which creates the marker file: the code a
    tampered file would run (a callable every process can import, so that a cell in a subprocess would run it too)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def tiny():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = loop.make_optimizer(list(model.parameters()), loop.LoopSettings(steps=2, lr=1e-2))
    return model, opt


def one_line_refusal(e: pytest.ExceptionInfo, path: Path) -> str:
    message = str(e.value)
    assert "\n" not in message and str(path) in message and "io.open" in message  # names what it refused
    return message


def test_a_checkpoint_with_a_pickled_object_is_refused_in_one_line_and_never_runs(tmp_path):
    model, opt = tiny()
    path, marker = tmp_path / "checkpoint.pt", tmp_path / "ran"
    loop.save_checkpoint(path, model, opt, 1, [{"step": 0, "loss": 1.0}])
    state = torch.load(path, weights_only=True)
    torch.save({**state, "probes": {"on_step": Planted(marker)}}, path)
    with pytest.raises(QlbenchError) as e:
        loop.load_checkpoint(path, *tiny())
    assert "checkpoint" in one_line_refusal(e, path)
    assert not marker.exists()
    torch.load(path, weights_only=False)["probes"]["on_step"].close()  # the planted object is live: unpickling runs it
    assert marker.exists()


def test_a_sequential_widths_trained_file_with_a_pickled_object_is_refused(tmp_path):
    path, marker = tmp_path / "checkpoint.pt.b4.done", tmp_path / "ran"
    torch.save({"params": {}, "curve": [Planted(marker)]}, path)
    with pytest.raises(QlbenchError) as e:
        sequential._load_done(path, torch.nn.Linear(2, 2))
    one_line_refusal(e, path)
    assert not marker.exists()


def test_prepared_data_with_a_pickled_object_is_refused_in_one_line_and_never_runs(tmp_path):
    marker, calls = tmp_path / "ran", []
    torch.save((3, {"train": torch.zeros(2, 2), "examples": [Planted(marker)]}), tmp_path / "x.pt")
    with pytest.raises(QlbenchError) as e:
        prepared.cached(tmp_path, "x", lambda: calls.append(1))
    assert "prepared data" in one_line_refusal(e, tmp_path / "x.pt")
    assert not marker.exists() and calls == []  # refused, not made again over the evidence


@pytest.mark.filterwarnings("ignore:Paged optimizers are not supported on CPU")  # plain state then
def test_a_checkpoint_resumes_exactly_with_each_optimizer_read_as_data(tmp_path):
    """Everything a checkpoint holds (the optimizers' states, bitsandbytes' included, the RNG, the curve, a probe's
    points) is plain data: read back with nothing allowed beyond torch's own types, the run continues bit for bit."""
    for name in ("adamw", "paged_adamw", "paged_adamw_8bit"):
        torch.manual_seed(0)
        start = torch.randn(64, 64)  # 4096 values: the 8-bit state is quantized blockwise
        settings = loop.LoopSettings(steps=6, lr=1e-2, optimizer=name, checkpoint_every=3)
        grads = [torch.randn(64, 64) for _ in range(6)]

        def run():
            p = torch.nn.Parameter(start.clone())
            return p, loop.make_optimizer([p], settings)

        def steps(p, opt, first, last):
            for g in grads[first:last]:
                p.grad = g.clone()
                opt.step()
            return p

        p, opt = run()
        straight = steps(p, opt, 0, 6).detach().clone()
        p, opt = run()
        steps(p, opt, 0, 3)
        holder = torch.nn.Module()
        holder.p = p
        path = tmp_path / f"{name}.pt"
        loop.save_checkpoint(path, holder, opt, 3, [{"step": s, "loss": 1.0} for s in range(3)],
                             {"on_step": {"points": [{"step": 0, "grad_var": 0.5, "per_module": {"m": 0.1}}]}})
        fresh, fresh_opt = run()
        holder = torch.nn.Module()
        holder.p = fresh
        step, curve = loop.load_checkpoint(path, holder, fresh_opt)
        assert step == 3 and len(curve) == 3
        assert torch.equal(steps(fresh, fresh_opt, 3, 6).detach(), straight), name


def same(a, b) -> bool:
    """Equal values of equal types, all the way down (tensors by value and dtype; dataclasses field by field)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    if dataclasses.is_dataclass(a):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


QA = [("Botany is the study of what? The plants.", "The plants."), ("Who wrote Hamlet? Shakespeare", "Shakespeare"),
      ("What is the capital of France? Paris", "Paris")] * 4


@pytest.mark.parametrize("name", sorted(registry.tasks()))
def test_every_tasks_prepared_data_comes_back_as_the_same_classes_and_tensors(tmp_path, name):
    """Each task's own `prepare` on a tiny set (QA examples every task can read), cached and read back as data, with
    the classes the cell names (`cell/load.py`): the same classes, tensors, examples and offsets."""
    from qlbench.data.models import train_tokenizer

    task = registry.task_module(name)
    ex = [Example(c.split("?")[0] + "?", a, (a,), context=c, question=c.split("?")[0] + "?", answer_start=c.index(a))
          for c, a in QA]
    tok = train_tokenizer(" ".join(f"Question: {e.question}\nContext: {e.context}" for e in ex) * 5, 300)
    data = task.prepare(tok, ex, ex[:6], tree(seq_len=32))
    types = (*prepared.dataclasses_in(task), Batch, Example)
    prepared.cached(tmp_path, name, lambda: (len(ex), data), types)
    n, back = prepared.cached(tmp_path, name, lambda: pytest.fail("made again"), types)
    other = {"probes": data.probes[:2]} if name == "sft" else {"eval_examples": ex[:2]}  # sft keeps prompts' ids
    assert n == len(ex) and same(back, data) and not same(back, dataclasses.replace(data, **other))


def test_a_batch_comes_back_a_batch():
    assert set(prepared.dataclasses_in(extractive_qa)) == {extractive_qa.Data, extractive_qa.Features}
    batch = Batch(input_ids=torch.arange(6).view(2, 3))
    back = copy.deepcopy(batch)
    assert type(back) is Batch and torch.equal(back["input_ids"], batch["input_ids"]) and back.shape == (2, 3)


def test_prepared_data_of_a_class_its_types_do_not_name_fails_where_it_is_made(tmp_path):
    with pytest.raises(TypeError, match="Example"):
        prepared.cached(tmp_path, "x", lambda: (1, [Example("p", "r")]), types=(Batch,))
    assert list(tmp_path.iterdir()) == []  # no file the next cell would refuse
