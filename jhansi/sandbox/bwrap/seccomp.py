"""The seccomp filter bwrap installs in the sandbox (classic BPF, assembled here).

It denies the kernel keyring (the user's session keyring is inherited) and a few
syscalls container runtimes deny too, setuid/setgid file modes (when jhansi runs
as root the sandbox user is host uid 0 to the kernel), and every syscall of a
foreign ABI.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JGE_K = 0x35
_BPF_JSET_K = 0x45
_BPF_RET_K = 0x06
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_EPERM = 1
_ENOSYS = 38
_X32_SYSCALL_BIT = 0x40000000
_SETID_BITS = 0o6000

#: Syscalls a script never needs that let it reach outside (the session keyring
#: it inherits from the user: kerberos tickets and other secrets), or that are the
#: kernel attack surface container runtimes close (Docker's default profile).
DENIED_SYSCALLS = (
    "add_key",
    "keyctl",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
)
#: Syscalls that may set a file's mode, denied when it has the setuid or setgid
#: bit: when jhansi runs as root the sandbox user *is* host uid 0 to the kernel,
#: so a setuid file it leaves in a writable mount would be setuid root on the host.
#: ``openat2`` passes its mode in a struct a filter cannot read: it is refused as
#: unknown (``ENOSYS``, on which callers fall back to ``openat``).
MODE_CHECKED_SYSCALLS = (
    "chmod",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "open",
    "creat",
    "openat",
    "mknod",
    "mknodat",
    "mkdir",
    "mkdirat",
)


@dataclass(frozen=True, slots=True)
class _Abi:
    arch: int
    """``AUDIT_ARCH_*``."""
    numbers: dict[str, int]
    mode_arg: dict[str, int]
    """Which argument holds the mode, for :data:`MODE_CHECKED_SYSCALLS` this ABI has."""


_GENERIC_DENIED = {"io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427}
_ABIS: dict[str, _Abi] = {
    "x86_64": _Abi(
        0xC000003E,
        {
            "add_key": 248,
            "keyctl": 250,
            "request_key": 249,
            "bpf": 321,
            "perf_event_open": 298,
            "userfaultfd": 323,
            **_GENERIC_DENIED,
            "openat2": 437,
            "chmod": 90,
            "fchmod": 91,
            "fchmodat": 268,
            "fchmodat2": 452,
            "open": 2,
            "creat": 85,
            "openat": 257,
            "mknod": 133,
            "mknodat": 259,
            "mkdir": 83,
            "mkdirat": 258,
        },
        {
            "chmod": 1,
            "fchmod": 1,
            "fchmodat": 2,
            "fchmodat2": 2,
            "open": 2,
            "creat": 1,
            "openat": 3,
            "mknod": 1,
            "mknodat": 2,
            "mkdir": 1,
            "mkdirat": 2,
        },
    ),
    "aarch64": _Abi(
        0xC00000B7,
        {
            "add_key": 217,
            "keyctl": 219,
            "request_key": 218,
            "bpf": 280,
            "perf_event_open": 241,
            "userfaultfd": 282,
            **_GENERIC_DENIED,
            "openat2": 437,
            "fchmod": 52,
            "fchmodat": 53,
            "fchmodat2": 452,
            "openat": 56,
            "mknodat": 33,
            "mkdirat": 34,
        },
        {"fchmod": 1, "fchmodat": 2, "fchmodat2": 2, "openat": 3, "mknodat": 2, "mkdirat": 2},
    ),
}

_Insn = tuple[int, int, str | None, str | None]


def _assemble(items: list[_Insn | str]) -> bytes:
    """``struct sock_filter[]`` from instructions whose jumps name labels (``None``: next)."""
    labels: dict[str, int] = {}
    insns: list[_Insn] = []
    for item in items:
        if isinstance(item, str):
            labels[item] = len(insns)
        else:
            insns.append(item)
    out = bytearray()
    for index, (code, k, jt, jf) in enumerate(insns):
        offsets = [labels[label] - index - 1 if label else 0 for label in (jt, jf)]
        if not all(0 <= offset <= 255 for offset in offsets):  # pragma: no cover (static)
            raise ValueError(f"seccomp jump out of range at {index}")
        out += struct.pack("=HBBI", code, offsets[0], offsets[1], k)
    return bytes(out)


def seccomp_filter(machine: str) -> bytes | None:
    """A classic-BPF seccomp program (``struct sock_filter[]``) for bwrap's ``--seccomp``.

    It denies :data:`DENIED_SYSCALLS` (``EPERM``), a setuid/setgid mode in
    :data:`MODE_CHECKED_SYSCALLS` (``EPERM``), ``openat2`` (``ENOSYS``), and every
    syscall of another ABI (x32, 32-bit x86), through which the same calls would
    have other numbers. ``None`` for an architecture jhansi has no table for.
    """
    abi = _ABIS.get(machine)
    if abi is None:
        return None
    program: list[_Insn | str] = [
        (_BPF_LD_W_ABS, 4, None, None),  # seccomp_data.arch
        (_BPF_JEQ_K, abi.arch, "native", None),
        (_BPF_RET_K, _SECCOMP_RET_ERRNO | _EPERM, None, None),
        "native",
        (_BPF_LD_W_ABS, 0, None, None),  # seccomp_data.nr
    ]
    if machine == "x86_64":
        program.append((_BPF_JGE_K, _X32_SYSCALL_BIT, "deny", None))
    program += [(_BPF_JEQ_K, abi.numbers[name], "deny", None) for name in DENIED_SYSCALLS]
    program.append((_BPF_JEQ_K, abi.numbers["openat2"], "enosys", None))
    for name, arg in abi.mode_arg.items():
        program.append((_BPF_JEQ_K, abi.numbers[name], f"mode{arg}", None))
    program.append((_BPF_RET_K, _SECCOMP_RET_ALLOW, None, None))
    for arg in sorted(set(abi.mode_arg.values())):
        # The low 32 bits of seccomp_data.args[arg] (little-endian).
        program += [
            f"mode{arg}",
            (_BPF_LD_W_ABS, 16 + 8 * arg, None, None),
            (_BPF_JSET_K, _SETID_BITS, "deny", None),
            (_BPF_RET_K, _SECCOMP_RET_ALLOW, None, None),
        ]
    program += [
        "enosys",
        (_BPF_RET_K, _SECCOMP_RET_ERRNO | _ENOSYS, None, None),
        "deny",
        (_BPF_RET_K, _SECCOMP_RET_ERRNO | _EPERM, None, None),
    ]
    return _assemble(program)
