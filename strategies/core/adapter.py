"""What both Flower adapters share (no Flower): the rule they run, seeded sampling."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, ClassVar, Self

from strategies.core.options import ServerOptions
from strategies.core.rule import Rule
from strategies.core.state import StrategyState
from strategies.core.update import LOG, RoundResult, ScoreFn
from strategies.sampling import Node, SeededSampler


def take_knobs(rule_type: type[Rule] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Move the rule's knobs (fields of its options) out of ``kwargs``, which keeps the rest."""
    known = rule_type.Options.field_names() if rule_type is not None else ()
    return {key: kwargs.pop(key) for key in list(kwargs) if key in known}


def build_rule(
    rule_type: type[Rule] | None,
    *,
    rule: Rule | None,
    options: ServerOptions | None,
    score_fn: ScoreFn | None,
    knobs: Mapping[str, Any],
) -> Rule:
    """``rule`` itself, or ``rule_type`` built from ``options`` or from ``knobs``."""
    if rule is not None:
        given = sorted(knobs) + [k for k, v in (("options", options), ("score_fn", score_fn)) if v]
        if given:
            raise TypeError(
                f"pass either rule= or the rule's knobs, not both (got rule= and "
                f"{', '.join(given)}); {type(rule).__name__}'s knobs go into its "
                f"{rule.Options.__name__}"
            )
        if rule_type is not None and not isinstance(rule, rule_type):
            raise TypeError(f"rule= must be a {rule_type.__name__}, not {type(rule).__name__}")
        return rule
    if rule_type is None:
        raise TypeError("pass rule=, or use a strategy class that names its rule")
    if options is not None and knobs:
        raise TypeError(f"pass either options= or the knobs {sorted(knobs)}, not both")
    allowed = rule_type.Options.field_names()
    if unknown := sorted(set(knobs) - set(allowed)):
        raise TypeError(
            f"{rule_type.__name__} has no option {', '.join(map(repr, unknown))}; "
            f"its options are: {', '.join(allowed)}"
        )
    return rule_type(options or rule_type.Options(**knobs), score_fn=score_fn)


class RuleAdapter:
    """Base of each Flower adapter (beside a Flower strategy class): the rule, its state, the
    last round, seeded sampling. :meth:`of` makes one per rule."""

    rule_type: ClassVar[type[Rule] | None] = None

    def adopt(
        self,
        rule: Rule | None,
        options: ServerOptions | None,
        score_fn: ScoreFn | None,
        knobs: Mapping[str, Any],
        *,
        sampling_seed: int | None = None,
        query_timeout: float | None = None,
    ) -> None:
        """Take ``rule``, or build ``rule_type`` from ``options`` or ``knobs``. Without a
        ``sampling_seed`` Flower samples, unseeded; ``query_timeout``: the wait for the nodes'
        partition ids."""
        self.rule = build_rule(
            self.rule_type, rule=rule, options=options, score_fn=score_fn, knobs=knobs
        )
        self.last_result: RoundResult | None = None
        self.sampler = None if sampling_seed is None else SeededSampler(sampling_seed)
        self.query_timeout = query_timeout
        self.last_sampled: list[int | str] | None = None  # the last training round's clients

    def reseed(
        self,
        server_round: int,
        purpose: str,
        flower_sample: Sequence[Node],
        available: Sequence[Node],
        ask: Callable[[list[Node]], Mapping[Node, object]],
    ) -> list[Node]:
        """The round's nodes: Flower's sample, or as many nodes (Flower decides how many and
        waits for them) chosen by the seeded sampler among ``available``. ``ask(nodes)``
        returns the partition ids of those that answered; the others are asked again next
        round. A training round tells the rule what share of the clients it asks."""
        chosen = list(flower_sample)
        if self.sampler is not None:
            if flower_sample and (unknown := self.sampler.unknown(available)):
                for node, partition_id in ask(unknown).items():
                    self.sampler.learn(node, partition_id)
            chosen = self.sampler.sample(server_round, purpose, available, len(flower_sample))
            if len(chosen) < len(flower_sample):
                LOG.warning(
                    f"round {server_round}: {len(chosen)} of {len(flower_sample)} nodes sampled "
                    f"for {purpose}; the others have not reported their partition id yet"
                )
            if purpose == "train":
                self.last_sampled = [self.sampler.label(node) for node in chosen]
        if purpose == "train":
            self.rule.sampling = (len(chosen), len(available))
        return chosen

    def client_name(self, node: Hashable) -> str:
        """``node``'s partition id when it reported one (the same in every run), else its id."""
        if self.sampler is not None and node in self.sampler.keys:
            return str(self.sampler.label(node))
        return str(node)

    def sender(self, node: Hashable, instruction: str) -> tuple[Hashable, str, str]:
        """Who answers ``instruction`` (the id of what was sent) from ``node``: the key that
        matches the reply to what was sent, the client id of its update, and how a failure
        names it. Each node is one client here (an optional part may serve several)."""
        return node, self.client_name(node), f"node {node}"

    @classmethod
    def of(cls, rule_type: type[Rule], name: str) -> type[Self]:
        """A subclass named ``name`` whose instances run ``rule_type`` (built from its knobs)."""
        doc = f"{rule_type.__name__} as a {cls.__name__}: {rule_type.__doc__}"
        namespace = {"rule_type": rule_type, "__doc__": doc, "__module__": cls.__module__}
        return type(name, (cls,), namespace)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.rule.options})"

    def get_state(self) -> StrategyState:  # strategies.core.state.Stateful, for checkpoints
        return self.rule.state

    def set_state(self, state: StrategyState) -> None:
        self.rule.state = state
