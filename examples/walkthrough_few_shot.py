"""k-shot RTE for the README's SST-2 walkthrough: `glue_rte_v002_1shot` and
`glue_rte_v002_4shot`, each example's inputs preceded by k exemplars from RTE's train
split in the task's own format ("rte sentence1: ... sentence2: ... entailment").

    t5pipe tasks show glue_rte_v002_4shot --module examples.walkthrough_few_shot \
        --split validation -n 1
"""

from t5pipe.tasks import few_shot

for _k in (1, 4):
    few_shot.few_shot_task("glue_rte_v002", k=_k)
