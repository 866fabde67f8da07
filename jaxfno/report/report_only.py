"""Study reports whose runs did not come back (``*_report_only`` folders): a device printed the
report, the run folders were lost. FINDINGS.md quotes them apart and counts them nowhere else.

A folder holds ``summary.md`` (``benchmarks/gpu_check.sh``'s summary: the study's table under
the heading ``## factorial (the runs finished so far)``) and ``report_provenance.md`` (the
report's provenance, naming the one device the runs trained on)."""

from __future__ import annotations

import dataclasses
import pathlib

HEADING = "## factorial"  # gpu_check.sh's section of the factorial's report; other tables precede it
COLUMNS = ("arm", "condition", "outcomes", "P(collapse) [95 % Wilson]", "Fisher p vs stable", "best val")


def table_rows(markdown: str, source: str, heading: str | None = None) -> list[dict[str, str]]:
    """The rows of the first markdown table after the line starting with ``heading`` (or in the
    whole text), keyed by its header; a missing heading, table or separator, a row of another
    width (a '|' inside a cell) or an empty table is an error naming ``source``."""
    lines = [line.strip() for line in markdown.splitlines()]
    start = 0
    if heading is not None:
        start = next((i for i, line in enumerate(lines) if line.startswith(heading)), None)
        if start is None:
            raise ValueError(f"{source}: no heading {heading!r}")
    first = next((i for i in range(start, len(lines)) if lines[i].startswith("|")), None)
    if first is None:
        raise ValueError(f"{source}: no table" + (f" under {heading!r}" if heading else ""))
    table = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip("|").split("|")])
    header = table[0]
    if len(table) < 2 or not all(set(cell) <= set("-:") and cell for cell in table[1]):
        raise ValueError(f"{source}: the table under {header} has no |---| separator")
    for row in table[2:]:
        if len(row) != len(header):
            raise ValueError(f"{source}: a row has {len(row)} cells, the header {len(header)}: {row}")
    if len(table) == 2:
        raise ValueError(f"{source}: the table has no rows")
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{source}: the table lacks the column(s) {missing}")
    return [dict(zip(header, row)) for row in table[2:]]


def reported_device(folder: pathlib.Path) -> str:
    """The device named by the report's provenance ("devices the runs trained on: X × 1")."""
    prefix = "- devices the runs trained on: "
    source = folder / "report_provenance.md"
    for line in source.read_text().splitlines():
        if line.startswith(prefix):
            devices = line.removeprefix(prefix).split(", ")
            if len(devices) != 1:
                raise ValueError(f"{source}: the runs trained on {len(devices)} devices ({devices}); "
                                 "a report-only folder holds one device's runs")
            return devices[0].split(" × ")[0].strip()
    raise ValueError(f"{source}: no line {prefix.strip()!r}")


@dataclasses.dataclass(frozen=True)
class Report:
    """One report-only folder, read once: its device, every row, and the rows it alone holds."""
    folder: pathlib.Path
    device: str
    rows: list[dict[str, str]]
    unretrieved: list[dict[str, str]]


def read_reports(folders: list[pathlib.Path], committed: set[tuple[str, str]]) -> list[Report]:
    """Each folder's report; its unretrieved rows are the cells that no committed folder of the
    same device holds (``committed``: (device, "arm@condition"))."""
    reports = []
    for folder in folders:
        device, source = reported_device(folder), folder / "summary.md"
        rows = table_rows(source.read_text(), str(source), HEADING)
        reports.append(Report(folder, device, rows, [r for r in rows
                                                     if (device, f"{r['arm']}@{r['condition']}") not in committed]))
    return reports


def _claims(report: Report) -> str:
    # `stable`'s row of the same report: the remedies' best validation loss beside its own
    stable = {r["condition"]: r for r in report.rows if r["arm"] == "stable"}
    return "; ".join(f"`{r['arm']}` in `{r['condition']}` collapsed in {r['P(collapse) [95 % Wilson]']} "
                     f"({r['outcomes']}; one-sided Fisher p {r['Fisher p vs stable']} against `stable` on the "
                     f"same seeds; best validation loss {r['best val']}"
                     + (f" against `stable`'s {stable[r['condition']]['best val']}" if r["condition"] in stable else "")
                     + ")" for r in report.unretrieved)


def report_only_sentence(reports: list[Report]) -> str | None:
    parts = [f"on {r.device} (`{r.folder.name}`) {_claims(r)}" for r in reports if r.unretrieved]
    if not parts:
        return None
    return ("Printed by the study on the device, its runs not retrieved (so no other sentence or table counts "
            "them, and how low their training loss went is unknown): " + "; ".join(parts) + ".")


def report_only_section(reports: list[Report]) -> list[str]:
    lines = []
    for r in reports:
        if not r.unretrieved:
            continue
        keys, folder = list(r.unretrieved[0]), r.folder
        lines += [f"### Reported on {r.device}, runs not retrieved (`{folder.name}`)", "",
                  f"The study's report as the device printed it ({folder}/summary.md); the run folders did not "
                  f"come back ({folder}/README.md says why and how to train them again), so these rows cannot be "
                  "derived again here and no other table, test or sentence counts them.", "",
                  "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys),
                  *("| " + " | ".join(row[k] for k in keys) + " |" for row in r.unretrieved), ""]
    return lines
