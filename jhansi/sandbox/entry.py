"""The in-sandbox bootstrap: runs the script as ``__main__`` with an exact import path.

This file is mounted read-only into every sandbox and run as
``python -I -S /opt/jhansi/entry.py [--path DIR]... [--path0 DIR]
(--interactive | -- SCRIPT [ARG]...)``.
``-I`` ignores ``PYTHON*`` variables and the user site; ``-S`` skips ``site``, so
neither the host's nor the image's site-packages is importable. What is importable
is exactly: the standard library, the script's own directory (or ``--path0``, for
code read from stdin, which imports from the working directory as ``python -``
does), and each ``--path`` (a locked environment; its ``.pth`` files are processed).

It must run on every interpreter a sandbox may have: the standard library only,
and nothing newer than Python 3.8.
"""

import os
import sys
from typing import List, Tuple


def _clean_path() -> None:
    """Drop every site-packages / dist-packages entry an interpreter may still add."""
    sys.path[:] = [
        p for p in sys.path if p and "site-packages" not in p and "dist-packages" not in p
    ]


def _parse(argv: List[str]) -> Tuple[List[str], str, bool, List[str]]:
    paths: List[str] = []
    path0 = ""
    interactive = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--path":
            paths.append(argv[i + 1])
            i += 2
        elif arg == "--path0":
            path0 = argv[i + 1]
            i += 2
        elif arg == "--interactive":
            interactive = True
            i += 1
        elif arg == "--":
            return paths, path0, interactive, argv[i + 1 :]
        else:
            sys.stderr.write("jhansi entry: unknown argument %r\n" % arg)
            sys.exit(2)
    return paths, path0, interactive, []


def _run_script(script: str, args: List[str], path0: str) -> None:
    import types

    with open(script, "rb") as handle:
        source = handle.read()
    code = compile(source, script, "exec", dont_inherit=True)
    main = types.ModuleType("__main__")
    main.__file__ = script
    main.__dict__["__builtins__"] = __builtins__
    sys.modules["__main__"] = main
    sys.argv[:] = [script] + list(args)
    sys.path.insert(0, path0 or os.path.dirname(os.path.abspath(script)))
    try:
        exec(code, main.__dict__)
    except SystemExit:
        raise
    except BaseException:
        # Print the traceback without this file's frame: the user's code starts it.
        import traceback

        kind, value, tb = sys.exc_info()
        traceback.print_exception(kind, value, tb.tb_next if tb else None)
        sys.exit(130 if kind is KeyboardInterrupt else 1)


def _interact() -> None:
    import code

    if not sys.stdin.isatty():
        # Fed from a pipe (an agent, a test): no prompts in the output.
        sys.ps1 = sys.ps2 = ""
    code.interact(banner="", exitmsg="", local={"__name__": "__main__"})


def main() -> None:
    """Set up the import path and hand over to the script."""
    paths, path0, interactive, rest = _parse(sys.argv[1:])
    _clean_path()
    if paths:
        import site

        for path in paths:
            site.addsitedir(path)
    if interactive:
        sys.path.insert(0, path0 or os.getcwd())
        _interact()
        return
    if not rest:
        sys.stderr.write("jhansi entry: no script given\n")
        sys.exit(2)
    _run_script(rest[0], rest[1:], path0)


if __name__ == "__main__":
    main()
