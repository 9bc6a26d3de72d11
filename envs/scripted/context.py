"""What a primitive may use of the planner that runs it: :class:`PlannerContext`.

The object-kind modules (articulated, door, insert) take the planner as an argument;
typing it with this protocol instead of :class:`envs.scripted.planner.ScriptedPlanner`
keeps the imports one-way (planner -> primitives), with no cycle to hide behind
function-level or TYPE_CHECKING imports.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from envs.libero.bddl import Atom
from envs.scripted.primitives import Style
from envs.scripted.scene import SceneView


class PlannerContext(Protocol):
    """The planner's state a primitive reads, plus ``failure``, which it may set."""

    env: Any  # the robosuite/LIBERO environment being planned in
    view: SceneView  # geometry queries on the current simulator state
    style: Style  # this demonstration's speeds and pauses
    rng: np.random.Generator  # the demonstration's random choices
    atoms: list[Atom]  # the goal's sub-goals, in the order they are achieved
    failure: str | None  # why the plan failed (None while it has not)

    def holds(self, atom: Atom) -> bool:
        """Whether ``atom`` holds in the current simulator state."""
        ...
