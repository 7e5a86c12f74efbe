"""CPU energy from Linux powercap RAPL counters (/sys/class/powercap/intel-rapl:*)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from harness.energy.base import Meter, MeterError, Reading

POWERCAP_ROOT = Path("/sys/class/powercap")
_PACKAGE = re.compile(r"intel-rapl:\d+$")
_SUBZONE = re.compile(r"intel-rapl:\d+:\d+$")


@dataclass
class _Zone:
    """One RAPL zone; energy_j counts from the meter's first sample."""

    label: str
    energy_file: Path
    max_range_uj: int
    energy_j: float = 0.0
    last_uj: int | None = None
    last_t_s: float | None = None

    def update(self, t_s: float, raw_uj: int) -> float | None:
        """Advance to a new raw reading; returns the mean power since the last sample (W)."""
        if self.last_uj is None:
            self.last_uj, self.last_t_s = raw_uj, t_s
            return None
        delta_uj = raw_uj - self.last_uj
        if delta_uj < 0:  # the counter rolled over to 0 after max_energy_range_uj
            delta_uj += self.max_range_uj
        self.energy_j += delta_uj / 1e6
        dt_s = t_s - self.last_t_s
        self.last_uj, self.last_t_s = raw_uj, t_s
        return delta_uj / 1e6 / dt_s if dt_s > 0 else None


def find_zones(root: str | os.PathLike = POWERCAP_ROOT, include_dram: bool = True) -> list[_Zone]:
    """The package zones (and DRAM subzones, which packages do not include) to measure.

    Core and uncore subzones are left out: the package zone already contains them.
    Raises MeterError saying why when none can be read.
    """
    root = Path(root)
    dirs = sorted(p for p in root.glob("intel-rapl:*") if _wanted(p, include_dram)) if root.is_dir() else []
    if not dirs:
        raise MeterError(f"no RAPL zones under {root}: no powercap RAPL on this machine; use kind 'modeled'")
    zones = []
    for zone_dir in dirs:
        energy_file = zone_dir / "energy_uj"
        if not os.access(energy_file, os.R_OK):
            raise MeterError(
                f"{energy_file} is not readable: since Linux 5.10 only root may read RAPL "
                f"(run `sudo chmod o+r {root}/intel-rapl:*/energy_uj`) or use kind 'modeled'"
            )
        name = (zone_dir / "name").read_text().strip()
        max_range = int((zone_dir / "max_energy_range_uj").read_text())
        zones.append(_Zone(f"{zone_dir.name}/{name}", energy_file, max_range))
    return zones


def _wanted(zone_dir: Path, include_dram: bool) -> bool:
    if _PACKAGE.match(zone_dir.name):
        return True
    if include_dram and _SUBZONE.match(zone_dir.name):
        name_file = zone_dir / "name"
        return name_file.is_file() and name_file.read_text().strip() == "dram"
    return False


def available(root: str | os.PathLike = POWERCAP_ROOT) -> bool:
    """Whether readable RAPL counters exist."""
    try:
        find_zones(root)
    except MeterError:
        return False
    return True


class RaplMeter(Meter):
    """CPU package (and DRAM) energy from RAPL energy_uj counters, which update about every 1 ms.

    energy_uj counts microjoules and rolls over to 0 after max_energy_range_uj; a reading
    lower than the previous one is taken as one rollover (RAPL resets only at boot, and a
    rollover takes minutes even at full power, far longer than a sampling period).
    Each sample's power_w is the mean power since the previous sample.
    """

    kind = "rapl"
    source = "measured"
    resolution_s = 0.001

    def __init__(self, hz: float = 10.0, *, root: str | os.PathLike = POWERCAP_ROOT,
                 include_dram: bool = True) -> None:
        self._zones = find_zones(root, include_dram)
        super().__init__([z.label for z in self._zones], hz)
        self._start()

    def _read(self, t_s: float) -> list[Reading]:
        readings = []
        for zone in self._zones:
            try:
                raw_uj = int(zone.energy_file.read_text())
            except (OSError, ValueError) as err:
                raise MeterError(f"reading {zone.energy_file} failed: {err}") from err
            power_w = zone.update(t_s, raw_uj)
            readings.append(Reading(zone.energy_j, power_w))
        return readings
