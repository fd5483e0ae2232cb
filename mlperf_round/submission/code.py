"""The code that produced the results, for the submission tree's code/ (v6: src/) folder.

MLPerf requires the code of every result. The project's files are archived as they ran: what git
tracks or would track (`git ls-files --cached --others --exclude-standard`: uncommitted edits and
new files included, ignored outputs such as artifacts/ and the virtual environment left out), which
also works in a workspace that has no commit yet (the Prefect flow's, the tests'). The README names
the commit (HEAD, `-dirty` with uncommitted edits; a workspace's is its source's, passed on by the
orchestrator) and gives the commands that rerun it.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

SOURCE_DIR = "mlperf-round"
# Kept in one archive beside the files: names MLCommons' checker refuses (.dvc/config, .gitignore), and the pipeline
# files DVC would take for a pipeline of the round's own repository if they lay in its outputs (dvc.yaml, dvc.lock)
HIDDEN_TAR = "restore.tar"
DVC_FILES = ("dvc.yaml", "dvc.lock")


@dataclass(frozen=True)
class Snapshot:
    commit: str
    files: int
    tar: bytes
    makefile: bool  # the project's own setup target is there (a workspace copy holds the code and params only)


def snapshot(project: Path) -> Snapshot:
    """The project's files as they are now, once per package run."""
    from ..tracking import git_commit

    proc = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=project,
        capture_output=True,
        timeout=120,
    )
    if proc.returncode != 0:
        why = proc.stderr.decode(errors="replace").strip()[:160]
        raise InputError(
            f"{Path(project).resolve()}: not a git repository ({why}); the submission's code/ archives the "
            "project's files as git sees them"
        )
    names = sorted(n for n in proc.stdout.decode().split("\0") if n and (Path(project) / n).is_file())
    hidden = [n for n in names if _refused(n)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in (n for n in names if not _refused(n)):
            tar.add(Path(project) / name, arcname=name, recursive=False)
        if hidden:
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as dot:
                for name in hidden:
                    dot.add(Path(project) / name, arcname=name, recursive=False)
            info = tarfile.TarInfo(HIDDEN_TAR)
            info.size = len(inner.getvalue())
            tar.addfile(info, io.BytesIO(inner.getvalue()))
    return Snapshot(git_commit(), len(names), buf.getvalue(), "Makefile" in names)


def _refused(name: str) -> bool:
    parts = name.split("/")
    return parts[-1] in DVC_FILES or any(part.startswith(".") or " " in part or part == "__pycache__" for part in parts)


def write(dest: Path, bench: str, snap: Snapshot, version: str) -> None:
    """`dest` (code/<benchmark>): the source under mlperf-round/, and a README on how it ran."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(snap.tar)) as tar:
        tar.extractall(dest / SOURCE_DIR, filter="data")
    (dest / "README.md").write_text(
        f"# {bench}\n\n"
        f"The code that produced these results: the mlperf-round project at git commit `{snap.commit}` (`-dirty`: with "
        f"uncommitted edits), its {snap.files} files as they ran, in `{SOURCE_DIR}/`.\n\n"
        "To reproduce (MLPerf Inference " + version + "):\n\n"
        "```\n"
        f"cd {SOURCE_DIR}\n"
        f"tar xf {HIDDEN_TAR} && rm {HIDDEN_TAR}   # dvc.yaml, dvc.lock, .dvc/config, .gitignore, kept apart\n"
        "git init -q\n"
        + (
            "make setup          # Python 3.11: a virtual environment with the pinned dependencies\n"
            if snap.makefile
            else "pip install -e .    # Python 3.11 (torch first, alone, as the project's README says)\n"
        )
        + "dvc repro           # the round as params.yaml describes it (point it at the real checkpoints first)\n"
        "```\n\n"
        "`params.yaml`, and `dvc.lock` in the archive, are the round's: its recipes, builds and LoadGen settings, "
        "and the "
        "hash of every stage's inputs and outputs.\n"
    )
