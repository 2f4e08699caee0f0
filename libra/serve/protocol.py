"""Request and response bodies of the server, field by field as in the OpenAI API.

Only the fields the server reads are declared; others that OpenAI clients send (``user``,
``frequency_penalty``, ``quality``, ...) are accepted and ignored. Errors use OpenAI's envelope,
``{"error": {"message", "type", "param", "code"}}``, raised as :class:`APIError`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from libra.validation import SEEDS


class APIError(Exception):
    """An error answered with OpenAI's envelope and ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# a seed outside torch's range must be a 400, not a failed batch
SEED_MIN, SEED_MAX = SEEDS.low, SEEDS.high


class _Request(BaseModel):
    # strict: "max_tokens": "5" or true and "stream": "yes" are 400s, as OpenAI answers them, not
    # silently read as 5, 1 and true (an int is still a float: "temperature": 1)
    model_config = ConfigDict(extra="ignore", strict=True)


# ---- chat completions ------------------------------------------------------------------------------
class TextPart(_Request):
    type: Literal["text"]
    text: str


class ImageURL(_Request):
    url: str  # a data URL (data:image/png;base64,...), or a local path when the server allows it
    detail: str | None = None  # accepted, ignored: every image is tokenised at the model's resolution


class ImagePart(_Request):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(_Request):
    include_usage: bool = False


class ChatCompletionRequest(_Request):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)  # the newer name of max_tokens
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1)  # one answer per request


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _only_what_is_set(self, handler) -> dict:
        # OpenAI sends only what a chunk carries: the last one's delta is {}, not role/content null
        return {key: value for key, value in handler(self).items() if value is not None}


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


# ---- images ------------------------------------------------------------------------------------------
class ImageGenerationRequest(_Request):
    prompt: str = Field(min_length=1)
    model: str | None = None
    n: int = Field(default=1, ge=1, le=10)
    size: str | None = None  # only the model's own resolution, e.g. "336x336"
    response_format: Literal["b64_json", "url"] | None = None
    # not in OpenAI's images API (pass them with the client's extra_body): how the codes are drawn
    temperature: float | None = Field(default=None, ge=0, le=2)
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)


class ImageData(BaseModel):
    b64_json: str
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]


# ---- models ------------------------------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "libra"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
