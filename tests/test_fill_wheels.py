"""``tools/fill_wheels.py`` (``tools/gpu_check.sh --fill-wheels``) without a network: the GPU image's
package list, dreamperp's requirements, which packages of a resolution are fetched, and the folder
checks (one version each, the device call's size)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_tool():  # noqa: ANN202
    import importlib.util

    spec = importlib.util.spec_from_file_location("fill_wheels", ROOT / "tools" / "fill_wheels.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


fw = _load_tool()


def test_image_package_list_parses_and_pins_the_known_versions() -> None:
    image = fw.read_image_packages(fw.IMAGE_PACKAGES.read_text(encoding="utf-8"))
    assert len(image) == 197  # the workplace's list, 2026-11-17
    assert image["torch"] == "2.11.0" and image["transformers"] == "5.17.0" and image["huggingface-hub"] == "1.33.0"
    assert image["scipy"] is None and "pytest" in image and "pillow" in image
    for name in ("diffusers", "nerfacc", "omegaconf", "imageio-ffmpeg", "trimesh", "pymcubes", "fast-simplification", "xatlas"):
        assert name not in image  # what the fill brings along
    assert "torch==2.11.0" in fw.constraints(image) and len(fw.constraints(image)) == 30


def test_image_package_list_names_a_bad_line() -> None:
    assert fw.read_image_packages("# c\n\nHuggingFace_Hub==1.0  # x\nnumpy\n") == {"huggingface-hub": "1.0", "numpy": None}
    with pytest.raises(fw.FillError, match=r"line 2: 'numpy>=2' is not NAME or NAME==VERSION"):
        fw.read_image_packages("scipy\nnumpy>=2\n")


def test_requirements_are_pyprojects_without_torch_plus_pytest() -> None:
    reqs = fw.requirements((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "diffusers>=0.27" in reqs and "xatlas>=0.0.11" in reqs and reqs[-1] == "pytest>=7"
    assert not any(r.startswith("torch") for r in reqs)
    assert fw.requirements('[project]\ndependencies = [\n    "torch>=2.1",\n    "nvidia-cublas",\n    "numpy",\n]\n') == ["numpy", "pytest>=7"]


def _item(name: str, version: str, *requires: str) -> dict:
    return {"metadata": {"name": name, "version": version, "requires_dist": list(requires)}}


def test_to_fetch_walks_past_nothing_the_image_holds() -> None:
    """diffusers (not in the image) brings importlib-metadata and, through it, lazy-importer; typer and
    what only it needs (pydantic) come with huggingface-hub, which the image holds; torch never."""
    report = {"install": [
        _item("diffusers", "0.42.1", "importlib_metadata", "huggingface-hub>=1.32", 'torch>=2.6; extra == "torch"', 'pytest; extra == "test"'),
        _item("importlib_metadata", "10.2.0", "zipp>=3.20", 'lazy-importer>=0.1; python_version < "3.15"', 'old-backport; python_version < "3.8"'),
        _item("lazy-importer", "0.1.0"), _item("zipp", "4.1.2"),
        _item("huggingface_hub", "1.33.0", "typer"), _item("typer", "0.29.2", "pydantic>=2"), _item("pydantic", "2.14.4"),
        _item("nerfacc", "0.5.3", "rich>=12", "torch"), _item("rich", "15.0.0"), _item("torch", "2.11.0", "nvidia-cublas"),
        _item("nvidia-cublas", "13.1"), _item("trimesh", "5.2.0", "numpy", 'scipy; extra == "easy"'), _item("numpy", "2.5.2"),
        _item("scipy", "1.18.1"), _item("pytest", "9.2.0"), _item("old-backport", "1.0"),
    ]}
    image = {"zipp": None, "huggingface-hub": "1.33.0", "typer": None, "rich": None, "numpy": "2.5.2", "pytest": None, "scipy": None}
    env = fw.target_environment("3.12")
    assert env["python_version"] == "3.12" and env["python_full_version"] == "3.12.0" and env["platform_machine"] == "x86_64"
    roots = ["diffusers>=0.27", "nerfacc", "trimesh", "pytest>=7", "torch"]
    assert fw.to_fetch(report, roots, image, env) == [("diffusers", "0.42.1"), ("importlib_metadata", "10.2.0"), ("lazy-importer", "0.1.0"),
                                                      ("nerfacc", "0.5.3"), ("trimesh", "5.2.0")]
    # An extra asked for brings its packages; without the image every package but torch's is fetched.
    no_scipy = {name: version for name, version in image.items() if name != "scipy"}
    assert fw.to_fetch(report, ["trimesh[easy]"], no_scipy, env) == [("trimesh", "5.2.0"), ("scipy", "1.18.1")]
    everything = {name for name, _ in fw.to_fetch(report, roots, {}, env)}
    assert {"pydantic", "typer", "numpy", "zipp"} <= everything and not {"torch", "nvidia-cublas", "old-backport"} & everything
    with pytest.raises(fw.FillError, match="missing-pkg is required"):
        fw.to_fetch(report, ["missing-pkg"], {}, env)


def test_platform_options_name_cpython_and_the_manylinux_tags() -> None:
    opts = fw.platform_options("3.12")
    assert opts[:5] == ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"]
    platforms = {opts[i + 1] for i, o in enumerate(opts) if o == "--platform"}
    assert {"manylinux_2_39_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"} <= platforms
    assert "manylinux_2_40_x86_64" not in platforms  # newer than the image's glibc


def test_check_folder_one_version_each_and_the_size_limit(tmp_path: Path) -> None:
    (tmp_path / "PyMCubes-0.1.6-cp312-cp312-manylinux2014_x86_64.whl").write_bytes(b"x" * 300)
    (tmp_path / "fast_simplification-0.2.0-cp312-cp312-manylinux_2_28_x86_64.whl").write_bytes(b"x" * 200)
    files, total = fw.check_folder(tmp_path, 500)
    assert total == 500 and [f for f, _ in files] == sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(fw.FillError, match=r"over the 0 MiB .*largest: PyMCubes"):
        fw.check_folder(tmp_path, 499)
    (tmp_path / "pymcubes-0.1.4-cp312-cp312-manylinux2014_x86_64.whl").write_bytes(b"")
    with pytest.raises(fw.FillError, match="two versions of pymcubes"):
        fw.check_folder(tmp_path, 0)
    assert fw.wheel_name("antlr4-python3-runtime-4.9.3.tar.gz") == "antlr4-python3-runtime"


def test_fill_with_a_bad_package_list_exits_2_before_any_download(tmp_path: Path) -> None:
    bad = tmp_path / "image.txt"
    bad.write_text("numpy\ntorch>=2\n")
    result = subprocess.run([sys.executable, "tools/fill_wheels.py", "--image-packages", str(bad), "--dest", str(tmp_path / "w")],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr == "fill_wheels: image package list, line 2: 'torch>=2' is not NAME or NAME==VERSION\n"
    assert not (tmp_path / "w").exists()
