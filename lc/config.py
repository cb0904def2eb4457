"""Configuration: config.yaml = base settings + a preset block that overrides them.

The one place a workflow or a command reads its settings:
- `load_config` reads the file, merges the preset and the overrides, and validates the result
  against the schema shipped with the package (lc/config.schema.yaml), then checks what a schema
  cannot say (`check_values`: finite numbers, ordered ranges, supported combinations).
- Overrides from `snakemake --config key='{nested: value}'` arrive as strings; `coerce_overrides`
  YAML-parses a string wherever the schema expects another type, before validation.
- `check_startup` is what the workflow and every command check before starting work.
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import yaml

# The schema ships inside the package, so configs anywhere on disk are validated.
SCHEMA_PATH = Path(__file__).resolve().with_name("config.schema.yaml")
NULL_SPELLINGS = ("null", "Null", "NULL", "~")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and the fix."""


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping gives one key twice (plain YAML loaders silently keep the last value)."""

    def __init__(self, key: Any, first_line: int, line: int):
        super().__init__(f"key {key!r} is given twice in one mapping, at lines {first_line} and {line}")
        self.key, self.first_line, self.line = key, first_line, line


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (merge keys `<<` may still be
    overridden, as YAML intends)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKeyError(key, seen[key], line)
            except TypeError:  # an unhashable key: the base loader says what is wrong with it
                continue
            seen[key] = line
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """YAML text as Python values, refusing duplicate keys (`DuplicateKeyError`)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader: plain data only


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


# --- schema ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def load_schema(path: str | Path = SCHEMA_PATH) -> dict:
    """The JSON schema (a YAML file) of a resolved config; ConfigError when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"the config schema {path} is missing; it ships with the lc package "
                          "(reinstall it: pip install -e .)")
    return yaml.safe_load(path.read_text())


def _deref(schema: dict, root: dict) -> dict:
    while isinstance(schema, dict) and "$ref" in schema:
        node: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _accepts(schema: dict, kind: str, value: Any = None) -> bool:
    """Whether `schema` lets through a value of JSON type `kind` (an enum: that exact value)."""
    if "enum" in schema:
        return value in schema["enum"] if kind == "string" else None in schema["enum"]
    types = schema.get("type")
    if types is None:
        return kind == "string"  # unconstrained: keep the string as given
    return kind in ([types] if isinstance(types, str) else types)


def coerce_overrides(value: Any, schema: dict | None = None, root: dict | None = None) -> Any:
    """Overrides with strings YAML-parsed wherever the schema expects another type.

    Snakemake passes nested `--config` values as strings (`evaluate='{max_images: 10}'` gives
    {"max_images": "10"}); this turns them into the int, float, bool, null, list or mapping the
    schema expects. A string the schema accepts stays a string. `presets:` blocks are coerced
    against the schema of a resolved config, like the top level.
    """
    root = root if root is not None else load_schema()
    schema = _deref(schema if schema is not None else root, root)
    if isinstance(value, str):
        if _accepts(schema, "string", value):
            return None if value in NULL_SPELLINGS and _accepts(schema, "null") else value
        try:
            parsed = load_yaml(value)
        except DuplicateKeyError as exc:
            raise ConfigError(f"the override {value!r} gives key {exc.key!r} twice; keep one") from None
        except yaml.YAMLError:
            return value  # validation names the key and the expected type
        return value if isinstance(parsed, str) else coerce_overrides(parsed, schema, root)
    if isinstance(value, list):
        items = schema.get("items")
        return [coerce_overrides(v, items, root) if isinstance(items, dict) else v for v in value]
    if isinstance(value, dict):
        out = {}
        for key, sub in value.items():
            if schema is root and key == "presets" and isinstance(sub, dict):
                out[key] = {name: coerce_overrides(block, root, root) if isinstance(block, dict) else block
                            for name, block in sub.items()}
                continue
            child = schema.get("properties", {}).get(key, schema.get("additionalProperties"))
            out[key] = coerce_overrides(sub, child, root) if isinstance(child, dict) else sub
        return out
    return value


def validate_config(cfg: dict, schema_path: str | Path = SCHEMA_PATH) -> None:
    """Validate a resolved config against the schema, then `check_values`; raise ConfigError."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema(schema_path))
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
    check_values(cfg)


# --- what the schema cannot say ---------------------------------------------------------------
def _non_finite(value: Any, key: str = "") -> list[str]:
    if isinstance(value, float) and not math.isfinite(value):
        return [key]
    if isinstance(value, dict):
        return [k for sub_key, sub in value.items() for k in _non_finite(sub, f"{key}.{sub_key}".lstrip("."))]
    if isinstance(value, list):
        return [k for i, sub in enumerate(value) for k in _non_finite(sub, f"{key}[{i}]")]
    return []


