"""An installed package never assumes a checkout: the offline assets come from DISTILL_ASSETS, or their absence is
named with the fix."""
from __future__ import annotations

from pathlib import Path

import pytest

from distill import paths


def test_assets_come_from_distill_assets_else_the_checkout(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILL_ASSETS", str(tmp_path))
    assert paths.assets_dir() == tmp_path
    monkeypatch.delenv("DISTILL_ASSETS")
    assert paths.assets_dir() == paths.PACKAGE_PARENT / "assets"


def test_an_installed_package_without_assets_names_distill_assets(monkeypatch, tmp_path):
    site = tmp_path / "site-packages"  # an installed package: no setup.py beside it
    site.mkdir()
    monkeypatch.setattr(paths, "PACKAGE_PARENT", site)
    monkeypatch.delenv("DISTILL_ASSETS", raising=False)
    problem = paths.assets_problem("the offline teacher", paths.assets_dir() / "teacher")
    assert problem.startswith(f"the offline teacher not found at {site / 'assets' / 'teacher'} ($DISTILL_ASSETS "
                              "(unset)): fetch the offline assets with `bash tools/fetch_offline_assets.sh DIR` and "
                              "set DISTILL_ASSETS=DIR")
    assert paths.assets_problem("x", Path(__file__)) is None


def test_the_reviews_task_of_an_installed_package_says_where_to_get_them(monkeypatch, tmp_path):
    from distill.evaluation import tasks

    monkeypatch.setenv("DISTILL_ASSETS", str(tmp_path / "none"))
    with pytest.raises(tasks.TaskDataError, match="reviews table not found at .*none/reviews/reviews.parquet: run "
                                                  "`bash tools/fetch_offline_assets.sh`, set DISTILL_ASSETS"):
        tasks._reviews_path(None)


def test_no_module_of_the_package_reaches_for_the_checkout():
    source = Path(paths.__file__).parent
    offenders = [str(p.relative_to(source)) for p in source.rglob("*.py")
                 if "parents[2]" in p.read_text(encoding="utf-8") or "REPO_ROOT" in p.read_text(encoding="utf-8")]
    assert offenders == []
