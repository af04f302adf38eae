"""Plain records shared by every data-set loader."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sample:
    """One image: its path, identity (-1 = junk / unknown) and camera index (0-based)."""

    path: str
    pid: int
    camid: int


@dataclass
class ReidDataset:
    """Train / query / gallery splits of one data set.

    ``train`` identities are never used for training (the methods are
    unsupervised); they are kept for diagnostics (cluster purity, t-SNE).
    ``has_train_labels`` is False for plain folders of unlabelled images.
    """

    name: str
    root: str
    train: list[Sample]
    query: list[Sample] = field(default_factory=list)
    gallery: list[Sample] = field(default_factory=list)
    has_train_labels: bool = True
    warnings: list[str] = field(default_factory=list)

    @property
    def num_train_cams(self) -> int:
        return len({s.camid for s in self.train})

    def summary(self) -> str:
        """A small table: images, identities and cameras per split."""
        lines = [f"{self.name} at {self.root}", f"  {'split':<8}{'images':>9}{'ids':>7}{'cams':>6}"]
        for split in ("train", "query", "gallery"):
            items = getattr(self, split)
            ids = len({s.pid for s in items if s.pid >= 0}) if (split != "train" or self.has_train_labels) else "-"
            cams = len({s.camid for s in items})
            lines.append(f"  {split:<8}{len(items):>9}{ids!s:>7}{cams:>6}")
        return "\n".join(lines)
