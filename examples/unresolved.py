"""An import no known package provides: jhansi refuses to guess and runs nothing.

Models invent package names like this one, and attackers register them
("slopsquatting"). `jhansi run` stops with the exact line to declare the real one.
"""

import quantumflux_helpers

print(quantumflux_helpers.solve())
