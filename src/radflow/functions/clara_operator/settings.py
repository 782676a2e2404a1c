"""Settings of the bring-your-own operator runner.

It has none of its own: the operator's command comes from the stage spec the compiler writes
(``RADFLOW_STAGE_SPEC.command`` = the Clara ``container.command``) and its Clara ``variables``
are passed to the process unchanged (with Clara paths mapped).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ClaraOperatorSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")
