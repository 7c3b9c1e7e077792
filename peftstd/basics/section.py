"""The base class of every config section."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section: unknown keys rejected, assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
