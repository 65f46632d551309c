"""A chat message's content parts, as OpenAI's chat takes them: what each type must carry to be served.

A part is passed on to the miners as the caller sent it (``miner_body`` forwards the JSON, not this model): these
models only refuse, as the caller's 400 naming the field, what no miner's model server could serve. Before, a part
of a known type without its payload (an ``image_url`` with no ``url``, an ``input_audio`` with no ``data``) or a
``file`` by id reached every miner, whose model servers refused it each in its own words, or a lenient one answered
as if the part were not there.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from shared.errors import NEEDED

PART_CONFIG = ConfigDict(extra="allow", strict=True)  # the request's own (``REQUEST_CONFIG``): extras pass on
PART_TYPES = ("text", "image_url", "input_audio", "file", "refusal")
# A file by its id needs OpenAI's file store, which no miner has: the part must carry the file itself.
NO_FILE_STORE = "file ids need OpenAI's file store"
# What a part of each media type must carry, said when it carries none (no braces: pydantic formats them)
PAYLOADS = {
    "image_url": "an image_url part needs its image_url, an object with the image's url (http, https or data:)",
    "input_audio": "an input_audio part needs its input_audio, an object with the audio's data (base64) and format",
    "file": f"a file part needs its file, an object with its file_data (base64, or a data: URL); {NO_FILE_STORE}",
}


class ImageURL(BaseModel):
    """An ``image_url`` part's image: a URL each miner fetches (``media_urls``) or a ``data:`` URL; an object, as at
    OpenAI (a bare string is refused there too). ``detail`` passes on as sent."""

    model_config = PART_CONFIG
    url: str


class InputAudio(BaseModel):
    model_config = PART_CONFIG
    data: str
    format: str  # OpenAI takes wav and mp3; a model server may read others (vLLM decodes by content)


class FileData(BaseModel):
    model_config = PART_CONFIG
    file_data: str | None = Field(default=None, validate_default=True)
    filename: str | None = None

    @field_validator("file_data")
    @classmethod
    def _the_file_itself(cls, v: str | None) -> str | None:
        if v is None:
            raise PydanticCustomError("file_needs_data", f"a file part needs its file_data (base64, or a data: "
                                      f"URL); {NO_FILE_STORE}")
        return v


class ContentPart(BaseModel):
    """A message's content part: of a type OpenAI's chat takes, with what that type carries (a text part its text,
    an image its url, audio its data and format, a file its bytes): anything else is the caller's 400 here, not
    each miner's model server refusing it. What a model server makes of a part it has (a text-only model given an
    image) is its own: refused, that is the caller's ``400 model_server_rejected``."""

    model_config = PART_CONFIG
    type: Literal["text", "image_url", "input_audio", "file", "refusal"] = "text"
    text: str | None = Field(default=None, validate_default=True)
    image_url: ImageURL | None = Field(default=None, validate_default=True)
    input_audio: InputAudio | None = Field(default=None, validate_default=True)
    file: FileData | None = Field(default=None, validate_default=True)

    @field_validator("text")
    @classmethod
    def _text_of_a_text_part(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None and info.data.get("type") == "text":
            raise PydanticCustomError(NEEDED, "a text part needs its text")
        return v

    @field_validator("image_url", mode="before")
    @classmethod
    def _an_image_object(cls, v: Any) -> Any:
        if isinstance(v, str):  # vLLM's shorthand, with no ``type``: here the part names its type
            raise PydanticCustomError("image_url_object", "an image_url is an object with the image's url, not a "
                                      "string")
        return v

    @field_validator("image_url", "input_audio", "file")
    @classmethod
    def _payload_of_its_type(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None and info.data.get("type") == info.field_name:
            raise PydanticCustomError(NEEDED, PAYLOADS[info.field_name])
        return v
