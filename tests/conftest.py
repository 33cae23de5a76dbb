"""Shared test configuration: hypothesis profiles.

HYPOTHESIS_PROFILE=ci (what .ci/run uses) runs more examples than the default `dev` profile.
deadline=None because a numba compile or a sympy call dwarfs hypothesis's 200 ms default.
"""

import os

from hypothesis import settings

settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile("ci", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
