"""Shared test configuration: hypothesis profiles, a private cache directory.

HYPOTHESIS_PROFILE=ci (what .ci/run uses) runs more examples than the default `dev` profile.
deadline=None because a numba compile or a sympy call dwarfs hypothesis's 200 ms default.
"""

import atexit
import os
import shutil
import tempfile

from hypothesis import settings

from symgrad.executors.interpreter import TapeInterpreter

# the suite compiles thousands of small programs: keep their cache files out of the user's
# cache directory (one fresh directory per run) unless one was chosen explicitly
if "SYMGRAD_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="symgrad-test-cache-")
    os.environ["SYMGRAD_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

# the tape interpreter is built in the background, small calls running as plain Python until it
# is ready; the tests are about the interpreter, so they wait for it (the fallback has its own)
TapeInterpreter.FALLBACK_WORK = -1

settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile("ci", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
