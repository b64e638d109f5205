"""Text-to-text formatting of GLUE, SuperGLUE, SQuAD, CNN/DM and WMT examples, as the
T5 paper's code formats them (the `t5` package's preprocessors).

Each function maps a tf.data.Dataset of source examples (TFDS's features, which the
offline sources in sources.py reproduce) to one of {"inputs", "targets", ...}
strings, with TensorFlow string ops so it runs inside the input pipeline. Examples:

    glue:  "rte sentence1: <s1> sentence2: <s2>"        -> "entailment"
    stsb:  "stsb sentence1: <s1> sentence2: <s2>"       -> "3.8"  (nearest 0.2)
    squad: "question: <q> context: <c>" (punctuation padded)  -> "<first answer>"
"""

from __future__ import annotations

from collections.abc import Sequence

import seqio
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE

# T5 pads every ASCII punctuation mark with spaces (RE2's [[:punct:]]) and then
# collapses runs of ASCII whitespace (RE2's \s) into one space.
_PUNCTUATION = r"([[:punct:]])"
_WHITESPACE_RUN = r"\s+"


def _join(parts: Sequence[tf.Tensor | str]) -> tf.Tensor:
    return tf.strings.join(list(parts), separator=" ")


def _label_text(label: tf.Tensor, label_names: Sequence[str]) -> tf.Tensor:
    """Class index -> its name; -1 (unlabelled test rows) -> "<unk>"."""
    return tf.cond(
        tf.equal(label, -1),
        lambda: tf.constant("<unk>"),
        lambda: tf.gather(tf.constant(list(label_names)), label),
    )


@seqio.map_over_dataset
def glue(x, benchmark_name: str, label_names: Sequence[str], feature_names=None):
    """ "<benchmark> <key1>: <text1> <key2>: <text2> ..." -> label name.

    feature_names: the text features in order; by default all but label/idx, sorted
    (so MNLI reads "mnli hypothesis: ... premise: ...").
    """
    keys = feature_names or sorted(set(x) - {"label", "idx"})
    parts = [benchmark_name]
    for key in keys:
        parts += [f"{key}:", x[key]]
    inputs = _join(parts)
    result = {"targets": _label_text(x["label"], label_names)}
    if benchmark_name == "multirc":
        # MultiRC paragraphs carry HTML line breaks and bold tags.
        inputs = tf.strings.regex_replace(inputs, "<br>", " ")
        inputs = tf.strings.regex_replace(inputs, "<(/)?b>", "")
        for part in ("paragraph", "question", "answer"):
            result[f"idx/{part}"] = x["idx"][part]
    else:
        result["idx"] = x["idx"]
    result["inputs"] = inputs
    return result


@seqio.map_over_dataset
def stsb(x):
    """STS-B as 26-way text classification: the score rounded to the nearest 0.2 and
    written with one decimal ("3.8"); float32 arithmetic and round-half-to-even, as T5."""
    label = tf.cast(x["label"], tf.float32)
    rounded = tf.round(label * 5) / 5
    return {
        "inputs": _join(["stsb sentence1:", x["sentence1"], "sentence2:", x["sentence2"]]),
        "targets": tf.strings.as_string(rounded, precision=1),
        "idx": x["idx"],
    }


def rekey(dataset: tf.data.Dataset, key_map: dict[str, str]) -> tf.data.Dataset:
    """Renames features: {new_name: old_name}; features not named are dropped."""
    return dataset.map(lambda x: {new: x[old] for new, old in key_map.items()}, AUTOTUNE)


# ---------------------------------------------------------------- SuperGLUE specials


