"""A SuperNode's per-site settings (`flower-supernode --node-config`), as one typed record.

The deployment side formats it for the command line, the ClientApp parses Flower's node
config back into it: the keys are listed here once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.config.data import SITE_NAME, SITES
from shared.errors import ConfigError

KEYS = ("site", "manifest", "cache-dir", "data-root", "device", "image-size")
_EXAMPLE = "--node-config \"site='A' manifest='/path/site_A.json' cache-dir='/path/cache'\""


@dataclass(frozen=True)
class NodeConfig:
    """One site's facts: which site, its manifest, where its preprocessing cache lives,
    its own mount of the dataset (optional), the device, and an optional image-size pin
    (the size this site prepared its data for, checked against the run's)."""

    site: str
    manifest: Path
    cache_dir: Path
    data_root: Path | None = None
    device: str = ""
    image_size: int | None = None

    def to_flower(self) -> str:
        """The `--node-config` string (TOML key=value pairs)."""
        values: dict[str, str | int | None] = {
            "site": self.site,
            "manifest": str(self.manifest),
            "cache-dir": str(self.cache_dir),
            "data-root": str(self.data_root) if self.data_root else None,
            "device": self.device or None,
            "image-size": self.image_size,
        }
        parts = []
        for key, value in values.items():
            if value is None:
                continue
            if isinstance(value, int):
                parts.append(f"{key}={value}")
                continue
            if "'" in value:
                raise ConfigError(f"node config {key!r}: {value!r} may not contain a single quote")
            parts.append(f"{key}='{value}'")
        return " ".join(parts)

    @classmethod
    def from_flower(cls, nc: Mapping[str, Any]) -> NodeConfig:
        """Parse Flower's node config; every problem is a ConfigError naming the key."""
        unknown = sorted(set(nc) - set(KEYS))
        if unknown:
            raise ConfigError(f"node config: unknown key {unknown[0]!r}; known: {list(KEYS)}")
        site = str(nc.get("site", ""))
        if not SITE_NAME.fullmatch(site):
            raise ConfigError(
                f"node config: 'site' must be a site name of data.sites (such as {list(SITES)}), "
                f"got {site[:40]!r}; start the SuperNode with {_EXAMPLE}"
            )
        manifest = Path(str(nc.get("manifest", "")))
        if not manifest.is_file():
            raise ConfigError(f"site {site}: node config 'manifest' {str(manifest)!r} is not a file")
        size = nc.get("image-size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 32):
            raise ConfigError(f"site {site}: node config 'image-size' must be an integer >= 32, got {size!r}")
        return cls(
            site=site,
            manifest=manifest,
            cache_dir=Path(str(nc.get("cache-dir") or manifest.parent.parent / "cache")),
            data_root=Path(str(nc["data-root"])) if nc.get("data-root") else None,
            device=str(nc.get("device", "")),
            image_size=size or None,
        )
