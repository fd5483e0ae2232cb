"""What MLCommons' submission checker may say of a smoke round's tree, and nothing else.

A smoke round runs seconds, not 600 s, on a few samples, with tiny models that cannot reach MLPerf's
published accuracy. Those findings, each matched by its own message (in v5.0.1's words and in
master's), are expected; so are the roll-up lines the checker prints after them, each only for a
folder that has such a finding. Every other ERROR line is a defect of the tree.
"""

from __future__ import annotations

import re

_LINE = re.compile(r"\bERROR\] (.*)$")
_RUN = r"^(\S+?)(?:/mlperf_log_detail\.txt)? "  # a run's folder (v5.0.1 names its detail log; master, TEST0x folders)
SMOKE = (  # (message, the path it is about)
    re.compile(_RUN + r"performance_sample_count, found \d+, needs to be >= \d+$"),
    re.compile(_RUN + r"Test duration less than 600s in user config\. expected=600000, found=\d+$"),
    re.compile(_RUN + r"Required minimum samples per query not met by user config, Expected=\d+, Found=\d+$"),
    re.compile(_RUN + r"accurcy run does not cover all dataset, accuracy samples: \d+, dataset size: \d+$"),  # sic
)
ACCURACY = re.compile(r"^(\S+)/accuracy, accuracy not valid$")  # after its WARNING "accuracy not met"
ACCURACY_WARNING = re.compile(r"\bWARNING\] (\S+)/accuracy accuracy not met: expected=[\d.]+, found=[\d.]+$")
ROLLUPS = (
    re.compile(r"^(\S+/performance/run_1) has issues$"),
    re.compile(r"^Some performance checks Checks failed for: (\S+?)(?:/mlperf_log_detail\.txt)?$"),  # master's
    re.compile(r"^Some accuracy checks Checks failed for: (\S+?)(?:/mlperf_log_detail\.txt)?$"),
    re.compile(r"^Some compliance check Checks failed for: (\S+?)/?$"),
    re.compile(r"^compliance dir (\S+) has issues$"),
    re.compile(r"^(\S+) does not have all required scenarios, missing \{.*\}$"),
    re.compile(r"^NoResults (\S+?)(?:/mlperf_log_detail\.txt)?$"),
)


def unexplained(log: str) -> list[str]:
    """The ERROR lines of a checker log that a smoke round does not explain."""
    lines = log.splitlines()
    below_target = {m.group(1) for line in lines if (m := ACCURACY_WARNING.search(line))}
    errors = [m.group(1) for line in lines if (m := _LINE.search(line))]
    flagged: set[str] = set()
    left = []
    for message in errors:
        smoke = next((m for pattern in SMOKE if (m := pattern.match(message))), None)
        accuracy = ACCURACY.match(message)
        if smoke:
            flagged.add(smoke.group(1))
        elif accuracy and accuracy.group(1) in below_target:
            flagged.add(accuracy.group(1))
        elif message != "SUMMARY: submission has errors":
            left.append(message)
    out = []
    for message in left:
        rollup = next((m for pattern in ROLLUPS if (m := pattern.match(message))), None)
        if not (rollup and any(f == rollup.group(1) or f.startswith(rollup.group(1) + "/") for f in flagged)):
            out.append(message)
    return out
