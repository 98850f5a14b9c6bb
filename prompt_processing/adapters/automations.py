"""The Prefect Automations of ``deployments/automations.yaml``, created or updated by `pp deploy`
(through ``prefect_api``, which gives them its client).

Each automation is a Prefect event trigger with one action of ours: ``notify`` (a notification
block's message to operators) or ``changeState`` (the flow run the event is about is moved to a
state, e.g. Crashed for a run whose process died). An existing automation keeps its enabled or
paused state, which is an operator's choice; everything else follows the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ActionTypes, ChangeFlowRunState, SendNotification
from prefect.events.schemas.automations import AutomationCore, EventTrigger
from prefect.exceptions import ObjectNotFound
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Notify(BaseModel):
    """Send a notification through a block (``<block type slug>/<block name>``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    block: str = Field(pattern=r"^[a-z0-9-]+/[^/]+$", description="<block type slug>/<block name>.")
    subject: str
    body: str


class ChangeState(BaseModel):
    """Move the flow run the triggering event is about to a state of this type, with a message."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state: StateType
    message: str = Field(min_length=1)


class AutomationDefinition(BaseModel):
    """One entry of ``deployments/automations.yaml``: a Prefect event trigger and exactly one action."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1)
    description: str = ""
    enabled: bool = False
    trigger: dict[str, Any]
    notify: Notify | None = None
    change_state: ChangeState | None = Field(None, alias="changeState")

    @model_validator(mode="after")
    def _one_action(self) -> AutomationDefinition:
        if (self.notify is None) == (self.change_state is None):
            raise ValueError(f"automation {self.name}: give exactly one of notify, changeState")
        return self


def load(path: Path) -> list[AutomationDefinition]:
    """The automations of the file at ``path`` (none if it is absent); ValueError naming what is invalid."""
    if not path.exists():
        return []
    try:
        entries = yaml.safe_load(path.read_text()) or {}
        return [AutomationDefinition.model_validate(e) for e in entries.get("automations") or []]
    except (ValidationError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: invalid automation: {exc}") from exc


def ensure(client: SyncPrefectClient, definitions: list[AutomationDefinition]) -> dict[str, str]:
    """Create or update each automation through ``client``; name -> what was done. One whose
    notification block does not exist is reported, not created."""
    done: dict[str, str] = {}
    for definition in definitions:
        try:
            action = _action(client, definition)
        except ObjectNotFound:
            done[definition.name] = (f"not created: no {definition.notify and definition.notify.block} "
                                     "notification block (create it, then run pp deploy again)")  # fmt: skip
            continue
        existing = client.read_automations_by_name(definition.name)
        automation = AutomationCore(
            name=definition.name, description=definition.description,
            enabled=existing[0].enabled if existing else definition.enabled,
            trigger=EventTrigger.model_validate(definition.trigger), actions=[action],
        )  # fmt: skip
        if existing:
            client.update_automation(existing[0].id, automation)
            done[definition.name] = "updated"
        else:
            client.create_automation(automation)
            done[definition.name] = "created" if automation.enabled else "created (disabled: enable it to act)"
    return done


def _action(client: SyncPrefectClient, definition: AutomationDefinition) -> ActionTypes:
    """The Prefect action of ``definition``; ObjectNotFound if its notification block is missing."""
    if definition.change_state is not None:
        change = definition.change_state
        return ChangeFlowRunState(state=change.state, name=change.state.value.title(), message=change.message)
    assert definition.notify is not None  # one of the two: _one_action
    slug, block_name = definition.notify.block.split("/", 1)
    block = client.read_block_document_by_name(block_name, slug, include_secrets=False)
    return SendNotification(block_document_id=block.id, subject=definition.notify.subject, body=definition.notify.body)
