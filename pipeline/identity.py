"""Identity stitching: which person an event belongs to, across identifiers and channels.

An identity graph over identifiers (``customer_id:c1``, ``device_id:d9`` …). Every identifier
belongs to one person. A person is either a known customer (``c:<customer_id>``) or anonymous
(``a:<first identifier seen>``). An event that carries a customer id together with other
identifiers links them: an anonymous person they belonged to is merged into the customer (a
merge is reported, so the anonymous journeys become the customer's).

Over-merge protection: two known customers are never merged. An identifier seen with more
than ``max_customers`` distinct customers (a shared store kiosk, a family tablet) is blocked:
it is no longer used to resolve or merge, and the block is reported once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, NamedTuple

CUSTOMER = "customer_id"
_new: Final = tuple.__new__  # a Resolution with all fields given, without its Python __new__


class Resolution(NamedTuple):
    person_id: str
    merged: tuple[str, ...] = ()  # anonymous persons merged into person_id by this event
    blocked: tuple[str, ...] = ()  # identifiers blocked by this event
    # identifiers newly linked to person_id by this event (a customer id the first time it is
    # seen too; not those that came with a merged person: they were linked to it before)
    linked: tuple[str, ...] = ()


@dataclass
class IdentityGraph:
    max_customers: int = 3
    owner: dict[str, str] = field(default_factory=dict)
    # person → identifiers it owns (tuples: nothing for the garbage collector to scan)
    members: dict[str, tuple[str, ...]] = field(default_factory=dict)
    customers_seen: dict[str, set[str]] = field(default_factory=dict)
    blocked: set[str] = field(default_factory=set)
    changed: set[str] = field(default_factory=set)  # identifiers whose sharing/blocking changed

    def own(self, identifier: str, person: str) -> None:
        """Record that ``identifier`` belongs to ``person`` (no merging, no checks)."""
        self._own(identifier, person)

    def share(self, identifier: str, first: str, other: str) -> bool:
        """``identifier`` was seen with customer ``other`` too; True when that blocks it."""
        blocked: list[str] = []
        self._shared(identifier, first, other, blocked)
        return bool(blocked)

    def person_of(self, identifier: str) -> str | None:
        return self.owner.get(identifier)

    def _own(self, identifier: str, person: str) -> None:
        self.owner[identifier] = person
        members = self.members.get(person)
        if members is None:
            self.members[person] = (identifier,)
        elif identifier not in members:
            self.members[person] = (*members, identifier)

    def _merge(self, source: str, target: str) -> None:
        for identifier in self.members.pop(source, ()):
            self._own(identifier, target)

    def _shared(self, identifier: str, first: str, other: str, blocked: list[str]) -> None:
        seen = self.customers_seen.setdefault(identifier, {first})
        seen.add(other)
        self.changed.add(identifier)
        if len(seen) > self.max_customers and identifier not in self.blocked:
            self.blocked.add(identifier)
            blocked.append(identifier)

    def resolve(self, identifiers: tuple[tuple[str, str], ...]) -> Resolution:
        """The person of an event carrying ``identifiers`` (strongest first); links them."""
        keys = [kind + ":" + value for kind, value in identifiers]
        settled = self.settled(keys)
        return Resolution(settled) if settled is not None else self.resolve_keys(keys)

    def settled(self, keys: list[str]) -> str | None:
        """The person every one of ``keys`` belongs to already, none blocked (the common case:
        nothing to link or merge); None otherwise. (A customer id always comes first and
        always belongs to its customer.)"""
        if not keys:
            return None
        owner = self.owner
        first = owner.get(keys[0])
        if first is None:
            return None
        blocked = self.blocked
        if blocked and keys[0] in blocked:
            return None
        for index in range(1, len(keys)):
            key = keys[index]
            if owner.get(key) != first or (blocked and key in blocked):
                return None
        return first

    def resolve_keys(self, keys: list[str]) -> Resolution:
        """``resolve`` for identifiers written as keys (``kind:value``)."""
        merged: list[str] = []
        blocked: list[str] = []
        linked: list[str] = []
        customer_key = next((k for k in keys if k.startswith(CUSTOMER + ":")), None)
        if customer_key is not None:
            person = "c:" + customer_key[len(CUSTOMER) + 1 :]
            if customer_key not in self.owner:
                self._own(customer_key, person)
                linked.append(customer_key)
        else:
            candidates: list[str] = []
            for key in keys:
                owner = self.owner.get(key)
                if owner is not None and key not in self.blocked and owner not in candidates:
                    candidates.append(owner)
            customers = [p for p in candidates if p.startswith("c:")]
            if customers:
                person = customers[0]
            elif candidates:
                person = candidates[0]
            elif keys:
                usable = [k for k in keys if k not in self.blocked] or keys
                person = "a:" + usable[0]
            else:  # the shard never submits one (pipeline/shard.py ``_strip_foreign``)
                raise ValueError("a touch without identifiers belongs to nobody")
        for key in keys:
            if key == customer_key or key in self.blocked:
                continue
            owner = self.owner.get(key)
            if owner is None:
                self._own(key, person)
                linked.append(key)
            elif owner == person:
                continue
            elif owner.startswith("a:"):
                self._merge(owner, person)
                merged.append(owner)
            elif person.startswith("c:"):
                self._shared(key, owner, person, blocked)
        return _new(Resolution, (person, tuple(merged), tuple(blocked), tuple(linked)))
