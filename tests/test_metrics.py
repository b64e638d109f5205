"""Metric functions against sklearn / scipy / sacrebleu / rouge-score on random inputs,
and the T5 conventions on top of them (percentages, invalid predictions, averages)."""

import numpy as np
import pytest
import sacrebleu
import scipy.stats
import sklearn.metrics
from rouge_score import rouge_scorer

from t5pipe.tasks import metrics

SEEDS = range(5)


def random_labels(seed: int, n: int = 200, classes: int = 2):
    rng = np.random.default_rng(seed)
    return rng.integers(0, classes, n).tolist(), rng.integers(0, classes, n).tolist()


@pytest.mark.parametrize("seed", SEEDS)
def test_classification_metrics_match_sklearn(seed):
    targets, predictions = random_labels(seed)
    assert metrics.accuracy(targets, predictions)["accuracy"] == pytest.approx(
        100 * np.mean(np.array(targets) == np.array(predictions))
    )
    assert metrics.matthews_corrcoef(targets, predictions)["matthews_corrcoef"] == pytest.approx(
        100 * sklearn.metrics.matthews_corrcoef(targets, predictions)
    )
    assert metrics.f1_score_with_invalid(targets, predictions)["f1"] == pytest.approx(
        100 * sklearn.metrics.f1_score(targets, predictions)
    )
    targets3, predictions3 = random_labels(seed, classes=3)
    macro = metrics.mean_multiclass_f1(3)(targets3, predictions3)
    assert macro == {
        "mean_3class_f1": pytest.approx(
            100 * sklearn.metrics.f1_score(targets3, predictions3, average="macro")
        )
    }


@pytest.mark.parametrize("seed", SEEDS)
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    targets = rng.uniform(0, 5, 300)
    predictions = targets + rng.normal(0, 1.5, 300)
    assert metrics.pearson_corrcoef(targets, predictions)["pearson_corrcoef"] == pytest.approx(
        100 * scipy.stats.pearsonr(targets, predictions).statistic
    )
    assert metrics.spearman_corrcoef(targets, predictions)["spearman_corrcoef"] == pytest.approx(
        100 * scipy.stats.spearmanr(targets, predictions).statistic
    )


def test_f1_counts_invalid_predictions_as_wrong():
    targets = [1, 0, 1, 1, 0]
    predictions = [1, -1, -1, 1, 0]  # -1: a label the postprocessor could not parse
    # Invalid predictions become the opposite class: [1, 1, 0, 1, 0].
    expected = 100 * sklearn.metrics.f1_score(targets, [1, 1, 0, 1, 0])
    assert metrics.f1_score_with_invalid(targets, predictions)["f1"] == pytest.approx(expected)
    assert expected < 100 * sklearn.metrics.f1_score(targets, [1, 0, 1, 1, 0])


def test_squad_takes_max_over_golds_with_official_normalisation():
    result = metrics.squad(
        [["The Denver Broncos", "Broncos"], ["1,000 people"], ["Paris"]],
        ["denver broncos!", "1000 people", "in Paris France"],
    )
    # exact: yes ("denver broncos"), yes ("1000 people"), no; F1 of the third: p=1/3, r=1.
    assert result["em"] == pytest.approx(100 * 2 / 3)
    assert result["f1"] == pytest.approx(100 * (1 + 1 + 0.5) / 3)


def test_rouge_matches_rouge_score_mean():
    rng = np.random.default_rng(0)
    words = "the cat sat on a mat . dog ran far away quickly".split()
    targets = [" ".join(rng.choice(words, 12)) for _ in range(20)]
    predictions = [" ".join(rng.choice(words, 10)) for _ in range(20)]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"])
    result = metrics.rouge(targets, predictions)
    for key in ("rouge1", "rouge2", "rougeLsum"):
        expected = np.mean(
            [
                scorer.score(t.replace(" . ", " .\n"), p.replace(" . ", " .\n"))[key].fmeasure
                for t, p in zip(targets, predictions, strict=True)
            ]
        )
        assert result[key] == pytest.approx(100 * expected)
    assert metrics.rouge(["a b c"], ["a b c"])["rouge2"] == pytest.approx(100)


def test_bleu_is_sacrebleu_corpus_bleu_intl():
    targets = ["The cat sat on the mat.", "He went to the market yesterday."]
    predictions = ["The cat sat on a mat.", "He went to market yesterday."]
    expected = sacrebleu.corpus_bleu(predictions, [targets], tokenize="intl").score
    assert metrics.bleu(targets, predictions)["bleu"] == pytest.approx(expected)
    assert metrics.bleu(targets, targets)["bleu"] == pytest.approx(100)


def test_multirc_scores_answers_and_questions():
    targets = [{"value": v, "group": g} for v, g in [(1, 0), (0, 0), (1, 1), (1, 1), (0, 2)]]
    predictions = [{"value": v} for v in [1, 0, 1, 0, -1]]
    assert metrics.multirc_exact_match(targets, predictions) == {
        "exact_match": pytest.approx(100 / 3)  # only question 0 is all right
    }
    f1 = metrics.multirc_f1_over_all_answers(targets, predictions)["f1"]
    assert f1 == pytest.approx(100 * sklearn.metrics.f1_score([1, 0, 1, 1, 0], [1, 0, 1, 0, 1]))


def test_record_counts_each_query_once():
    targets = [
        {"value": ["Obama", "Barack Obama"], "group": (0, 0)},
        {"value": ["Obama", "Barack Obama"], "group": (0, 0)},  # duplicate per answer
        {"value": ["Paris"], "group": (0, 1)},
    ]
    predictions = [{"value": "Barack Obama"}, {"value": "Barack Obama"}, {"value": "London"}]
    assert metrics.record(targets, predictions) == {"em": 50.0, "f1": 50.0}


def test_glue_average_averages_within_then_across_tasks():
    by_task = {
        "glue_cola_v002": {"matthews_corrcoef": 50.0},
        "glue_mrpc_v002": {"f1": 90.0, "accuracy": 80.0},  # MRPC counts as 85
        "glue_stsb_v002": {"pearson_corrcoef": 88.0, "spearman_corrcoef": 86.0},  # 87
        "glue_mnli_matched_v002": {"accuracy": 84.0},  # MNLI-m and -mm form one task: 83
        "glue_mnli_mismatched_v002": {"accuracy": 82.0},
        "glue_wnli_v002": {"accuracy": 10.0},  # excluded
        "glue_ax_v002": {},  # excluded
        "super_glue_rte_v102": {"accuracy": 0.0},  # not GLUE
    }
    assert metrics.glue_average(by_task) == pytest.approx((50 + 85 + 87 + 83) / 4)
    with pytest.raises(ValueError, match="no GLUE task"):
        metrics.glue_average({"glue_wnli_v002": {"accuracy": 50.0}})
