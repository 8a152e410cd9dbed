"""The interpreter a script will run on, as dependency resolution needs to know it.

Dependencies are resolved and installed for the sandbox's interpreter (the
image's ``python3``, or the host interpreter bwrap runs), never for the one
running jhansi: the two may differ in version, C library and standard library.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: The newest glibc manylinux tag uv knows; a newer libc is served by it.
_UV_MANYLINUX = tuple(range(17, 41))
_UV_MACHINES = ("x86_64", "aarch64")


@dataclass(frozen=True, slots=True)
class Target:
    """What a sandbox's interpreter is: version, implementation, platform."""

    python_version: str
    """Full version, e.g. ``3.11.7``."""
    implementation: str
    """``cpython``, ``pypy`` …"""
    machine: str
    """``x86_64``, ``aarch64`` …"""
    libc: str
    """``glibc``, ``musl``, or ``""`` when unknown."""
    libc_version: str
    """e.g. ``2.36``."""
    stdlib: frozenset[str] = field(default_factory=frozenset)
    """Top-level standard-library module names (``sys.stdlib_module_names``, or a
    bundled list for interpreters older than 3.10)."""

    @property
    def python_minor(self) -> str:
        """``3.11`` for ``3.11.7``."""
        return ".".join(self.python_version.split(".")[:2])

    @property
    def uv_platform(self) -> str:
        """uv's ``--python-platform`` for this target (the manylinux level of its glibc)."""
        if self.machine not in _UV_MACHINES:
            return f"{self.machine}-unknown-linux-gnu"
        if self.libc == "musl":
            return f"{self.machine}-unknown-linux-musl"
        try:
            major, minor = (int(p) for p in self.libc_version.split(".")[:2])
        except ValueError:
            return f"{self.machine}-manylinux_2_17"
        if major != 2 or minor < _UV_MANYLINUX[0]:
            return f"{self.machine}-manylinux_2_17"
        return f"{self.machine}-manylinux_2_{min(minor, _UV_MANYLINUX[-1])}"

    @property
    def tags(self) -> str:
        """A stable description of what wheels fit this target (part of cache keys)."""
        return f"{self.implementation}-{self.python_minor}-{self.uv_platform}"

    def describe(self) -> str:
        """One line for people: ``CPython 3.11.7 on x86_64 glibc 2.36``."""
        libc = f" {self.libc} {self.libc_version}".rstrip() if self.libc else ""
        name = {"cpython": "CPython", "pypy": "PyPy"}.get(self.implementation, self.implementation)
        return f"{name} {self.python_version} on {self.machine}{libc}"


#: Run in the target interpreter (``python -I -S -c``), standard library only, Python 3.8+:
#: prints what :class:`Target` needs as one JSON line.
PROBE_CODE = """\
import json, platform, sys
libc, libc_version = platform.libc_ver()
print(json.dumps({
    "python_version": platform.python_version(),
    "implementation": sys.implementation.name,
    "machine": platform.machine(),
    "libc": libc,
    "libc_version": libc_version,
    "stdlib": sorted(getattr(sys, "stdlib_module_names", ())),
}))
"""


def target_from_probe(data: dict[str, object], fallback_stdlib: frozenset[str]) -> Target:
    """A :class:`Target` from :data:`PROBE_CODE`'s answer."""
    stdlib = data.get("stdlib") or []
    names = frozenset(str(n) for n in stdlib) if isinstance(stdlib, list) else frozenset()
    return Target(
        python_version=str(data["python_version"]),
        implementation=str(data.get("implementation", "cpython")),
        machine=str(data.get("machine", "")),
        libc=str(data.get("libc") or ""),
        libc_version=str(data.get("libc_version") or ""),
        stdlib=names or fallback_stdlib,
    )
