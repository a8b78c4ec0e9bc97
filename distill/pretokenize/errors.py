"""The one exception type of distill.pretokenize: a problem the user fixes, with its fix."""


class PretokenizeError(Exception):
    """A problem with the inputs, the tokenizer or the output directory, with its fix."""
