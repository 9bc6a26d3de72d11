"""BDDL goal parsing and sub-goal ordering for the scripted demonstrator.

A LIBERO BDDL file is an s-expression; its ``(:goal (And ...))`` is a conjunction
of atoms ``(On a b)``, ``(In a region)``, ``(Open x)``, ``(Close x)``,
``(Turnon x)``, ``(Turnoff x)``. :func:`parse_goal` reads the atoms and
:func:`order_subgoals` sorts them into an executable sequence (open a container
before putting something in it, close it afterwards, ...).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SUPPORTED = ("on", "in", "open", "close", "turnon", "turnoff")


@dataclass(frozen=True)
class Atom:
    """One goal predicate, e.g. ``Atom("in", ("alphabet_soup_1", "basket_1_contain_region"))``."""

    predicate: str
    args: tuple[str, ...]

    def __str__(self) -> str:
        return f"({self.predicate} {' '.join(self.args)})"


def _tokenize(text: str) -> list[str]:
    text = "\n".join(line.split(";")[0] for line in text.splitlines())
    return text.replace("(", " ( ").replace(")", " ) ").split()


def _parse(tokens: list[str]) -> list:
    stack: list[list] = [[]]
    for tok in tokens:
        if tok == "(":
            stack.append([])
        elif tok == ")":
            if len(stack) == 1:
                raise ValueError("unbalanced ')' in BDDL text")
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(tok)
    if len(stack) != 1:
        raise ValueError("unbalanced '(' in BDDL text")
    return stack[0]


def _section(tree: list, key: str) -> list | None:
    for node in tree:
        if isinstance(node, list) and node and node[0] == key:
            return node
        if isinstance(node, list):
            found = _section(node, key)
            if found is not None:
                return found
    return None


def _atoms(node: list) -> list[Atom]:
    head = str(node[0]).lower()
    if head == "and":
        return [a for child in node[1:] for a in _atoms(child)]
    if head not in SUPPORTED:
        raise ValueError(f"unsupported BDDL goal predicate {node[0]!r}; the planner handles {SUPPORTED}")
    return [Atom(head, tuple(str(x) for x in node[1:]))]


def parse_goal(bddl: str | Path) -> list[Atom]:
    """Goal atoms of a BDDL file (path) or BDDL text, in file order."""
    text = Path(bddl).read_text() if isinstance(bddl, Path) or (
        "\n" not in str(bddl) and str(bddl).endswith(".bddl")) else str(bddl)
    goal = _section(_parse(_tokenize(text)), ":goal")
    if goal is None or len(goal) < 2:
        raise ValueError(f"no (:goal ...) section in BDDL {str(bddl)[:80]!r}")
    return _atoms(goal[1])


def order_subgoals(atoms: list[Atom]) -> list[Atom]:
    """Executable order: Turnon/Turnoff and Open first, then pick-and-place (In/On), Close last.

    Every ``In`` gets an explicit ``open`` of its region first (a drawer must be pulled out
    before something goes in); the planner skips an ``open`` that already holds, and one of
    a region that cannot open (a basket, a tray) always holds.
    """
    first, opens, places, closes = [], [], [], []
    for a in atoms:
        if a.predicate in ("turnon", "turnoff"):
            first.append(a)
        elif a.predicate == "open":
            opens.append(a)
        elif a.predicate == "close":
            closes.append(a)
        else:
            places.append(a)
    needed = [Atom("open", (a.args[1],)) for a in places
              if a.predicate == "in" and Atom("open", (a.args[1],)) not in opens]
    return first + opens + needed + places + closes
