"""Study reports whose runs did not come back (``*_report_only`` folders): a device printed the
report, the run folders were lost. FINDINGS.md quotes them apart and counts them nowhere else."""

from __future__ import annotations

import pathlib


def table_rows(markdown: str) -> list[dict[str, str]]:
    """The rows of the first markdown table in ``markdown``, keyed by its header."""
    lines = [line.strip() for line in markdown.splitlines()]
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    if start is None:
        return []
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip("|").split("|")])
    header, body = table[0], [row for row in table[2:] if len(row) == len(table[0])]
    return [dict(zip(header, row)) for row in body]


def reported_device(folder: pathlib.Path) -> str:
    """The device named by the report's provenance ("devices the runs trained on: X × 1")."""
    prefix = "- devices the runs trained on: "
    for line in (folder / "report_provenance.md").read_text().splitlines():
        if line.startswith(prefix):
            return line.removeprefix(prefix).split(" × ")[0].strip()
    raise ValueError(f"{folder / 'report_provenance.md'}: no line {prefix.strip()!r}")


def unretrieved_rows(folder: pathlib.Path, committed: set[tuple[str, str]]) -> list[dict[str, str]]:
    """The report's rows for cells that no committed folder of the same device holds
    (``committed``: (device, "arm@condition"))."""
    device = reported_device(folder)
    return [row for row in table_rows((folder / "summary.md").read_text())
            if (device, f"{row['arm']}@{row['condition']}") not in committed]


def _claims(folder: pathlib.Path, rows: list[dict[str, str]]) -> str:
    # `stable`'s row of the same report: the remedies' best validation loss beside its own
    stable = {r["condition"]: r for r in table_rows((folder / "summary.md").read_text()) if r["arm"] == "stable"}
    return "; ".join(f"`{r['arm']}` in `{r['condition']}` collapsed in {r['P(collapse) [95 % Wilson]']} "
                     f"({r['outcomes']}; one-sided Fisher p {r['Fisher p vs stable']} against `stable` on the "
                     f"same seeds; best validation loss {r['best val']}"
                     + (f" against `stable`'s {stable[r['condition']]['best val']}" if r["condition"] in stable else "")
                     + ")" for r in rows)


def report_only_sentence(folders: list[pathlib.Path], committed: set[tuple[str, str]]) -> str | None:
    parts = [f"on {reported_device(f)} (`{f.name}`) {_claims(f, rows)}"
             for f in folders if (rows := unretrieved_rows(f, committed))]
    if not parts:
        return None
    return ("Printed by the study on the device, its runs not retrieved (so no other sentence or table counts "
            "them, and how low their training loss went is unknown): " + "; ".join(parts) + ".")


def report_only_section(folders: list[pathlib.Path], committed: set[tuple[str, str]]) -> list[str]:
    lines = []
    for folder in folders:
        rows = unretrieved_rows(folder, committed)
        if not rows:
            continue
        keys = list(rows[0])
        lines += [f"### Reported on {reported_device(folder)}, runs not retrieved (`{folder.name}`)", "",
                  f"The study's report as the device printed it ({folder}/summary.md); the run folders did not "
                  f"come back ({folder}/README.md says why and how to fetch them), so these rows cannot be "
                  "derived again here and no other table, test or sentence counts them.", "",
                  "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys),
                  *("| " + " | ".join(row[k] for k in keys) + " |" for row in rows), ""]
    return lines
