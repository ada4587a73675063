"""The client half of the command-server prototype (bench/cmdserver.py).

Hands argv, the working directory, the umask, the environment and descriptors
0, 1, 2 (SCM_RIGHTS) to the warm server over its Unix socket, then exits with
the status the server sends back. It imports only socket, os and sys (socket
brings array for send_fds): everything else is already loaded in the server,
which is the point. Run it as ``python -I -S`` to skip site as well.

``import socket`` alone costs ~10 ms here (enum, selectors): with
``TACHI_CMDCLIENT_LOWLEVEL=1`` the client uses ``_socket`` and ``array``
directly, to show how low the floor goes.

    TACHI_CMDSERVER=SOCKET python -I -S bench/cmdclient.py ls
"""

import os
import sys


def connect(path: str) -> object:
    """A connected stream socket to ``path``, from ``socket`` or ``_socket``."""
    if os.environ.get("TACHI_CMDCLIENT_LOWLEVEL"):
        import _socket as sockets
    else:
        import socket as sockets
    sock = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
    sock.connect(path)
    return sock


def main() -> int:
    umask = os.umask(0)
    os.umask(umask)
    fields = [os.fsencode(os.getcwd()), b"%d" % umask, b"%d" % (len(sys.argv) - 1)]
    fields += [os.fsencode(arg) for arg in sys.argv[1:]]
    fields += [key + b"=" + value for key, value in os.environb.items()]
    payload = b"\0".join(fields)
    message = b"%d\n" % len(payload) + payload
    sock = connect(os.environ["TACHI_CMDSERVER"])
    import array  # already loaded by socket; needed by _socket

    # SOL_SOCKET 1, SCM_RIGHTS 1 on Linux: the same in both modules.
    sent = sock.sendmsg([message], [(1, 1, array.array("i", [0, 1, 2]))])
    sock.sendall(message[sent:])
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = sock.recv(64)
        if not chunk:
            sys.stderr.write("tachi: the command server went away\n")
            return 255
        reply += chunk
    sock.close()
    return int(reply)


if __name__ == "__main__":
    sys.exit(main())