def check_values(cfg: dict) -> None:
    """Checks beyond the schema's types and bounds; ConfigError naming the key and the fix."""
    problems = [f"  {key}: {lookup(cfg, key)!r} is not a finite number" for key in _non_finite(cfg)]
    low, high = (list(cfg.get("train", {}).get("scale_range", [])) + [0, 0])[:2]
    if low > high:
        problems.append(f"  train.scale_range: [{low}, {high}] is upside down; give [low, high], "
                        f"e.g. [{high}, {low}]")
    if cfg.get("model", {}).get("freeze_bn") is False:
        problems.append("  model.freeze_bn: false is not supported: LC's region stages (and Model Cascade's) "
                        "run BatchNorm on the routed pixels only, which needs frozen BN statistics; set "
                        "model.freeze_bn: true (the IRNet pretraining's BN mode is train.pretrain_bn)")
    gpus = cfg.get("resources", {}).get("gpus", {})
    if cfg.get("device") == "cpu" and any(gpus.values()):
        asked = ", ".join(f"{kind} {n}" for kind, n in gpus.items() if n)
        problems.append(f"  device: cpu, but resources.gpus asks the scheduler for GPUs ({asked}); set "
                        "device: cuda (or auto), or resources.gpus to 0 for a CPU run")
    if problems:
        raise ConfigError(f"invalid configuration (preset {cfg.get('preset')!r}):\n" + "\n".join(problems))


def lookup(cfg: dict, key: str) -> Any:
    """The value at a dotted key (`train.lr`, `evaluate.rho_sweep[0]`); KeyError if absent."""
    node: Any = cfg
    for part in key.replace("[", ".").replace("]", "").split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


# --- reading a config file ------------------------------------------------------------------------
def _check_raw(raw: Any, source: str) -> None:
    """A config file's shape: a mapping of settings whose `presets:` maps names to mappings."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} holds {raw!r:.60} ({type(raw).__name__}), not a mapping of settings; "
                          "a config file is `key: value` lines such as config.yaml's")
    presets = raw.get("presets", {})
    if not isinstance(presets, dict):
        raise ConfigError(f"presets: in {source} is a {type(presets).__name__}; it maps each preset's name "
                          "to the keys it overrides, e.g. `presets: {demo: {seed: 1}}`")
    for name, block in presets.items():
        if block is not None and not isinstance(block, dict):
            raise ConfigError(f"presets.{name} in {source} is a {type(block).__name__}; a preset is a "
                              f"mapping of the keys it overrides, e.g. `{name}: {{train: {{lr: 0.01}}}}`")


def resolve_config(raw: dict, preset: str | None = None, overrides: dict | None = None,
                   source: str = "config.yaml") -> dict:
    """Merge the chosen preset over the base of a raw config.yaml dict.

    `overrides` (e.g. from `--config`, strings coerced by `coerce_overrides`) are applied last and
    win over the preset too. `{preset}` in strings is substituted.
    """
    _check_raw(raw, source)
    if overrides is not None and not isinstance(overrides, dict):
        raise ConfigError(f"config overrides must be a mapping of keys, not {overrides!r}")
    overrides = coerce_overrides(overrides) if overrides else {}
    raw = deep_merge(raw, overrides)
    _check_raw(raw, f"{source} with the overrides")
    preset = preset or raw.get("preset", "demo")
    presets = raw.get("presets", {})
    if preset not in presets:
        raise ConfigError(f"unknown preset {preset!r}; {source} defines {sorted(presets)} under 'presets:'")
    base = {k: v for k, v in raw.items() if k != "presets"}
    cfg = deep_merge(base, presets[preset] or {})
    cfg = deep_merge(cfg, {k: v for k, v in overrides.items() if k not in ("presets", "preset")})
    cfg["preset"] = preset
    return _substitute_preset(cfg, preset)


def read_raw_config(path: str | Path) -> dict:
    """The parsed config file, shape-checked; ConfigError naming the file otherwise."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; run from the repository root or pass --config")
    try:
        raw = load_yaml(path.read_text())
    except DuplicateKeyError as exc:
        raise ConfigError(f"{path}, line {exc.line}: key {exc.key!r} is given twice in the same mapping "
                          f"(also at line {exc.first_line}); YAML would silently keep the last value. Keep "
                          "one of them") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    raw = {} if raw is None else raw
    _check_raw(raw, str(path))
    return raw


