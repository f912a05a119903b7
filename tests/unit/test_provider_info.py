"""The provider's metadata matches its distribution, and everything it lists imports."""

from __future__ import annotations

import importlib
from importlib.metadata import distribution, entry_points
from pathlib import Path
from types import ModuleType

import airflow_provider_mlpipe
from airflow_provider_mlpipe import get_provider_info


def listed_modules(info: dict[str, object]) -> list[str]:
    modules: list[str] = []
    for section in ("operators", "sensors", "triggers", "hooks"):
        for entry in info.get(section, []):  # type: ignore[attr-defined]
            modules.extend(entry["python-modules"])
    return modules


def test_package_name_is_the_distribution_name() -> None:
    info = get_provider_info()
    assert info["package-name"] == "airflow-provider-mlpipe"
    dist = distribution("airflow-provider-mlpipe")
    assert dist.metadata["Name"] == info["package-name"]
    assert info["versions"][0] == airflow_provider_mlpipe.__version__ == dist.version


def _defines_a_component(module: ModuleType) -> bool:
    from airflow.sdk import BaseHook, BaseOperator
    from airflow.triggers.base import BaseTrigger

    bases = (BaseHook, BaseOperator, BaseTrigger)
    return any(
        isinstance(obj, type) and issubclass(obj, bases) and obj.__module__ == module.__name__
        for obj in vars(module).values()
    )


def test_listed_modules_are_exactly_the_ones_defining_components() -> None:
    """Every module of operators/, sensors/, triggers/ and hooks/ that defines an operator, sensor, trigger
    or hook is listed (Airflow's provider registry shows only those), and every listed one imports."""
    package = Path(airflow_provider_mlpipe.__file__).parent
    defining = set()
    for section in ("operators", "sensors", "triggers", "hooks"):
        for path in sorted((package / section).glob("*.py")):
            module = importlib.import_module(f"airflow_provider_mlpipe.{section}.{path.stem}")
            if _defines_a_component(module):
                defining.add(module.__name__)
    assert len(defining) >= 12
    assert sorted(listed_modules(get_provider_info())) == sorted(defining)


def test_entry_point_resolves_to_get_provider_info() -> None:
    matches = [
        ep
        for ep in entry_points(group="apache_airflow_provider")
        if ep.value.startswith("airflow_provider_mlpipe")
    ]
    assert len(matches) == 1
    assert matches[0].dist is not None and matches[0].dist.metadata["Name"] == "airflow-provider-mlpipe"
    assert matches[0].load() is get_provider_info
