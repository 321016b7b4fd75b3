"""Where the project and the paper's released data lie, for tests in any folder."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAPER_DATA = REPO.parent / "shared" / "paper-data"