def record(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """ReCoRD: one example per gold entity (one "<unk>" example when there is none):

        "record query: <query with @placeholder> entities: e1, e2, ... passage: <passage>"
        -> "<entity>"

    Passages' "@highlight" lines become sentences. Each example keeps every gold entity
    in "answers" and its (passage, query) ids for deduplicated scoring.
    """

    def to_text(x):
        passage = tf.strings.regex_replace(x["passage"], r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ")
        passage = tf.strings.regex_replace(passage, r"\n@highlight\n", ". ")
        inputs = _join(
            [
                "record query:",
                x["query"],
                "entities:",
                tf.strings.reduce_join(x["entities"], separator=", "),
                "passage:",
                passage,
            ]
        )
        answers = x["answers"]
        targets = tf.cond(tf.size(answers) > 0, lambda: answers, lambda: tf.constant(["<unk>"]))
        n = tf.size(targets)
        return {
            "inputs": tf.fill([n], inputs),
            "targets": targets,
            "answers": tf.fill([n], tf.strings.reduce_join(answers, separator="\x1f")),
            "idx/passage": tf.fill([n], x["idx"]["passage"]),
            "idx/query": tf.fill([n], x["idx"]["query"]),
        }

    def split_answers(x):
        # Carried as one joined string through unbatch (a ragged feature would not
        # survive it); split back into the list of gold entities here.
        x = dict(x)
        x["answers"] = tf.strings.split(x["answers"], sep="\x1f")
        return x

    return dataset.map(to_text, AUTOTUNE).unbatch().map(split_answers, AUTOTUNE)


def wsc_simple(dataset: tf.data.Dataset, correct_referent_only: bool = False) -> tf.data.Dataset:
    """WSC as T5 trains it: "wsc: <text with the pronoun marked *it*>" -> the candidate
    referent (span1). For training T5 keeps only candidates that are the referent
    (correct_referent_only); for eval the label says whether it is."""

    def to_text(x):
        words = tf.strings.split(x["text"], sep=" ")
        index = tf.cast(x["span2_index"], tf.int32)
        marked = tf.strings.join(["*", words[index], "*"])
        words = tf.concat([words[:index], [marked], words[index + 1 :]], axis=0)
        return {
            "inputs": _join(["wsc:", tf.strings.reduce_join(words, separator=" ")]),
            "targets": x["span1_text"],
            "label": tf.cast(x["label"], tf.int32),
            "idx": x["idx"],
        }

    if correct_referent_only:
        dataset = dataset.filter(lambda x: tf.equal(tf.cast(x["label"], tf.int32), 1))
    return dataset.map(to_text, AUTOTUNE)


@seqio.map_over_dataset
def definite_pronoun_resolution_simple(x):
    """DPR: "wsc: <sentence with the first ` <pronoun> ` marked *...*>" -> the right candidate."""
    pattern = tf.strings.join([r" (", x["pronoun"], r")( |\.|,)"])
    marked = tf.strings.regex_replace(x["sentence"], pattern, r" *\1*\2", replace_global=False)
    return {"inputs": _join(["wsc:", marked]), "targets": x["candidates"][x["label"]]}


# ---------------------------------------------------------------- SQuAD


def pad_punctuation(text: tf.Tensor) -> tf.Tensor:
    """ " a , b . " style: spaces around ASCII punctuation, whitespace runs collapsed."""
    text = tf.strings.regex_replace(text, _PUNCTUATION, r" \1 ")
    return tf.strings.regex_replace(text, _WHITESPACE_RUN, " ")


@seqio.map_over_dataset
def squad(x):
    """ "question: <q> context: <c>" -> the first gold answer, all punctuation padded;
    "answers" keeps every gold answer (padded) for the all-answers metric."""
    answers = pad_punctuation(x["answers"]["text"])
    question = pad_punctuation(x["question"])
    context = pad_punctuation(x["context"])
    inputs = tf.strings.regex_replace(
        _join(["question:", question, "context:", context]), _WHITESPACE_RUN, " "
    )
    return {
        "inputs": inputs,
        "targets": answers[0],
        "id": x["id"],
        "context": context,
        "question": question,
        "answers": answers,
    }


# ---------------------------------------------------------------- summarisation, translation


@seqio.map_over_dataset
def summarize(x, article_key: str, summary_key: str):
    return {"inputs": _join(["summarize:", x[article_key]]), "targets": x[summary_key]}


LANGUAGE_NAMES = {"en": "English", "de": "German", "fr": "French", "ro": "Romanian"}


@seqio.map_over_dataset
def translate(x, source_language: str, target_language: str):
    """ "translate English to German: <en>" -> "<de>"."""
    prefix = f"translate {LANGUAGE_NAMES[source_language]} to {LANGUAGE_NAMES[target_language]}: "
    return {
        "inputs": tf.strings.join([prefix, x[source_language]]),
        "targets": x[target_language],
    }
