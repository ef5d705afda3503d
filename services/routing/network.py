"""A network version: the directory and rule set together, validated as a whole and hashed.

A version is refused with every problem listed, so an operator fixes a file in one pass and the
running version keeps serving meanwhile.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from services.routing.rules import RuleSet
from shared.directory import Directory


class NetworkConfigError(ValueError):
    """The directory or rules are invalid; `problems` lists each one with where it is."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Network:
    directory: Directory
    rules: RuleSet
    hash: str

    def content(self) -> dict:
        """Return the canonical document that the hash is taken over."""
        return {"directory": self.directory.model_dump(mode="json"), "rules": self.rules.model_dump(mode="json", by_alias=True)}


def _errors(where: str, exc: ValidationError) -> list[str]:
    return [f"{where}: {'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors()]


def _cross_check(directory: Directory, rules: RuleSet) -> list[str]:
    names = {a.id for a in directory.agencies} | {u.id for _, u in directory.units()}
    posts = {p.id for p in directory.posts}
    problems, seen = [], set()
    for rule in rules.walk():
        if rule.id in seen:
            problems.append(f"rules: rule id {rule.id} is used twice")
        seen.add(rule.id)
        problems += [f"rules: rule {rule.id}: unknown agency or unit {n}" for n in (*rule.named, *rule.deny) if n not in names]
        problems += [f"rules: rule {rule.id}: unknown post {p}" for p in rule.match.post if p not in posts]
    return problems


def network_from(doc: dict, where: str = "network") -> Network:
    """Validate a {directory, rules} document; raise NetworkConfigError listing every problem."""
    if not isinstance(doc, dict) or set(doc) != {"directory", "rules"}:
        raise NetworkConfigError([f"{where}: expected exactly the keys 'directory' and 'rules'"])
    problems, directory, rules = [], None, None
    try:
        directory = Directory.model_validate(doc["directory"])
    except ValidationError as exc:
        problems += _errors(f"{where}: directory", exc)
    try:
        rules = RuleSet.model_validate(doc["rules"])
    except ValidationError as exc:
        problems += _errors(f"{where}: rules", exc)
    if directory and rules:
        problems += _cross_check(directory, rules)
    if problems:
        raise NetworkConfigError(problems)
    canonical = {"directory": directory.model_dump(mode="json"), "rules": rules.model_dump(mode="json", by_alias=True)}
    digest = hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return Network(directory, rules, f"sha256:{digest}")


def _yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NetworkConfigError([f"{path}: file not found"]) from None
    except yaml.YAMLError as exc:
        raise NetworkConfigError([f"{path}: not valid YAML: {exc}"]) from None


def load_network(path: Path) -> Network:
    """Load a network from a folder (directory.yaml + rules.yaml) or one bundle file."""
    if path.is_dir():
        return network_from({"directory": _yaml(path / "directory.yaml"), "rules": _yaml(path / "rules.yaml")}, str(path))
    return network_from(_yaml(path), str(path))
