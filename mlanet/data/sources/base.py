"""What every training-source reader shares: a read-only sequence of :class:`FaceSample`.

A reader reads its annotations (never pixels) when constructed, applies the AFLW2000-3D
guard (:mod:`.exclusion`), and then behaves as a list of samples. Its attributes:

* ``source``, ``terms``, ``root``;
* ``excluded``: names dropped as AFLW2000-3D images (see :mod:`.exclusion`);
* ``skipped``: other files left out, each with the reason (e.g. an image without labels).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence, overload

from mlanet.data.sources.schema import FaceSample


class SourceReader(Sequence[FaceSample]):
    """Base class: a list of samples with the reader's bookkeeping (see the module docstring)."""

    #: Source name (key in the registry); set by each subclass.
    source: str = ""
    #: Terms of use of the source (one line); set by each subclass.
    terms: str = ""

    def __init__(self, root: Path, samples: list[FaceSample], excluded: list[str], skipped: list[str]) -> None:
        self.root = root
        self._samples = samples
        self.excluded: list[str] = excluded
        self.skipped: list[str] = skipped

    @property
    def keys(self) -> list[str]:
        """Every sample's key, in order (a training list)."""
        return [s.key for s in self._samples]

    def __len__(self) -> int:
        return len(self._samples)

    @overload
    def __getitem__(self, index: int) -> FaceSample: ...

    @overload
    def __getitem__(self, index: slice) -> list[FaceSample]: ...

    def __getitem__(self, index: int | slice) -> FaceSample | list[FaceSample]:
        return self._samples[index]

    def __iter__(self) -> Iterator[FaceSample]:
        return iter(self._samples)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.root)!r}: {len(self)} samples, "
            f"{len(self.excluded)} AFLW2000-3D dropped, {len(self.skipped)} skipped)"
        )
