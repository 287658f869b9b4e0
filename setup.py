"""Lists the compiled extensions; everything else is in pyproject.toml.

CALLGATE_DEBUG=1 builds the debug variant of the core instead: Cython's
bounds, wraparound and initialization checks on, `-O0 -g -Wall -Werror`,
generated C and objects under build/debug, the module in build/debug/engine
(never in place: the normal build stays as it is).  `make debug` runs it.
"""

import os
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("CALLGATE_DEBUG") == "1"
DEBUG_DIR = os.path.join("build", "debug")

# Compiler directives are set once here, not per file.
DIRECTIVES = {
    "language_level": "3",
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "cdivision": True,
    "initializedcheck": DEBUG,
    "nonecheck": False,
    "embedsignature": True,
}

# -Werror: the generated C is clean under -Wall (Cython 3.3, gcc 12); CALLGATE_DEBUG_WERROR=0 drops it
DEBUG_FLAGS = ["-O0", "-g", "-Wall"] + (["-Werror"] if os.environ.get("CALLGATE_DEBUG_WERROR") != "0" else [])

if DEBUG and "--inplace" in sys.argv:
    sys.exit("setup.py: CALLGATE_DEBUG=1 builds into build/debug, never in place")

extensions = [
    Extension(
        "engine._core",
        ["engine/_core.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")] + ([("CALLGATE_DEBUG", "1")] if DEBUG else []),
        undef_macros=["NDEBUG"] if DEBUG else [],
        extra_compile_args=DEBUG_FLAGS if DEBUG else ["-O3"],
    ),
]

# the event spool's journal reader for the Kamailio integration (callgate_spool.py reads in Python without it),
# built in place beside the spool module it serves (integrations/kamailio/callgate_journal*.so: `make build`), and
# only there: integrations/ is no package, a wheel has no place for it
if "--inplace" in sys.argv:
    extensions.append(Extension(
        "integrations.kamailio.callgate_journal",
        ["integrations/kamailio/callgate_journal.pyx"],
        libraries=["z"],
        extra_compile_args=["-O3"],
    ))

# `make` builds the core in place first, then installs the project into the virtualenv in editable mode for
# the `callgate` command: that install skips the extension (CALLGATE_NO_EXT=1) rather than compile it twice.
if os.environ.get("CALLGATE_NO_EXT") == "1":
    extensions = []

setup(
    ext_modules=cythonize(extensions, compiler_directives=DIRECTIVES, build_dir=DEBUG_DIR if DEBUG else None)
    if extensions else [],
    options={"build_ext": {"build_lib": DEBUG_DIR, "build_temp": os.path.join(DEBUG_DIR, "temp")}} if DEBUG else {},
)
