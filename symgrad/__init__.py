"""symgrad: micrograd's Value, traced to an IR, differentiated on the IR, compiled with Numba.

The public API (see README): `Value`, `compile`, `Compiled`, `jvp`, `hvp`, `hessian`, `to_sympy`,
`check`, `draw_dot`, `fit` (with `symgrad.optim`), the op functions (`tanh`, `exp`, `where`, ...)
and the pipeline's stages as modules.
"""

from . import optim as optim
from ._version import __version__ as __version__
from .checking import (
    CheckFailed,
    CheckResult,
    GradientMismatch,
    ModelMismatch,
    ValueMismatch,
    check,
)
from .compiled import Compiled, compile
from .engine import Value
from .higher import hessian, hvp, jvp
from .ops import ABS, COS, EXP, LOG, MAXIMUM, MINIMUM, OPS, RELU, SIGMOID, SIN, SQRT, TANH, WHERE
from .symbolic import to_sympy
from .training import fit
from .viz import draw_dot, draw_ir

# the op table's entries work on floats, Values and IR handles alike: sg.tanh(x)
tanh, exp, log, relu, sigmoid, sin, cos = TANH, EXP, LOG, RELU, SIGMOID, SIN, COS
sqrt, maximum, minimum, where = SQRT, MAXIMUM, MINIMUM, WHERE
# sg.abs(x) is abs(x); it stays out of __all__, so `from symgrad import *` leaves the builtin abs
# alone (the op gives a float: abs(-3) would be 3.0)
abs = ABS

__all__ = [
    "OPS",
    "CheckFailed",
    "CheckResult",
    "Compiled",
    "GradientMismatch",
    "ModelMismatch",
    "Value",
    "ValueMismatch",
    "check",
    "compile",
    "cos",
    "draw_dot",
    "draw_ir",
    "exp",
    "fit",
    "hessian",
    "hvp",
    "jvp",
    "log",
    "maximum",
    "minimum",
    "relu",
    "sigmoid",
    "sin",
    "sqrt",
    "tanh",
    "to_sympy",
    "where",
]
