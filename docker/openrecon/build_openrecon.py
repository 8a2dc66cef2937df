#!/usr/bin/env python3
"""Build the OpenRecon image of mrprior: ``mrprior-server`` plus the OpenRecon label.

Steps (what Siemens' OpenRecon packaging expects):

1. validate ``OpenReconLabel.json`` (this folder; a link to ``mrprior/configs/openrecon_label.json``,
   the label the server maps the UI parameters with) against ``OpenReconSchema_1.1.0.json``;
2. ``docker build -f docker/Dockerfile.server`` with the label
   ``com.siemens-healthineers.magneticresonance.openrecon.metadata:1.1.0=<base64 of the JSON>``
   and the tag ``openrecon_<vendor>_<name>:v<version>`` (from the label's ``general`` part);
3. ``docker save`` to ``OpenRecon_<vendor>_<name>_V<version>.tar``;
4. with ``--docs FILE.pdf``: zip the tar and the PDF as ``OpenRecon_<vendor>_<name>_V<version>.zip``
   (the package the scanner imports; the documentation must be a PDF).

``--dry-run`` validates and prints the commands without running them (``--json``: as JSON).
Needs ``jsonschema`` (``pip install jsonschema``, in mrprior's dev extra) and, to build, Docker.
"""

from __future__ import annotations

import argparse
import base64
import json
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
LABEL_KEY = "com.siemens-healthineers.magneticresonance.openrecon.metadata:1.1.0"


def validate(label_path: Path, schema_path: Path) -> dict:
    """The label as a dict; exits with the schema errors when it is not valid."""
    import jsonschema

    data = json.loads(label_path.read_text(encoding="utf-8"))
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(data), key=str)
    if errors:
        for err in errors:
            where = "/".join(str(p) for p in err.absolute_path)
            print(f"{label_path}: {where}: {err.message}", file=sys.stderr)
        raise SystemExit(f"{label_path} is not a valid OpenRecon 1.1.0 label")
    return data


def plan(data: dict, dockerfile: Path, context: Path) -> dict:
    """Tag, file names and docker commands for ``data``."""
    general = data["general"]
    vendor, name, version = general["vendor"], general["name"]["en"], general["version"]
    base = f"OpenRecon_{vendor}_{name}_V{version}"
    tag = f"openrecon_{vendor}_{name}:v{version}".lower()
    encoded = base64.b64encode(json.dumps(data, indent=2).encode("utf-8")).decode("ascii")
    build = [
        "docker",
        "build",
        "--platform",
        "linux/amd64",
        "-f",
        str(dockerfile),
        "--label",
        f"{LABEL_KEY}={encoded}",
        "-t",
        tag,
        str(context),
    ]
    return {
        "tag": tag,
        "tar": f"{base}.tar",
        "zip": f"{base}.zip",
        "pdf": f"{base}.pdf",
        "build": build,
        "save": ["docker", "save", "-o", f"{base}.tar", tag],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", type=Path, default=HERE / "OpenReconLabel.json")
    parser.add_argument("--schema", type=Path, default=HERE / "OpenReconSchema_1.1.0.json")
    parser.add_argument("--dockerfile", type=Path, default=ROOT / "docker" / "Dockerfile.server")
    parser.add_argument("--docs", type=Path, help="PDF documentation to package with the image")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the commands")
    parser.add_argument("--json", action="store_true", help="with --dry-run: print JSON")
    args = parser.parse_args(argv)

    data = validate(args.label, args.schema)
    steps = plan(data, args.dockerfile, ROOT)
    if args.dry_run:
        if args.json:
            print(json.dumps(steps, indent=2))
        else:
            print(shlex.join(steps["build"]))
            print(shlex.join(steps["save"]))
            print(f"zip {steps['zip']}: {steps['tar']} + {steps['pdf']} (with --docs)")
        return 0
    if shutil.which("docker") is None:
        raise SystemExit("docker not found: install Docker, or use --dry-run")
    if args.docs is not None and args.docs.suffix.lower() != ".pdf":
        raise SystemExit(f"--docs must be a PDF file, got {args.docs}")
    subprocess.run(steps["build"], check=True)
    subprocess.run(steps["save"], check=True)
    print(f"saved {steps['tar']}")
    if args.docs is not None:
        with zipfile.ZipFile(steps["zip"], "w", zipfile.ZIP_DEFLATED) as zf:
            zf.write(steps["tar"], steps["tar"])
            zf.write(args.docs, steps["pdf"])
        print(f"packaged {steps['zip']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
