"""What both Flower adapters share (no Flower): the rule they run, seeded sampling."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, ClassVar, Self

from strategies.core.options import ServerOptions
from strategies.core.rule import Rule
from strategies.core.state import StrategyState
from strategies.core.update import LOG, RoundResult, ScoreFn
from strategies.sampling import Node, SeededSampler


def build_rule(
    rule_type: type[Rule] | None,
    kwargs: dict[str, Any],
    rule: Rule | None = None,
    options: ServerOptions | None = None,
    score_fn: ScoreFn | None = None,
) -> Rule:
    """``rule``, or ``rule_type`` built from ``options`` or from its knobs, popped from ``kwargs``."""
    known = rule_type.Options.field_names() if rule_type is not None else ()
    knobs = {key: kwargs.pop(key) for key in list(kwargs) if key in known}
    if rule is None:
        if rule_type is None:
            raise TypeError("pass rule=, or use a strategy class that names its rule")
        if options is not None and knobs:
            raise TypeError(f"pass either options= or the knobs {sorted(knobs)}, not both")
        return rule_type(options or rule_type.Options(**knobs), score_fn=score_fn)
    if knobs or options is not None or score_fn is not None:
        raise TypeError(
            f"pass either rule= or what builds one (options=, score_fn=, knobs), not both: "
            f"{type(rule).__name__}'s knobs go into its {rule.Options.__name__}"
        )
    if rule_type is not None and not isinstance(rule, rule_type):
        raise TypeError(f"rule= must be a {rule_type.__name__}, not {type(rule).__name__}")
    return rule


class RuleAdapter:
    """Base of each Flower adapter, beside a Flower strategy: the rule, the last round, sampling."""

    rule_type: ClassVar[type[Rule] | None] = None

    def __init__(
        self,
        *args: Any,
        rule: Rule | None = None,
        options: ServerOptions | None = None,
        score_fn: ScoreFn | None = None,
        sampling_seed: int | None = None,
        query_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        """``args``, ``kwargs``: the rule's knobs, then the Flower strategy's arguments.
        ``sampling_seed``: seeded sampling (None: Flower's), waiting ``query_timeout`` for
        partition ids."""
        self.rule = build_rule(self.rule_type, kwargs, rule, options, score_fn)
        self.last_result: RoundResult | None = None
        self.sampler = None if sampling_seed is None else SeededSampler(sampling_seed)
        self.query_timeout = query_timeout
        self.last_sampled: list[int | str] | None = None  # the last training round's clients
        super().__init__(*args, **kwargs)

    def reseed(
        self,
        server_round: int,
        purpose: str,
        flower_sample: Sequence[Node],
        available: Sequence[Node],
        ask: Callable[[list[Node]], Mapping[Node, object]],
    ) -> list[Node]:
        """The round's nodes: Flower's sample, or as many chosen by the seeded sampler among
        ``available``. ``ask(nodes)``: the partition ids of those that answered (the others are
        asked again next round). A training round tells the rule what share of clients it asks."""
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
        return str(self.sampler.label(node) if self.sampler and node in self.sampler.keys else node)

    def sender(self, node: Hashable, instruction: str) -> tuple[Hashable, str, str]:
        """The key matching ``node``'s reply to ``instruction`` (what was sent), its update's
        client id, and how a failure names it (one client a node; an optional part may differ)."""
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
