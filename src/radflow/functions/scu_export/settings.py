"""scu-export's pipeline variables (Clara ``variables``), parsed and checked once per stage."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field, field_validator

from radflow.sdk.errors import InvalidInput
from radflow.sdk.stage import StageVariables


def _comma_list(value: object) -> object:
    if isinstance(value, str):
        return tuple(p.strip() for p in value.split(",") if p.strip())
    return value


class ScuExportSettings(StageVariables):
    #: destination names (comma list), looked up in the adapter's configuration
    destinations: tuple[str, ...] = Field((), alias="DESTINATIONS")
    #: the inputs whose files are sent
    inputs: tuple[str, ...] = Field(("seg", "rtstruct"), alias="SCU_INPUTS")
    #: calling AE title; empty = the configuration's ``dicom.scu.ae-title``, else RADFLOW
    ae_title: str = Field("", alias="SCU_AE_TITLE", max_length=16)
    #: association attempts per destination (1 = no retry)
    attempts: int = Field(4, alias="SCU_ATTEMPTS", ge=1, le=20)
    #: first retry delay in seconds, doubled after each failed attempt
    retry_delay: float = Field(1.0, alias="SCU_RETRY_DELAY", ge=0, le=300)
    #: ACSE, DIMSE and network timeout in seconds
    timeout: float = Field(30.0, alias="SCU_TIMEOUT", gt=0)
    #: the maximum PDU this SCU offers to receive (0 = unlimited)
    max_pdu: int = Field(0, alias="SCU_MAX_PDU", ge=0)
    #: fraction of files that may fail permanently before the task fails; 0 = none may
    #: (Clara's results service tolerated 0.5)
    failure_threshold: float = Field(0.0, alias="SCU_FAILURE_THRESHOLD", ge=0, lt=1)

    _lists = field_validator("destinations", "inputs", mode="before")(_comma_list)

    @classmethod
    def from_variables(cls, variables: Mapping[str, str]) -> ScuExportSettings:
        """As :meth:`StageVariables.from_variables`; at least one destination is required."""
        settings = super().from_variables(variables)
        if not settings.destinations:
            raise InvalidInput(
                "pipeline variable DESTINATIONS is empty: "
                "name at least one destination, e.g. MYPACS"
            )
        return settings
