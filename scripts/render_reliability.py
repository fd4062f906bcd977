"""Renders RELIABILITY.md from the counts the reliability tests record (XT_RELIABILITY_OUT)."""
import json
import sys
from pathlib import Path

counts = json.loads(Path(sys.argv[1]).read_text())
outcome = sys.argv[2] if len(sys.argv) > 2 else "unknown"
lines = ["# Reliability", "",
         "Each scenario below is an automated test in `tests/`; the counts are what one run of",
         "`scripts/reliability.sh` injected, tried or duplicated. Result of that run: "
         f"**{outcome}** (a failing scenario fails the suite).", "",
         "| scenario | counts |", "|---|---|"]
for scenario in sorted(counts):
    figures = ", ".join(f"{name.replace('_', ' ')}: {value:,}" if isinstance(value, int) else f"{name.replace('_', ' ')}: {value}"
                        for name, value in sorted(counts[scenario].items()))
    lines.append(f"| {scenario} | {figures} |")
Path("RELIABILITY.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
