"""The trained variants of Table 2, in one table: what each routes, which losses it has, what it starts
from, its iteration budget and its label.

Training, evaluation, the workflow and the tables read this table; nothing else lists variants.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    """One trained model family.

    name: the key used on the command line, in run folders and in the config.
    label: its row in Table 2 (the paper's wording).
    model_kind: "cascade" (one IRNet with three stage heads) or "mc" (three separate networks).
    routed: later stages see only the pixels earlier stages were not confident about (training).
    routed_at_eval: evaluation routes too (DSN + Dropout trains with routing-sized random masks but
        evaluates densely).
    stage_losses: losses after every stage (False: one loss after stage 3, the IRNet baseline).
    init_from: the variant whose checkpoint this one starts from, or "imagenet" (model.pretrained).
    budget_key: the key under train.iterations that sets its iterations.
    """

    name: str
    label: str
    model_kind: str
    routed: bool
    routed_at_eval: bool
    stage_losses: bool
    init_from: str
    budget_key: str


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("irnet", "IRNet", "cascade", routed=False, routed_at_eval=False, stage_losses=False,
                init_from="imagenet", budget_key="pretrain"),
        Variant("dsn", "DSN", "cascade", routed=False, routed_at_eval=False, stage_losses=True,
                init_from="irnet", budget_key="cascade"),
        Variant("dsn_dropout", "DSN + Dropout", "cascade", routed=True, routed_at_eval=False,
                stage_losses=True, init_from="irnet", budget_key="cascade"),
        Variant("mc", "Model Cascade", "mc", routed=True, routed_at_eval=True, stage_losses=True,
                init_from="irnet", budget_key="mc"),
        Variant("lc", "LC", "cascade", routed=True, routed_at_eval=True, stage_losses=True,
                init_from="irnet", budget_key="cascade"),
    )
}

# Table 2's row order (the paper's).
TABLE2_ORDER = ("irnet", "dsn", "dsn_dropout", "mc", "lc")
# Table 2's equal-budget control (not in the paper): a DSN run that starts where LC starts
# (train.cascade_init) and trains LC's iterations (train.iterations.cascade), so that its
# iterations_total equals LC's; it shows how much of LC's gain over DSN is training time.
BUDGET_CONTROL = "dsn_budget"  # its run folder, runs/<dataset>/dsn_budget
BUDGET_CONTROL_LABEL = "DSN, same total budget as LC"
BUDGET_CONTROL_VARIANT = "dsn"
BUDGET_CONTROL_OF = "lc"  # whose start and iterations it copies

# Variants trained from another variant's checkpoint (everything but the pretraining).
CASCADE_VARIANTS = tuple(name for name, v in VARIANTS.items() if v.init_from != "imagenet")


def get_variant(name: str) -> Variant:
    """The variant called `name`; a clear error listing the known ones otherwise."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)}") from None


def init_variant(name: str, cascade_init: str) -> str:
    """The variant whose checkpoint `name` starts from, given train.cascade_init (irnet | dsn):
    lc and dsn_dropout start from dsn when it is "dsn"; the others as `init_from` says."""
    variant = get_variant(name)
    if cascade_init not in ("irnet", "dsn"):
        raise ValueError(f"train.cascade_init must be irnet or dsn, got {cascade_init!r}")
    if cascade_init == "dsn" and variant.model_kind == "cascade" and variant.routed:
        return "dsn"
    return variant.init_from
