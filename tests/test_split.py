import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageEnhance

from crackloc.data.folders import scan_labelled
from crackloc.data.split import check_manifest, make_manifest, read_manifest, write_manifest
from crackloc.data.synthetic import write_crack_folder
from crackloc.errors import CracklocError


@pytest.fixture()
def folder_with_duplicates(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_crack_folder(root, 40, size=64, seed=7)
    pos = sorted((root / "Positive").iterdir())
    # exact duplicates: byte copies; near duplicate: slightly brighter re-encode
    for i, src in enumerate(pos[:5]):
        shutil.copyfile(src, src.with_name(f"dup_{i}.png"))
    img = Image.open(pos[5])
    ImageEnhance.Brightness(img).enhance(1.03).save(pos[5].with_name("near_5.png"))
    return root


def test_duplicates_share_a_group_and_a_split(folder_with_duplicates: Path):
    root, items = scan_labelled(folder_with_duplicates)
    rows, stats = make_manifest(root, items, seed=0, progress=False)
    by_name = {Path(r.path).name: r for r in rows}
    pos = sorted(n for n in by_name if n.endswith(".png") and n[0].isdigit() and by_name[n].label == 1)
    for i in range(5):
        a, b = by_name[pos[i]], by_name[f"dup_{i}.png"]
        assert a.group == b.group and a.split == b.split
    assert by_name["near_5.png"].group == by_name[pos[5]].group
    assert stats["exact_duplicate_files_merged"] == 5
    assert stats["groups_merged_by_near_duplicates"] >= 1
    assert check_manifest(rows)["groups_across_splits"] == 0


def test_split_is_stratified_and_deterministic(crack_folder: Path):
    root, items = scan_labelled(crack_folder)
    rows, _ = make_manifest(root, items, seed=0, progress=False)
    rows2, _ = make_manifest(root, items, seed=0, progress=False)
    assert [r.split for r in rows] == [r.split for r in rows2]
    for split, share in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        for label in (0, 1):
            n = sum(1 for r in rows if r.split == split and r.label == label)
            assert abs(n - share * 30) <= 1.5


def test_check_fails_loudly_on_a_leak(folder_with_duplicates: Path, tmp_path: Path):
    root, items = scan_labelled(folder_with_duplicates)
    rows, _ = make_manifest(root, items, seed=0, progress=False)
    dup = next(r for r in rows if r.path.endswith("dup_0.png"))
    dup.split = "test" if dup.split != "test" else "train"
    with pytest.raises(CracklocError, match="leaks"):
        check_manifest(rows)


def test_manifest_round_trip(crack_folder: Path, tmp_path: Path):
    root, items = scan_labelled(crack_folder)
    rows, _ = make_manifest(root, items, seed=0, progress=False)
    write_manifest(tmp_path / "m.csv", rows, root=root)
    root2, rows2 = read_manifest(tmp_path / "m.csv")
    assert root2 == root and rows2 == rows


def test_missing_class_folder_is_a_clear_error(tmp_path: Path):
    (tmp_path / "Positive").mkdir()
    with pytest.raises(CracklocError, match="Negative"):
        scan_labelled(tmp_path)
