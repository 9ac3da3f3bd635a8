"""The project's one error type: bad input or a bad environment, said in one line."""


class UserError(Exception):
    """Bad input or a bad environment: the message says what is wrong and how to fix it.

    The core raises it; `cli.run` and `bertpipe`'s commands turn it into `error: <message>`
    and exit status 1, so a user sees one line instead of a traceback.
    """


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of `err`'s message, cut to `limit` characters: what a UserError quotes of
    an error from a library that writes whole paragraphs."""
    return (str(err).strip().splitlines() or [""])[0][:limit]
