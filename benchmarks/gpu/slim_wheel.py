"""Rewrite a wheel without some of its folders, its ELF files stripped of debug symbols, and a fresh RECORD:
what makes the ray wheel fit the one transfer to the GPU machine (its Java jars alone are 31 MiB).

    python benchmarks/gpu/slim_wheel.py WHEEL OUT_DIR --drop ray/jars --drop ray/rllib
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path


def record_line(path: Path, name: str) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{path.stat().st_size}"


def is_elf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def slim(wheel: Path, out_dir: Path, drop: list[str]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / wheel.name
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with zipfile.ZipFile(wheel) as z:
            z.extractall(root)
            modes = {i.filename: i.external_attr for i in z.infolist()}
        for folder in drop:
            shutil.rmtree(root / folder)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            if is_elf(p):
                subprocess.run(["strip", "--strip-unneeded", str(p)], check=True)
        (record,) = root.glob("*.dist-info/RECORD")
        names = [p.relative_to(root).as_posix() for p in files if p != record]
        lines = [record_line(root / n, n) for n in names]
        record.write_text("\n".join([*lines, f"{record.relative_to(root).as_posix()},,"]) + "\n")
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
            for name in [*names, record.relative_to(root).as_posix()]:
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                info.external_attr = modes.get(name, 0o644 << 16)
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, (root / name).read_bytes(), compresslevel=9)
    return target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("wheel", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--drop", action="append", default=[], help="a folder inside the wheel to leave out")
    args = ap.parse_args()
    print(slim(args.wheel, args.out_dir, args.drop))


if __name__ == "__main__":
    main()
