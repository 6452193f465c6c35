"""Datasets by hub name or local JSON/JSONL/parquet file (through `datasets`) -> prompt/response Examples.

Three formats, each read from the usual column names of its kind:
- `dialogue` (DailyDialog-like): a list of turns (`dialog`, `utterances`, `turns`, `conversation`) -> consecutive
  (turn, reply) pairs, or with `sample: dialogue` one example per dialogue (the bounds project's format: every
  turn but the last is the prompt, the last the response, one turn a line); or ready pairs in `prompt`/`response`.
- `instruction` (Alpaca-like): `instruction`, optional `input`, `output` (or `response`), in Alpaca's template
  (`### Instruction:`, `### Input:` when there is one, `### Response:`).

A hub dataset whose repository holds only a loading script (DailyDialog's) is read from the hub's parquet export
of it (branch refs/convert/parquet): `datasets` >= 4 no longer runs loading scripts.
- `qa` (SQuAD-like): `context`, `question`, `answers` ({text: [...]}, a list, or one string; or `answer`).
"""

from __future__ import annotations

from pathlib import Path

from qlbench.errors import QlbenchError

TURNS = ("dialog", "dialogue", "utterances", "turns", "conversation")
LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def instruction_prompt(instruction: str, input_text: str = "") -> str:
    """Alpaca's template (Taori et al. 2023), headers as it writes them; the response follows on the next line."""
    text = f"### Instruction:\n{instruction.strip()}\n\n"
    if input_text and input_text.strip():
        text += f"### Input:\n{input_text.strip()}\n\n"
    return text + "### Response:"


def qa_prompt(context: str, question: str) -> str:
    return f"Context: {context.strip()}\nQuestion: {question.strip()}\nAnswer:"


def load_records(spec: dict, name: str, split: str):
    """The rows of one split, as a `datasets.Dataset`; fails with one line when it cannot be had."""
    import datasets

    datasets.disable_progress_bars()
    ref = spec.get("name")
    if not ref:
        raise QlbenchError(f"dataset {name!r}: needs `name` (a hub id or a local file)")
    try:
        if spec["source"] == "path":
            path = Path(ref)
            if not path.exists():
                raise QlbenchError(f"dataset {name!r}: no such file {ref!r}")
            files = sorted(f for f in path.iterdir() if f.suffix in LOCAL_BUILDERS) if path.is_dir() else [path]
            builder = LOCAL_BUILDERS.get(files[0].suffix if files else "")
            if builder is None:
                raise QlbenchError(f"dataset {name!r}: {ref!r} is not JSON, JSONL, CSV or parquet")
            return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")
        from qlbench.data import hub

        where, local = hub.resolve(ref, f"dataset {name!r}", repo_type="dataset")
        if script_only(hub.repo_files(where, local)):
            files = hub.parquet_export(ref, f"dataset {name!r}", spec.get("config") or "default", split)
            return datasets.load_dataset("parquet", data_files=files, split="train")
        return datasets.load_dataset(where, spec.get("config"), split=split)
    except QlbenchError:
        raise
    except (OSError, ValueError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QlbenchError(f"dataset {name!r}: cannot load {ref!r} split {split!r}: {first}") from None


DATA_SUFFIXES = (".parquet", ".json", ".jsonl", ".csv", ".arrow", ".txt", ".tsv", ".zip", ".gz", ".zst")


def script_only(files: list[str]) -> bool:
    """A dataset repository with a loading script (`name.py` at the top) and no data files of its own."""
    top_scripts = [f for f in files if f.endswith(".py") and "/" not in f]
    return bool(top_scripts) and not any(f.endswith(DATA_SUFFIXES) for f in files)


def to_examples(records, fmt: str, name: str, sample: str = "pair") -> list:
    """Rows of a dataset -> Examples in the dataset's format (`sample`: a dialogue's pairs, or the dialogue)."""
    from qlbench.data.example import Example

    columns = set(records.column_names)
    out = []
    if fmt == "dialogue":
        turns = next((c for c in TURNS if c in columns), None)
        if turns is None and not {"prompt", "response"} <= columns:
            raise QlbenchError(f"dataset {name!r}: a dialogue needs one of {', '.join(TURNS)} or prompt/response; "
                               f"columns: {', '.join(sorted(columns))}")
        for row in records:
            if turns is None:
                out.append(Example(str(row["prompt"]).strip(), str(row["response"]).strip()))
                continue
            said = [str(t).strip() for t in row[turns] if str(t).strip()]
            if sample == "dialogue":
                if len(said) > 1:
                    out.append(Example("\n".join(said[:-1]), said[-1]))
                continue
            out += [Example(a, b) for a, b in zip(said, said[1:])]
    elif fmt == "instruction":
        answer = "output" if "output" in columns else "response"
        if not {"instruction", answer} <= columns:
            raise QlbenchError(f"dataset {name!r}: an instruction dataset needs instruction and output; "
                               f"columns: {', '.join(sorted(columns))}")
        for row in records:
            out.append(Example(instruction_prompt(row["instruction"], row.get("input") or ""),
                               str(row[answer]).strip()))
    elif fmt == "qa":
        answer = "answers" if "answers" in columns else "answer"
        if not {"context", "question", answer} <= columns:
            raise QlbenchError(f"dataset {name!r}: a QA dataset needs context, question and answers; "
                               f"columns: {', '.join(sorted(columns))}")
        for row in records:
            answers = _answers(row[answer])
            if answers:
                out.append(Example(qa_prompt(row["context"], row["question"]), answers[0], answers,
                                   context=row["context"], question=row["question"],
                                   answer_start=_answer_start(row[answer], answers[0])))
    else:
        raise QlbenchError(f"dataset {name!r}: unknown format {fmt!r}")
    return out


def _answers(value) -> tuple[str, ...]:
    if isinstance(value, dict):
        value = value.get("text", [])
    if isinstance(value, str):
        value = [value]
    return tuple(dict.fromkeys(str(a).strip() for a in value if str(a).strip()))


def _answer_start(value, first: str) -> int:
    """SQuAD's `answer_start` of the first answer where the data gives it (-1: the task searches the context)."""
    if isinstance(value, dict) and value.get("answer_start") is not None:
        texts, starts = list(value.get("text", [])), list(value["answer_start"])
        for text, start in zip(texts, starts):
            if str(text).strip() == first:
                return int(start) + (len(str(text)) - len(str(text).lstrip()))
    return -1


def examples(spec: dict, name: str, split: str) -> list:
    return to_examples(load_records(spec, name, split), spec["format"], name, spec.get("sample", "pair"))
