"""QaLoF's sequential switchable training: each width's adapter trained in turn for the full steps, highest first,
lower widths distilled from the next higher; known answers on a tiny GPT-2 and on hand-computed logits."""

import json
import math

import pytest

from test_precision import run_cell, switchable, tiny_gpt2


def adapter_weights(model, widths):
    import torch

    from qlbench.cell.precision import adapter_name

    return {w: torch.cat([p.detach().flatten().clone() for n, p in model.named_parameters()
                          if "lora_" in n and f".{adapter_name(w, widths)}." in n]) for w in widths}


def test_each_width_is_updated_exactly_steps_times_highest_first_and_the_others_stay_untouched(monkeypatch):
    """Every optimizer step changes exactly one width's adapter: the 8-bit one for the first `steps` steps, then the
    6-bit one, then the 4-bit one (listed low to high, trained high to low); the others equal, bit for bit."""
    import torch

    from qlbench.cell import sequential
    from qlbench.cell.loop import LoopSettings
    from qlbench.study.settings import tree
    from qlbench.tasks import causal_lm

    widths, steps = [4, 6, 8], 5
    settings = tree(targets=["c_attn"], switch_bits=widths, switch_schedule="sequential", steps=steps)
    sw, model = switchable(tiny_gpt2(), widths, settings)
    snapshots = [adapter_weights(model, widths)]
    step = torch.optim.AdamW.step

    def recorded(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        snapshots.append(adapter_weights(model, widths))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", recorded)
    started = []
    data = torch.randint(0, 64, (40, 16))
    result = sequential.train(model, sw, causal_lm, causal_lm.batch_sampler(data, 4, 0), settings,
                              LoopSettings(steps=steps, lr=1e-2, warmup=0.0), device=torch.device("cpu"),
                              checkpoint=None, stop_requested=lambda: False, on_step=None, log=lambda m: None,
                              progress=None, on_width=started.append)
    assert started == [8, 6, 4]
    changed = []
    for before, after in zip(snapshots, snapshots[1:]):
        moved = [w for w in widths if not torch.equal(before[w], after[w])]
        assert len(moved) == 1, moved  # one adapter per step; every other one untouched
        changed.append(moved[0])
    assert changed == [8] * steps + [6] * steps + [4] * steps
    assert [r["step"] for r in result.curve] == list(range(3 * steps))
    assert [r["width"] for r in result.curve] == changed


def kl_by_hand(student, teacher, t):
    """mean over rows of sum_c p_teacher (log p_teacher - log p_student), both softmaxes at temperature t."""
    total = 0.0
    for s_row, q_row in zip(student, teacher):
        zs = sum(math.exp(v / t) for v in s_row)
        zq = sum(math.exp(v / t) for v in q_row)
        for s, q in zip(s_row, q_row):
            p = math.exp(q / t) / zq
            total += p * (math.log(p) - (s / t - math.log(zs)))
    return total / len(student)


STUDENT = [[1.0, -0.5, 2.0], [0.3, 0.2, -1.0]]
TEACHER = [[2.0, 0.0, 1.0], [-0.4, 1.5, 0.5]]


def test_the_distillation_term_equals_a_hand_computation():
    import torch

    from qlbench.cell.sequential import distillation

    s, q = torch.tensor(STUDENT), torch.tensor(TEACHER)
    expected = kl_by_hand(STUDENT, TEACHER, 2.0) * 4.0  # · T²
    assert expected != pytest.approx(kl_by_hand(TEACHER, STUDENT, 2.0) * 4.0, rel=1e-3)  # the direction matters
    assert distillation([s], [q], 2.0).item() == pytest.approx(expected, rel=1e-6)
    # a [batch, seq, vocab] tensor averages over every row; two tensors (QA start, end) average their terms
    assert distillation([s.view(1, 2, 3)], [q.view(1, 2, 3)], 2.0).item() == pytest.approx(expected, rel=1e-6)
    other = kl_by_hand(STUDENT[:1], TEACHER[1:], 2.0) * 4.0
    both = distillation([s, s[:1]], [q, q[1:]], 2.0).item()
    assert both == pytest.approx((expected + other) / 2, rel=1e-6)


def test_the_cascade_loss_distils_the_student_width_from_the_teacher_width_without_its_gradient():
    """A task whose logits are the batch's times a weight per width: the loss is α·KL(teacher ‖ student)·T² +
    (1 − α)·CE of the student's logits, the teacher's at the higher width, and no gradient reaches the teacher."""
    import torch

    from qlbench.cell.sequential import cascade_loss

    weight = {8: torch.tensor(1.5, requires_grad=True), 4: torch.tensor(0.7, requires_grad=True)}
    labels = torch.tensor([2, 0])

    class Widths:
        now = None
        seen = []

        def uniform(self, w):
            return w

        def set(self, w):
            self.now = w
            self.seen.append(w)

    precision = Widths()

    class Task:
        @staticmethod
        def loss_and_logits(model, batch):
            z = batch * weight[precision.now]
            return torch.nn.functional.cross_entropy(z, labels), [z]

    model = torch.nn.Linear(1, 1)  # stands for the model: only its train/eval mode is used
    alpha, t = 0.3, 2.0
    loss = cascade_loss(Task, precision, 4, 8, alpha, t)(model, torch.tensor(STUDENT))
    assert precision.seen == [8, 4] and model.training  # teacher first, then back to the student in train mode
    student = [[v * 0.7 for v in row] for row in STUDENT]
    teacher = [[v * 1.5 for v in row] for row in STUDENT]
    ce = sum(-(row[y] - math.log(sum(math.exp(v) for v in row))) for row, y in zip(student, [2, 0])) / 2
    expected = alpha * kl_by_hand(student, teacher, t) * t * t + (1 - alpha) * ce
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert weight[4].grad is not None and weight[8].grad is None  # the teacher is not trained by the student


def test_a_sequential_cell_runs_and_its_row_names_the_schedule(workdir):
    row = run_cell(workdir, "switch_bits=[4,8]", "switch_schedule=sequential", "steps=4")
    settings = json.loads(row["settings_json"])
    assert settings["switch_schedule"] == "sequential"
    assert row["steps_done"] == 8  # 4 steps per width
    assert row["eval_loss"] == row["eval_loss_b4"]  # the cell's own width, restored after training


def test_the_qalof_table_names_each_rows_schedule():
    import polars as pl

    from qlbench.analysis import qalof

    def cell(seed, schedule, em):
        settings = {"switch_bits": [8, 4], **({"switch_schedule": schedule} if schedule else {})}
        return {"model": "m", "rank": 8, "bits": 4, "mask": "all", "seed": seed, "em": em, "f1": em,
                "settings_json": json.dumps(settings), "eval_em_b8": em, "eval_f1_b8": em}

    cells = pl.DataFrame([cell(0, None, 50.0), cell(0, "sequential", 60.0), cell(1, "sequential", 62.0)])
    rows = {(r["configuration"], r["schedule"]): r for r in qalof.table(cells).iter_rows(named=True)}
    assert rows[("switchable, all-8", "cyclic")]["em"] == 50.0  # unset: today's cyclic alternation
    assert rows[("switchable, all-8", "sequential")]["em"] == 61.0
    assert rows[("switchable, all-8", "sequential")]["seeds"] == 2


def test_each_tasks_loss_and_logits_is_its_training_loss_and_the_logits_it_reads():
    """What the cascade distils: per task, the loss beside the logits equals the task's own training loss, and QA's
    padding carries no probability in either distribution."""
    import torch
    from transformers import GPT2Config, GPT2ForQuestionAnswering, GPT2ForSequenceClassification

    from qlbench.tasks import Batch, causal_lm, classification, extractive_qa

    cfg = dict(n_layer=1, n_head=2, n_embd=16, vocab_size=40, n_positions=16, pad_token_id=0)
    torch.manual_seed(0)
    ids = torch.randint(1, 40, (2, 6))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    lm = tiny_gpt2().eval()
    blocks = torch.randint(0, 64, (2, 8))
    loss, (logits,) = causal_lm.loss_and_logits(lm, blocks)
    assert logits.shape == (2, 8, 64) and loss.item() == pytest.approx(causal_lm.loss(lm, blocks).item(), rel=1e-6)
    qa = GPT2ForQuestionAnswering(GPT2Config(**cfg)).eval()
    batch = Batch(input_ids=ids, attention_mask=mask, start_positions=torch.tensor([1, 2]),
                  end_positions=torch.tensor([3, 3]))
    loss, (start, end) = extractive_qa.loss_and_logits(qa, batch)
    assert loss.item() == pytest.approx(extractive_qa.loss(qa, batch).item(), rel=1e-6)
    assert torch.softmax(start, -1)[1, 4:].sum() < 1e-30 and torch.softmax(end, -1)[1, 4:].sum() < 1e-30
    clf = GPT2ForSequenceClassification(GPT2Config(**cfg, num_labels=3)).eval()
    batch = Batch(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 2]))
    loss, (z,) = classification.loss_and_logits(clf, batch)
    assert z.shape == (2, 3) and loss.item() == pytest.approx(classification.loss(clf, batch).item(), rel=1e-6)
