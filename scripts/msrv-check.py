#!/usr/bin/env python3
"""Fails when a locked dependency needs a newer Rust than the workspace's `rust-version`.

Reads `cargo metadata --format-version 1 --locked --all-features --filter-platform HOST`
(every package the lock file resolves for this platform, with every feature on) and compares
each package's `rust_version` with the workspace's (the `rampart` package's). Prints the
offenders and exits 1, or prints the highest requirement and exits 0.

Usage: scripts/msrv-check.py          (from anywhere inside the repository)
"""
import json
import subprocess
import sys


def version(v):
    parts = [int(p) for p in v.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def host():
    out = subprocess.run(["rustc", "-vV"], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("host: "):
            return line.split(" ", 1)[1]
    sys.exit("msrv-check: rustc -vV printed no host")


def main():
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--locked", "--all-features",
             "--filter-platform", host()],
            check=True, capture_output=True, text=True,
        ).stdout
    )
    members = set(meta["workspace_members"])
    ours = [p for p in meta["packages"] if p["id"] in members and p["name"] == "rampart"]
    if not ours or not ours[0].get("rust_version"):
        sys.exit("msrv-check: the rampart package declares no rust-version")
    msrv = ours[0]["rust_version"]
    resolved = {n["id"] for n in meta["resolve"]["nodes"]}
    needs = sorted(
        ((version(p["rust_version"]), p["name"], p["version"], p["rust_version"])
         for p in meta["packages"]
         if p["id"] in resolved and p["id"] not in members and p.get("rust_version")),
        reverse=True,
    )
    over = [n for n in needs if n[0] > version(msrv)]
    for _, name, ver, rv in over:
        print(f"msrv-check: {name} {ver} needs Rust {rv}, above rust-version = {msrv}")
    if over:
        print(f"msrv-check: raise rust-version to {over[0][3]} or pin older versions in Cargo.lock")
        return 1
    top = needs[0] if needs else None
    print(f"msrv-check: rust-version {msrv} covers every locked package"
          + (f" (highest: {top[1]} {top[2]} needs {top[3]})" if top else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
