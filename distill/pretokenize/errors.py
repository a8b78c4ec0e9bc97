"""The one exception type of distill.pretokenize: a problem the user fixes, with its fix (a `DistillError`, defined
with the others in distill.errors)."""
from ..errors import PretokenizeError

__all__ = ["PretokenizeError"]
