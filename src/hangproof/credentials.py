"""The one place that hides credentials in whatever hangproof prints, logs or raises.

Every part (probe, doctor, guard, lab) masks through these functions, so one
rule decides what a user ever sees: the password of a URL, the password
arguments of ``rabbitmqctl`` and Erlang cookies become ``***``.

    >>> mask_url("cannot connect to amqp://bob:p@ss/w0rd@rabbit:5672//")
    'cannot connect to amqp://bob:***@rabbit:5672//'
    >>> mask_argv(["rabbitmqctl", "add_user", "bob", "s3cret"])
    ['rabbitmqctl', 'add_user', 'bob', '***']

The URL rule errs on the side of hiding: in free text the userinfo of a URL
runs from ``scheme://`` to the *last* ``@`` before the next whitespace. That is
where urllib and kombu end it when the password holds a raw ``@``, and it also
covers a raw ``/``, ``#`` or ``?`` that would end the authority early (such a
URL is malformed, but users write them and we must not echo the tail). When a
``@`` also appears later in the same word (a vhost or a second URL glued on
with ``;``), more than the password is hidden: the host of an earlier URL in a
failover list, for instance. A password with raw whitespace cannot be told
apart from the text around it; no URL can carry one unencoded.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

#: What replaces every secret.
MASK = "***"

# A scheme (RFC 3986 §3.1) followed by "://", then the rest of the word.
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<rest>\S*)")

#: rabbitmqctl sub-commands and the position of their password argument
#: (counted from the sub-command): ``add_user USER PASSWORD`` and friends.
PASSWORD_POSITIONAL = {
    "add_user": 2,
    "change_password": 2,
    "authenticate_user": 2,
    "hash_password": 1,
}
#: Options whose value is a secret (``--opt VALUE`` or ``--opt=VALUE``);
#: ``-setcookie`` is erl's own spelling.
SECRET_OPTIONS = frozenset(
    {"--password", "--erlang-cookie", "--cookie", "-setcookie", "--token", "--secret"}
)


def _mask_match(match: re.Match[str]) -> str:
    rest = match["rest"]
    at = rest.rfind("@")
    if at < 0:
        return match[0]
    user, colon, _password = rest[:at].partition(":")
    if not colon:
        return match[0]  # user only: a user name is not a secret
    return f"{match['scheme']}{user}:{MASK}{rest[at:]}"


def mask_url(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``; never raises.

    >>> mask_url("amqp://u:p@ss@h/")
    'amqp://u:***@h/'
    >>> mask_url("amqp://rabbit/"), mask_url("amqp://u@rabbit/")
    ('amqp://rabbit/', 'amqp://u@rabbit/')
    """
    if "://" not in text:  # the common case, and the hot path of log filtering
        return text
    return _URL.sub(_mask_match, text)


def mask_argv(argv: Sequence[str]) -> list[str]:
    """A copy of ``argv`` fit for an error message: passwords, cookies and URL passwords masked.

    >>> mask_argv(["rabbitmqctl", "-n", "rabbit@h", "change_password", "bob", "n3w"])
    ['rabbitmqctl', '-n', 'rabbit@h', 'change_password', 'bob', '***']
    >>> mask_argv(["erl", "-setcookie", "C00KIE", "--password=pw"])
    ['erl', '-setcookie', '***', '--password=***']
    """
    out = [mask_url(str(arg)) for arg in argv]
    for i, arg in enumerate(out):
        offset = PASSWORD_POSITIONAL.get(arg)
        if offset is not None and i + offset < len(out):
            out[i + offset] = MASK
        name, equals, _ = arg.partition("=")
        if name in SECRET_OPTIONS:
            if equals:
                out[i] = f"{name}={MASK}"
            elif i + 1 < len(out):
                out[i + 1] = MASK
    return out


class MaskingFilter(logging.Filter):
    """A logging filter that masks URL passwords in the message and in its traceback.

    Installed on a logger (not a handler), it sees every record that logger
    emits, whatever handlers the application configured.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string is the logging module's to report
            return True
        masked = mask_url(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            # Formatter.format() uses exc_text when it is set: mask it once here.
            record.exc_text = mask_url(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = mask_url(record.exc_text)
        return True


def mask_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with a :class:`MaskingFilter` installed (once).

    >>> mask_logger("hangproof.guard") is mask_logger("hangproof.guard")
    True
    """
    logger = logging.getLogger(name)
    if not any(isinstance(f, MaskingFilter) for f in logger.filters):
        logger.addFilter(MaskingFilter())
    return logger
