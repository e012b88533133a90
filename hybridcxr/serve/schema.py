"""The service's JSON shapes as pydantic models: they document the API in ``/docs`` and check every answer."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Finding(BaseModel):
    """The classifier's output for one finding."""

    finding: str
    probability: float = Field(ge=0, le=1)
    positive: bool | None = Field(description="probability >= threshold (thresholds chosen on the validation "
                                              "split); null for a finding the model never learned")
    threshold: float
    no_decision: str | None = Field(default=None, description="why there is no decision (null when there is one)")
    colour: str = Field(description="the finding's overlay colour, hex")


class Box(BaseModel):
    """One detector box in the original image's pixels."""

    finding: str
    score: float
    x_min: float
    y_min: float
    x_max: float
    y_max: float
    colour: str


class ImageInfo(BaseModel):
    """What was read from the upload (no names or birth dates are ever read)."""

    format: str = Field(description="dicom, png or jpeg, told by content")
    bytes: int
    width: int
    height: int
    view: str | None = None
    modality: str | None = None
    pixel_spacing: tuple[float, float] | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None


class Panel(BaseModel):
    """Size of the image panel at the overlay picture's top-left corner (the legend is to its right)."""

    width: int
    height: int


class Overlay(BaseModel):
    """Where the overlay PNG is (``?boxes=false`` for the picture without boxes) and its image panel."""

    url: str
    panel: Panel


class Demographics(BaseModel):
    """Where the age and sex used came from: request (form field), header, or unknown."""

    age: str
    sex: str


class Analysis(BaseModel):
    """Everything the service says about one radiograph."""

    id: str
    image: ImageInfo
    age_years: float | None
    sex: str | None
    demographics_source: Demographics
    findings: list[Finding] = Field(description="highest probability first")
    boxes: list[Box]
    overlay: Overlay
    sr: str | None = Field(None, description="URL of the DICOM Structured Report (TID 1500, application/dicom) "
                                             "of a DICOM upload, in its study; null for PNG and JPEG")
    lungs: dict | None = Field(None, description="lung-field measurements (quality flag, areas, CTR estimates) "
                                                "when the run has a lung model; null otherwise")
    model: dict = Field(description="the model card's facts: versions, findings, thresholds rule, validation AUROC")


class Error(BaseModel):
    """Every error the service makes on purpose."""

    error: str = Field(description="a stable code, e.g. upload_too_large, unsupported_type, undecodable")
    detail: str = Field(description="what is wrong, in words")


class Batching(BaseModel):
    """How the service batches concurrent requests, and the batches run since it started."""

    max_batch: int = Field(description="requests run in one batch at most (server option --max-batch; 1: off)")
    window_ms: float = Field(description="ms a batch waits for more requests after its first (--batch-window-ms)")
    batches: int = Field(description="batches run")
    images: int = Field(description="requests in those batches")
    largest: int = Field(description="the largest batch run")


class Health(BaseModel):
    """Liveness: answered while an analysis runs."""

    status: str
    busy: bool
    results_kept: int
    model: str
    batching: Batching
