"""An HTML template for `dvc plots show` that works offline.

DVC's default page loads Vega from a CDN, so on a machine with no internet the plots are a
blank page. At setup this fetches the three libraries from the npm registry (pinned versions,
checked against their published sha512), and writes a template with them inlined, to the path
`.dvc/config` names (plots.html_template, relative to .dvc/). Run: python -m mlperf_round.vega_template
"""

from __future__ import annotations

import base64
import hashlib
import io
import sys
import tarfile
import urllib.request
from pathlib import Path

# package -> (version, file inside the tarball, sha512 integrity from the registry)
LIBRARIES = {
    "vega": (
        "5.33.1",
        "package/build/vega.min.js",
        "1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw==",
    ),
    "vega-lite": (
        "5.23.0",
        "package/build/vega-lite.min.js",
        "l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA==",
    ),
    "vega-embed": (
        "6.29.0",
        "package/build/vega-embed.min.js",
        "PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q==",
    ),
}
REGISTRY = "https://registry.npmjs.org"
DEFAULT = Path(".dvc/plots_template.html")


def _script(name: str, version: str, member: str, integrity: str) -> str:
    url = f"{REGISTRY}/{name}/-/{name}-{version}.tgz"
    with urllib.request.urlopen(url, timeout=60) as resp:
        data = resp.read()
    if base64.b64encode(hashlib.sha512(data).digest()).decode() != integrity:
        raise SystemExit(f"error: {url}: sha512 does not match the pinned integrity; refusing it")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        js = tar.extractfile(member).read().decode()
    safe = js.replace("</script", "<\\/script")
    return f"<script>{safe}</script>"


def build(path: Path = DEFAULT) -> Path:
    scripts = "".join(_script(name, *spec) for name, spec in LIBRARIES.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>DVC plots</title>{scripts}</head>"
        "<body>{plot_divs}</body></html>\n"
    )  # no {scripts}: DVC would add its CDN tags
    tmp.replace(path)
    return path


if __name__ == "__main__":
    paths = [a for a in sys.argv[1:] if not a.startswith("--")]
    target = Path(paths[0]) if paths else DEFAULT
    if target.exists() and "--force" not in sys.argv:
        print(f"{target}: present")
    else:
        print(f"{build(target)}: Vega {', '.join(f'{n} {v[0]}' for n, v in LIBRARIES.items())} inlined")
