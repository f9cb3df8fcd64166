"""Counts behind issue 30 ("one home per concept"), printed so a before/after comparison is one command.

    python scripts/concept_counts.py            # on the working tree
    git stash; python scripts/concept_counts.py; git stash pop   # or on a checkout of an older commit

What it counts (plain text search over dmtoolkit/, benchmarks/ and tests/; a count is a place to look, not a
verdict):
- homes of each statistic: files outside tests/ whose code matches the concept's fingerprint (an
  implementation, not a call: `np.nanmean(` followed by a ranking, a quantile function, a Spearman by ranks…);
- the largest modules of the package, by lines;
- call sites that open an estimate or a run store (`load_estimate(`, `RunStore(`, `open_source_store(`,
  `h5py.File(`) outside the modules that own those files;
- branches on store capabilities (`.imported`, `has_images`, `explicit_masks`, `recipe.trainer`, `own_data`)
  outside the store, the recipe and the capability home;
- hand-written "already exists" overwrite refusals outside `atomic.py`;
- test modules that import another test module;
- pairs the `duplicates` tool reports for the whole tree (when it is on PATH).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# concept -> regex of an implementation line; homes are the files (tests excluded) where it matches
STATISTICS = {
    "NaN-mean over targets": r"np\.nanmean\(",
    "Spearman by ranks": r"rankdata\(|def spearman|spearmanr\(",
    "Spearman–Brown": r"\(1 \+ \(\w+ - 1\) \*",
    "interval quantile (t / normal ppf)": r"\.ppf\(",
    "Benjamini–Hochberg step-up": r"minimum\.accumulate|\[::-1\]\)\[::-1\]|def benjamini_hochberg|def bh_adjusted",
    "split rows by sampling draw": r"def (split_rows|split_halves|holdout_split|whole_units|first_fitting_rows|"
                                   r"_unit_order|split_draws|draw_split)\b",
}
OPENERS = r"\b(load_estimate|RunStore|open_source_store|open_estimate|open_checked_store)\(|h5py\.File\("
OPENER_OWNERS = {"dmtoolkit/store.py", "dmtoolkit/estimate/files.py", "dmtoolkit/store_checks.py",
                 "dmtoolkit/run/shards.py", "dmtoolkit/store_import.py"}
CAPABILITIES = r"\.imported\b|has_images|explicit_masks|recipe\.trainer\b|own_data"
CAPABILITY_OWNERS = {"dmtoolkit/store.py", "dmtoolkit/recipe.py", "dmtoolkit/capabilities.py"}
OVERWRITE = r"already exists"


def python_files(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py"))


def code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines that are neither blank nor comments."""
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            out.append((number, line))
    return out


def matches(paths: list[Path], pattern: str, exclude: set[str] = frozenset()) -> dict[str, int]:
    found: dict[str, int] = {}
    regex = re.compile(pattern)
    for path in paths:
        rel = str(path.relative_to(ROOT))
        if rel in exclude:
            continue
        count = sum(1 for _, line in code_lines(path)
                    if regex.search(line) and not line.lstrip().startswith(("import ", "from ")))
        if count:
            found[rel] = count
    return found


def main() -> None:
    package, benchmarks, tests = python_files("dmtoolkit"), python_files("benchmarks"), python_files("tests")
    print("homes per statistic (files in dmtoolkit/ and benchmarks/):")
    for concept, pattern in STATISTICS.items():
        homes = matches(package + benchmarks, pattern)
        print(f"  {concept}: {len(homes)}  {' '.join(sorted(homes))}")
    sizes = sorted(((len(p.read_text().splitlines()), str(p.relative_to(ROOT))) for p in package), reverse=True)
    print("largest modules (lines): " + ", ".join(f"{name} {n}" for n, name in sizes[:6]))
    print(f"package lines: {sum(n for n, _ in sizes)} in {len(sizes)} modules")
    openers = matches(package, OPENERS, OPENER_OWNERS)
    print(f"call sites opening estimates or stores outside their owners: {sum(openers.values())} in {len(openers)} files")
    caps = matches(package, CAPABILITIES, CAPABILITY_OWNERS)
    print(f"capability branches outside store/recipe/capability home: {sum(caps.values())} in {len(caps)} files"
          f"  ({', '.join(f'{k} {v}' for k, v in sorted(caps.items()))})")
    overwrite = matches(package + benchmarks, OVERWRITE, {"dmtoolkit/atomic.py"})
    print(f"'already exists' outside atomic.py: {sum(overwrite.values())} in {len(overwrite)} files")
    crossing = [str(p.relative_to(ROOT)) for p in tests
                if re.search(r"^from (tests\.|\.)test_\w+ import|^import tests\.test_", p.read_text(), re.M)]
    print(f"test modules importing another test module: {len(crossing)}  {' '.join(crossing)}")
    if shutil.which("duplicates"):
        out = subprocess.run(["duplicates", "--most", "200", "--seconds", "60"], cwd=ROOT, capture_output=True,
                             text=True).stdout
        rows = [line for line in out.splitlines() if line.startswith("D")]
        print(f"duplicates rows (whole tree): {len(rows)}; {out.splitlines()[0] if out else ''}")


if __name__ == "__main__":
    main()
