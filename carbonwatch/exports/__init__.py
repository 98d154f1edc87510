"""Statements in the shapes people file: SCI (ISO/IEC 21031), SPDX 3.0 AI, CycloneDX 1.6 model
card, and an EU AI Act Annex XI section. Each takes the model statement
(:func:`carbonwatch.statement.model_statement`) and reshapes it; none reads the store itself."""

from importlib import metadata


def tool_version() -> str:
    """carbonwatch's installed version, for the documents' tool entries."""
    try:
        return metadata.version("carbonwatch")
    except metadata.PackageNotFoundError:
        return "unknown"
