"""The scan result: one pydantic type from the moment the pipeline scores a listing to storage, redaction and response.

The score stage of the pipeline (service/scanning/pipeline.py) builds it; the scan record store keeps its JSON
(`plain`) and loads it back; a brand's view of it (service/scanning/brand_views.py) is another `ScanResult` made with
`model_copy`; the API returns it as it is (the response model of POST /v1/scan and GET /v1/scans/{id}); the console's
templates read its attributes; `counterfeit-scan scan` and `scan-batch` print its JSON.

The classes keep the names the API's contract gives them (the OpenAPI document's components `ScanOut`, `MatchOut`,
...); the service calls the whole `ScanResult`. Records stored by earlier releases load as they are: every field
added since (`authenticity_head`, `head_probability`, `feedback`) has a default.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Verdict = Literal["likely_counterfeit", "needs_review", "likely_authentic", "not_in_catalog"]
Label = Literal["authentic", "counterfeit"]
FLAGGED: tuple[Verdict, ...] = ("likely_counterfeit", "needs_review")  # kept by keep_scan_photos=flagged; a review queue's
FeedbackVerdict = Literal["confirmed_counterfeit", "confirmed_authentic", "not_applicable"]


class MatchOut(BaseModel):
    image_id: str
    brand: str
    product: str
    label: Label
    similarity: float


class NearDuplicateOut(BaseModel):
    image_id: str
    brand: str
    product: str
    label: Label
    distance: int


class ImageResultOut(BaseModel):
    sha256: str
    risk: float | None
    score: float | None
    in_catalog: bool
    nearest_authentic: float | None
    nearest_counterfeit: float | None
    margin: float | None
    head_probability: float | None = Field(
        None, description="The authenticity head's P(counterfeit) for this photo (none: no head covers it)."
    )
    near_duplicates: list[NearDuplicateOut]
    matches: list[MatchOut]


class ReasonOut(BaseModel):
    """A machine-readable reason code, a sentence for people, and the numbers behind it."""

    model_config = ConfigDict(extra="allow")
    code: str
    message: str

    def value(self, name: str) -> Any:
        """One of the numbers behind the reason (its extra fields: `photo`, `brand`, `probability`...), or None."""
        return (self.model_extra or {}).get(name)


class CalibrationOut(BaseModel):
    method: str
    fitted_at: str | None
    index_version_at_fit: str | None
    thresholds: dict[str, float]
    targets: dict[str, float | None]


class AuthenticityHeadOut(BaseModel):
    """The authenticity heads a scan was scored with: which fit, on what, at which catalog revision."""

    version: str
    catalog_revision: int
    fitted_at: str
    n_photos: int
    n_extra_photos: int
    scopes: list[str]


class ModelOut(BaseModel):
    architecture: str
    weights: str
    fingerprint: str
    dim: int
    runtime: str
    random_weights: bool


class FeedbackOut(BaseModel):
    feedback_id: str
    scan_id: str
    verdict: FeedbackVerdict
    note: str | None
    created_at: str
    added_image_ids: list[str]
    index_version: str | None
    brand: str | None = Field(None, description="The brand the feedback was given for (none: older feedback, or an admin's).")


class ScanOut(BaseModel):
    scan_id: str
    listing_id: str | None
    created_at: str
    risk: float | None
    verdict: Verdict
    calibrated: bool
    calibration: CalibrationOut | None
    score: float | None
    features: dict[str, float]
    brand: str | None
    product: str | None
    model: ModelOut
    index_version: str
    authenticity_head: AuthenticityHeadOut | None = None
    images: list[ImageResultOut]
    reasons: list[ReasonOut]
    photos_kept: bool
    feedback: list[FeedbackOut] = []

    def plain(self) -> dict[str, Any]:
        """The result as plain JSON values, without the reviews (a new scan has none; stored ones have their own
        table): what the scan record store keeps, and what `counterfeit-scan scan` and `scan-batch` print."""
        return self.model_dump(mode="json", exclude={"feedback"})

    def with_feedback(self, feedback: list[dict[str, Any]]) -> ScanOut:
        """The result with the reviews a reader may see of it (service/scanning/feedback.py's dicts)."""
        return self.model_copy(update={"feedback": [FeedbackOut.model_validate(item) for item in feedback]})


ScanResult = ScanOut  # the service's name for the scan result; the API's contract calls it ScanOut
