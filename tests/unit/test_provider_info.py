"""The provider's metadata matches its distribution, and everything it lists imports."""

from __future__ import annotations

import importlib
from importlib.metadata import distribution, entry_points

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


def test_every_listed_module_imports() -> None:
    info = get_provider_info()
    modules = listed_modules(info)
    assert len(modules) >= 7
    for module in modules:
        assert importlib.import_module(module).__name__ == module
    for class_path in info.get("hook-class-names", []):
        module, _, name = class_path.rpartition(".")
        assert hasattr(importlib.import_module(module), name)


def test_entry_point_resolves_to_get_provider_info() -> None:
    matches = [
        ep
        for ep in entry_points(group="apache_airflow_provider")
        if ep.value.startswith("airflow_provider_mlpipe")
    ]
    assert len(matches) == 1
    assert matches[0].dist is not None and matches[0].dist.metadata["Name"] == "airflow-provider-mlpipe"
    assert matches[0].load() is get_provider_info
