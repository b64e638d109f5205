"""Instruction templates (sampled by rate in training) and k-shot task variants."""

import csv
import os
from collections import Counter

import pytest
import sentencepiece
import seqio

import t5pipe.tasks  # noqa: F401 - registers the built-in tasks
from t5pipe.errors import UserInputError
from t5pipe.tasks import few_shot, user_data
from t5pipe.tasks.templates import Template, templated_task

LABELS = ["entailment", "contradiction"]
TEMPLATES = [
    Template("A: {premise} | {hypothesis}", name="a"),
    Template("B: does {premise} imply {hypothesis}?", name="b"),
    Template("C: {hypothesis} given {premise}", "{label}!", name="c"),
]
RATES = [5, 3, 2]


@pytest.fixture(autouse=True)
def t5_vocab(spm_path, data_dir, monkeypatch):
    monkeypatch.setenv("T5PIPE_VOCAB", spm_path)
    monkeypatch.setenv("T5PIPE_GLUE_DIR", str(data_dir / "glue"))


def write_rows(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
        writer.writerow(["premise", "hypothesis", "label"])
        writer.writerows(rows)
    return str(path)


def make_rows(count, start=0):
    return [
        (f"the cat number {i} sat" + " quietly" * (i % 4), f"a pet {i % 7} rested", LABELS[i % 2])
        for i in range(start, start + count)
    ]


def texts(task, split, seed=None, sequence_length=None, field="inputs_pretokenized"):
    dataset = task.get_dataset(
        sequence_length=sequence_length, split=split, shuffle=False, seed=seed
    )
    return [example[field].decode() for example in dataset.as_numpy_iterator()]


@pytest.fixture
def templated_user_task(tmp_path):
    train = make_rows(1000)
    files = {
        "train": write_rows(tmp_path / "train.tsv", train),
        # Validation rows also appear in train: few-shot must not use them as exemplars.
        "validation": write_rows(tmp_path / "dev.tsv", train[:40]),
    }
    task = user_data.supervised_task(
        "templated_user_test",
        files=files,
        templates=TEMPLATES,
        template_rates=RATES,
        metrics=["accuracy"],
        label_names=LABELS,
        overwrite=True,
    )
    return task, train


def test_training_samples_templates_by_rate_deterministically(templated_user_task):
    task, rows = templated_user_task
    first = texts(task, "train", seed=7)
    assert len(first) == 1000
    shares = Counter(text[0] for text in first)
    for letter, rate in zip("ABC", RATES, strict=True):
        assert abs(shares[letter] / 1000 - rate / sum(RATES)) <= 0.03, shares
    # Each text is exactly str.format of its row with the template it got.
    by_letter = {t.inputs[0]: t for t in TEMPLATES}
    targets = texts(task, "train", seed=7, field="targets_pretokenized")
    for text, target, (premise, hypothesis, label) in zip(first, targets, rows, strict=True):
        template = by_letter[text[0]]
        fields = dict(premise=premise, hypothesis=hypothesis, label=label)
        assert text == template.inputs.format(**fields)
        assert target == template.targets.format(**fields)
    assert texts(task, "train", seed=7) == first  # deterministic per seed
    other = texts(task, "train", seed=8)
    assert sum(a[0] != b[0] for a, b in zip(first, other, strict=True)) > 300
    for letter, rate in zip("ABC", RATES, strict=True):
        assert abs(Counter(t[0] for t in other)[letter] / 1000 - rate / sum(RATES)) <= 0.03
    # Evaluation reads the eval template (the first) only.
    assert {text[0] for text in texts(task, "validation")} == {"A"}


def test_builtin_task_with_templates_keeps_its_labels_and_metrics():
    task = templated_task(
        "glue_rte_templated_test",
        base="glue_rte_v002",
        templates=[Template('{sentence1} Question: does this imply "{sentence2}"?')],
        label_names=["entailment", "not_entailment"],
        overwrite=True,
    )
    base = seqio.get_mixture_or_task("glue_rte_v002")
    inputs = texts(task, "validation")[:50]
    ours = texts(task, "validation", field="targets_pretokenized")[:50]
    assert ours == texts(base, "validation", field="targets_pretokenized")[:50]
    assert set(ours) == {"entailment", "not_entailment"}
    assert task.postprocessor is base.postprocessor
    assert [f.__name__ for f in task.metric_fns] == [f.__name__ for f in base.metric_fns]
    # The text is the template over the raw GLUE columns (read here with csv).
    with open(os.path.join(os.environ["T5PIPE_GLUE_DIR"], "RTE", "dev.tsv"), encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:50]
    expected = [f'{r["sentence1"]} Question: does this imply "{r["sentence2"]}"?' for r in rows]
    assert inputs == expected


def test_template_fields_are_checked():
    with pytest.raises(UserInputError, match=r"field 'sentence'.*sentence1"):
        task = templated_task(
            "glue_rte_bad_template_test",
            base="glue_rte_v002",
            templates=[Template("{sentence}")],
            overwrite=True,
        )
        texts(task, "validation")
    with pytest.raises(UserInputError, match="placeholders"):
        templated_task("bad_spec_test", "glue_rte_v002", [Template("{premise:>10}")])


def parse(prompt):
    *exemplars, inputs = prompt.split(" || ")
    return [tuple(e.split(" => ")) for e in exemplars], inputs


def test_k_shot_prompts_fit_are_deterministic_and_never_show_the_example(
    templated_user_task, spm_path
):
    task, rows = templated_user_task
    length = 96  # three exemplars fit beside most examples, not all
    k_shot = few_shot.few_shot_task(
        task.name, 3, exemplar_format="{inputs} => {targets}", separator=" || ", overwrite=True
    )
    assert k_shot.name == "templated_user_test_3shot"
    lengths = {"inputs": length, "targets": 8}
    prompts = texts(k_shot, "validation", sequence_length=lengths)
    evaluated = texts(task, "validation")
    assert len(prompts) == len(evaluated) == 40
    tokenizer = sentencepiece.SentencePieceProcessor(model_file=spm_path)
    pool = {row[0] for row in rows}
    counts = Counter()
    for prompt, original in zip(prompts, evaluated, strict=True):
        exemplars, inputs = parse(prompt)
        assert inputs == original  # the example itself, last and unchanged
        assert len(tokenizer.encode(prompt)) + 1 <= length  # with EOS: never trimmed
        counts[len(exemplars)] += 1
        for exemplar_inputs, exemplar_target in exemplars:
            assert exemplar_inputs != original
            assert exemplar_inputs.startswith("A: ")  # the eval template, as the example
            premise = exemplar_inputs[3:].split(" | ")[0]
            assert premise in pool and exemplar_target in LABELS
        assert len({e for e, _ in exemplars}) == len(exemplars)
    assert max(counts) == 3 and min(counts) < 3, counts  # the length limit bites sometimes
    assert texts(k_shot, "validation", sequence_length=lengths) == prompts
    reseeded = few_shot.few_shot_task(
        task.name,
        3,
        name="templated_user_test_3shot_seed1",
        exemplar_format="{inputs} => {targets}",
        separator=" || ",
        seed=1,
        overwrite=True,
    )
    assert texts(reseeded, "validation", sequence_length=lengths) != prompts

    # Another template for exemplars and example alike; registration by name.
    in_b = few_shot.few_shot_task(task.name, 2, template="b", name="fs_b_test", overwrite=True)
    long = {"inputs": 512, "targets": 8}
    assert all(p.count("B: ") == 3 for p in texts(in_b, "validation", sequence_length=long))
    assert few_shot.resolve("glue_rte_v002_2shot").name == "glue_rte_v002_2shot"
    assert "glue_rte_v002_2shot" in seqio.TaskRegistry.names()
    assert few_shot.resolve("no_such_task_2shot") is None


def shown_inputs(capsys) -> str:
    """The first `inputs (N tokens): ...` line `t5pipe tasks show` printed."""
    lines = capsys.readouterr().out.splitlines()
    return next(line for line in lines if line.startswith("inputs ("))


def test_tasks_show_prints_a_template_and_shots_and_commands_find_k_shot_names(
    templated_user_task, capsys
):
    from t5pipe import cli, input_pipeline

    task, _ = templated_user_task
    show = ["tasks", "show", task.name, "-n", "1", "--inputs_length", "512"]
    assert cli.main([*show, "--template", "b", "--shots", "2"]) == 0
    inputs = shown_inputs(capsys)
    assert inputs.count("B: ") == 3 and "A: " not in inputs  # two exemplars and the example
    assert cli.main([*show, "--template", "1", "--shots", "0"]) == 0  # by position, zero-shot
    zero = shown_inputs(capsys)
    assert zero.count("B: ") == 1
    assert cli.main([*show, "--shots", "1"]) == 0  # the eval template
    one = shown_inputs(capsys)
    assert one.count("A: ") == 2
    assert cli.main([*show, "--template", "zz"]) == 2
    assert "no template 'zz'; the templates are" in capsys.readouterr().err
    # Any command's task lookup registers `<task>_<k>shot` on first use.
    assert input_pipeline.get_task(f"{task.name}_1shot").name == f"{task.name}_1shot"
