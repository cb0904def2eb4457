"""Configuration: config.yaml = base settings + a preset block that overrides them."""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

SCHEMA_RELPATH = Path("workflow/schemas/config.schema.yaml")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and the fix."""


def deep_merge(base: dict, override: dict) -> dict:
    """Return base updated by override, recursing into nested dicts."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _substitute_preset(value: Any, preset: str) -> Any:
    if isinstance(value, str):
        return value.replace("{preset}", preset)
    if isinstance(value, dict):
        return {k: _substitute_preset(v, preset) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute_preset(v, preset) for v in value]
    return value


def resolve_config(raw: dict, preset: str | None = None, overrides: dict | None = None) -> dict:
    """Merge the chosen preset over the base of a raw config.yaml dict.

    `overrides` (e.g. from `--config`) is applied last. `{preset}` in strings is substituted.
    """
    raw = deep_merge(raw, overrides or {})
    preset = preset or raw.get("preset", "demo")
    presets = raw.get("presets", {})
    if preset not in presets:
        raise ConfigError(
            f"unknown preset {preset!r}; config.yaml defines {sorted(presets)} under 'presets:'"
        )
    base = {k: v for k, v in raw.items() if k != "presets"}
    cfg = deep_merge(base, presets[preset] or {})
    if overrides:
        # explicit overrides win over the preset too
        cfg = deep_merge(cfg, {k: v for k, v in overrides.items() if k not in ("presets", "preset")})
    cfg["preset"] = preset
    return _substitute_preset(cfg, preset)


def validate_config(cfg: dict, schema_path: Path) -> None:
    """Validate a resolved config against the JSON schema (YAML file); raise ConfigError."""
    import jsonschema

    schema = yaml.safe_load(schema_path.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors[:10]:
            key = ".".join(str(p) for p in err.absolute_path) or "<top level>"
            lines.append(f"  {key}: {err.message}")
        raise ConfigError(
            f"invalid configuration (preset {cfg.get('preset')!r}, schema {schema_path}):\n"
            + "\n".join(lines)
        )


def load_config(
    path: str | Path = "config.yaml",
    preset: str | None = None,
    overrides: dict | None = None,
    validate: bool = True,
) -> dict:
    """Read config.yaml, merge the preset, validate against workflow/schemas/ when present."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} not found; run from the repository root or pass --config")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    cfg = resolve_config(raw, preset, overrides)
    schema_path = path.resolve().parent / SCHEMA_RELPATH
    if validate and schema_path.exists():
        validate_config(cfg, schema_path)
    return cfg


def config_hash(cfg: dict) -> str:
    """Stable short hash of a resolved config (for provenance)."""
    blob = json.dumps(cfg, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def results_dir(cfg: dict) -> Path:
    """results/<preset>/ for a resolved config."""
    return Path(cfg["results_root"]) / cfg["preset"]


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--config and --preset, shared by every `lc` subcommand."""
    parser.add_argument("--config", default="config.yaml", help="config file (default: config.yaml)")
    parser.add_argument("--preset", default=None, help="preset under presets: (default: config's preset)")


def config_from_args(args: argparse.Namespace) -> dict:
    """The resolved, validated config named by --config/--preset."""
    return load_config(args.config, preset=args.preset)