def load_config(path: str | Path = "config.yaml", preset: str | None = None,
                overrides: dict | None = None, validate: bool = True) -> dict:
    """Read a config file, merge the preset and overrides, validate against the packaged schema."""
    cfg = resolve_config(read_raw_config(path), preset, overrides, source=str(path))
    if validate:
        validate_config(cfg)
    return cfg


def resolved_config_text(path: str | Path, preset: str, overrides: dict | None = None) -> str:
    """The config file with the overrides applied to the base and to every preset, as YAML.

    What the workflow hands its jobs: the overrides win over every preset, as in `resolve_config`,
    and commands that read another preset (model-info's full-size comparison) still find it.
    """
    raw = read_raw_config(path)
    overrides = coerce_overrides(overrides) if overrides else {}
    resolved = deep_merge(raw, overrides)
    resolved["preset"] = preset
    resolved["presets"] = {name: deep_merge(block or {}, overrides)
                           for name, block in raw.get("presets", {}).items()}
    return yaml.safe_dump(resolved, sort_keys=False)


def write_resolved_config(path: str | Path, preset: str, overrides: dict | None, out: str | Path) -> Path:
    """Write `resolved_config_text` to `out`, only when it changed (its mtime then means a change)."""
    out = Path(out)
    text = resolved_config_text(path, preset, overrides)
    if not out.exists() or out.read_text() != text:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(out)
    return out


# --- before starting work -------------------------------------------------------------------------
def check_startup(cfg: dict) -> None:
    """What the workflow and every command check before working: the validated values, and that
    the configured folders can be what they name; ConfigError naming the key and the fix."""
    check_values(cfg)
    data = cfg["data"]
    for key, folder in (("results_root", cfg["results_root"]), ("data.root", data["root"])):
        if Path(folder).exists() and not Path(folder).is_dir():
            raise ConfigError(f"{key} = {folder} is a file, not a folder; point {key} at a folder")
    mirror = data.get("mirror")
    remote = isinstance(mirror, str) and mirror.startswith(("http://", "https://"))
    if data["synthetic"] and (mirror is None or remote):
        raise ConfigError("data.synthetic: true needs data.mirror to be a local folder (where `lc synth` "
                          f"writes the archives), not {mirror!r}")
    if mirror is not None and not remote and not data["synthetic"] and not Path(mirror).is_dir():
        raise ConfigError(f"data.mirror = {mirror} is not a folder; create it and place the archives there, "
                          "or set data.mirror: null to download from the public hosts")


def config_hash(cfg: dict) -> str:
    """Stable short hash of a resolved config (for provenance)."""
    blob = json.dumps(cfg, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def results_dir(cfg: dict) -> Path:
    """results/<preset>/ for a resolved config."""
    return Path(cfg["results_root"]) / cfg["preset"]


# --- command-line arguments -----------------------------------------------------------------------
def rho_arg(text: str) -> float:
    """argparse type of a routing threshold: a number with 0 < rho <= 1."""
    try:
        rho = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"rho must be a number in (0, 1], got {text!r}") from None
    if not 0 < rho <= 1:  # also false for NaN
        raise argparse.ArgumentTypeError(f"rho must be in (0, 1] (1: every pixel goes through every "
                                         f"stage), got {text}")
    return rho


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--config and --preset, shared by every `lc` subcommand."""
    parser.add_argument("--config", default="config.yaml", help="config file (default: config.yaml)")
    parser.add_argument("--preset", default=None, help="preset under presets: (default: config's preset)")
    parser.add_argument("--backbone", default=None,
                        help="a backbone of backbones.models: its keys merged over model: (default: model:)")


def with_backbone(cfg: dict, name: str | None) -> dict:
    """`cfg` with backbones.models[name] merged over model: (the backbones experiment's runs)."""
    if name is None:
        return cfg
    models = (cfg.get("backbones") or {}).get("models", {})
    if name not in models:
        raise ConfigError(f"--backbone {name}: not a key of backbones.models in the config "
                          f"(known: {sorted(models)}); add it there")
    cfg = copy.deepcopy(cfg)
    cfg["model"] = deep_merge(cfg["model"], models[name] or {})
    validate_config(cfg)
    return cfg


def config_from_args(args: argparse.Namespace) -> dict:
    """The resolved, validated config named by --config/--preset, checked by `check_startup`."""
    cfg = with_backbone(load_config(args.config, preset=args.preset), getattr(args, "backbone", None))
    check_startup(cfg)
    return cfg
