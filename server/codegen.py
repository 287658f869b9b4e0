"""Generate the Python gRPC code (with .pyi stubs) from proto/callgate/v1.

    python -m server.codegen            # writes callgate/v1/*_pb2*.py(i) in the repository
    python -m server.codegen --out DIR  # elsewhere (the staleness test compares the two)

The proto path mirrors the package: proto/callgate/v1/x.proto -> callgate.v1.x_pb2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"


def proto_files() -> list[Path]:
    return sorted((PROTO_DIR / "callgate" / "v1").glob("*.proto"))


def generate(out: Path) -> list[Path]:
    """Run protoc on every .proto; return the files written."""
    import grpc_tools
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    include = Path(grpc_tools.__file__).resolve().parent / "_proto"
    args = ["grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", *[str(p.relative_to(PROTO_DIR)) for p in proto_files()]]
    # protoc resolves the .proto paths against -I, so run it from PROTO_DIR's parent view
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}")
    return sorted(p for p in (out / "callgate" / "v1").iterdir() if p.name.endswith((".py", ".pyi"))
                  and p.name != "__init__.py")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.codegen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: the repository)")
    args = parser.parse_args(argv)
    written = generate(args.out)
    print(f"generated {len(written)} files under {args.out / 'callgate' / 'v1'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
